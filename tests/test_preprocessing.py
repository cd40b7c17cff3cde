"""Preprocessing: decoders eagerly, in tf.data, and through real TFT on Beam with the curated schema."""

import functools
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from support.images import cmyk_jpeg, jpeg, png, random_rgb, raw_example, trimap
from transform import features, preprocessing

SIZE = 32
SCHEMA_PATH = pathlib.Path(__file__).resolve().parents[1] / "transform" / "schema.pbtxt"


# Every encoding the real dataset throws at the decoder, as (name, bytes).
ODD_IMAGES = [
    ("rgb_jpeg", lambda: jpeg(random_rgb())),
    ("grayscale_jpeg", lambda: jpeg(random_rgb()[..., :1])),
    ("grayscale_png", lambda: png(random_rgb()[..., :1])),
    ("rgba_png", lambda: png(np.concatenate([random_rgb(), np.full((40, 56, 1), 128, np.uint8)], -1))),
    ("cmyk_jpeg", cmyk_jpeg),
    ("png_bytes_named_jpg", lambda: png(random_rgb())),
]


@pytest.mark.parametrize("name,make", ODD_IMAGES, ids=[n for n, _ in ODD_IMAGES])
def test_decode_image_any_encoding_gives_static_uint8_rgb(name, make):
    image = preprocessing.decode_image(tf.constant(make()), SIZE)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == tf.uint8
    # Random pixels span the range: the resize neither darkens nor saturates them.
    assert int(tf.reduce_min(image)) < 64 and int(tf.reduce_max(image)) > 192


def test_decode_image_rounds_the_float_resize_to_nearest_uint8():
    source = random_rgb()
    resized = tf.image.resize(tf.cast(source, tf.float32), [SIZE, SIZE], antialias=preprocessing.IMAGE_ANTIALIAS)
    expected = np.round(np.clip(resized.numpy(), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(preprocessing.decode_image(tf.constant(png(source)), SIZE).numpy(), expected)


def test_cmyk_jpeg_colour_survives():
    # Pillow writes Adobe (inverted) CMYK; a decoder ignoring that would return the negative.
    red, green, blue = preprocessing.decode_image(tf.constant(cmyk_jpeg()), SIZE)[0, 0].numpy()
    assert red > 0.8 * 255 and green < 0.35 * 255 and blue > 0.75 * 255


def test_grayscale_is_replicated_to_three_equal_channels():
    image = preprocessing.decode_image(tf.constant(png(random_rgb()[..., :1])), SIZE).numpy()
    np.testing.assert_allclose(image[..., 0], image[..., 2])


@pytest.mark.parametrize("size", [16, 64, 37], ids=["down", "up", "odd"])
def test_decode_mask_nearest_keeps_exact_classes(size):
    source = trimap()
    mask = preprocessing.decode_mask(tf.constant(png(source)), size)
    assert mask.shape == (size, size) and mask.dtype == tf.uint8
    assert set(np.unique(mask.numpy()).tolist()) == {0, 1, 2}
    if size == 64:
        # Upscaling a sharp trimap must reproduce NEAREST exactly, edges included.
        expected = tf.image.resize(source[..., None], [size, size], method="nearest")[..., 0]
        np.testing.assert_array_equal(mask.numpy(), expected.numpy() - 1)


@pytest.mark.parametrize("bad_value", [0, 4, 255])
def test_decode_mask_rejects_out_of_range_trimap_values(bad_value):
    source = trimap()
    source[0, 0] = bad_value
    with pytest.raises(tf.errors.InvalidArgumentError, match="trimap has values"):
        preprocessing.decode_mask(tf.constant(png(source)), SIZE)


def test_decode_mask_rejects_out_of_range_inside_graph_map_fn():
    # The assert must fire where Transform runs it: traced, inside tf.map_fn's loop body.
    source = trimap()
    source[5, 5] = 0
    raw = _raw_batch([jpeg(random_rgb())] * 2)
    raw[features.RAW_MASK_KEY] = tf.constant([[png(trimap())], [png(source)]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="trimap has values below"):
        tf.function(lambda r: preprocessing.preprocessing_fn(r, {"image_size": SIZE}))(raw)


def test_raw_bytes_round_trip_the_decoded_pixels_exactly():
    image_bytes, trimap_png = jpeg(random_rgb()), png(trimap())
    image_raw = preprocessing.to_raw(preprocessing.decode_image(tf.constant(image_bytes), SIZE))
    mask_raw = preprocessing.to_raw(preprocessing.decode_mask(tf.constant(trimap_png), SIZE))
    # Exactly the pixels, nothing else: S x S x 3 and S x S bytes, readable without TensorFlow.
    assert len(image_raw.numpy()) == SIZE * SIZE * 3 and len(mask_raw.numpy()) == SIZE * SIZE
    image = preprocessing.decode_image(tf.constant(image_bytes), SIZE).numpy()
    mask = preprocessing.decode_mask(tf.constant(trimap_png), SIZE).numpy()
    np.testing.assert_array_equal(np.frombuffer(image_raw.numpy(), np.uint8).reshape(SIZE, SIZE, 3), image)
    np.testing.assert_array_equal(preprocessing.image_from_raw(tf.stack([image_raw] * 2), SIZE).numpy(), [image] * 2)
    np.testing.assert_array_equal(preprocessing.mask_from_raw(tf.constant([[mask_raw.numpy()]]), SIZE).numpy(), [mask])


def _raw_batch(images):
    """What Transform hands preprocessing_fn for the curated schema: dense [B, 1] / [B, 1] ints."""
    count = len(images)
    return {
        features.RAW_IMAGE_KEY: tf.constant([[image] for image in images]),
        features.RAW_MASK_KEY: tf.constant([[png(trimap())]] * count),
        features.LABEL_KEY: tf.constant([[i] for i in range(count)], tf.int64),
        features.SPECIES_KEY: tf.constant([[i % 2] for i in range(count)], tf.int64),
    }


def _check_transformed(outputs, batch):
    assert np.asarray(outputs[features.IMAGE_KEY]).shape == (batch,)
    assert np.asarray(outputs[features.MASK_KEY]).shape == (batch,)
    images = preprocessing.image_from_raw(tf.constant(np.asarray(outputs[features.IMAGE_KEY])), SIZE).numpy()
    masks = preprocessing.mask_from_raw(tf.constant(np.asarray(outputs[features.MASK_KEY])), SIZE).numpy()
    assert images.shape == (batch, SIZE, SIZE, 3) and masks.shape == (batch, SIZE, SIZE)
    assert set(np.unique(masks).tolist()) == {0, 1, 2}
    for key in features.SLICE_KEYS:
        assert np.asarray(outputs[key]).shape == (batch,)


def test_preprocessing_fn_eager_batch_and_single_element():
    images = [make() for _, make in ODD_IMAGES]
    config = {"image_size": SIZE}
    _check_transformed(preprocessing.preprocessing_fn(_raw_batch(images), config), len(images))
    _check_transformed(preprocessing.preprocessing_fn(_raw_batch(images[:1]), config), 1)


def test_preprocessing_fn_accepts_sparse_bytes_and_scalar_ints():
    # The shape-less schema variant: bytes as SparseTensor [B, 1], ints as [B].
    raw = _raw_batch([make() for _, make in ODD_IMAGES[:2]])
    raw = {
        key: tf.sparse.from_dense(value) if value.dtype == tf.string else tf.squeeze(value, 1)
        for key, value in raw.items()
    }
    _check_transformed(preprocessing.preprocessing_fn(raw, {"image_size": SIZE}), 2)


def test_preprocessing_fn_in_tf_data_has_static_shapes():
    images = [make() for _, make in ODD_IMAGES]
    dataset = (
        tf.data.Dataset.from_tensor_slices(_raw_batch(images))
        .batch(4)
        .map(functools.partial(preprocessing.preprocessing_fn, custom_config={"image_size": SIZE}))
    )
    spec = dataset.element_spec
    assert spec[features.IMAGE_KEY].shape.as_list() == [None]
    assert spec[features.MASK_KEY].shape.as_list() == [None]
    batches = list(dataset)
    assert [int(b[features.MASK_KEY].shape[0]) for b in batches] == [4, len(images) - 4]
    for batch in batches:
        _check_transformed(batch, int(batch[features.MASK_KEY].shape[0]))


@pytest.mark.parametrize("config", [None, {}, {"image_size": "96"}, {"image_size": 0}])
def test_preprocessing_fn_explains_a_missing_image_size(config):
    with pytest.raises(ValueError, match="custom_config=.*image_size"):
        preprocessing.preprocessing_fn(_raw_batch([jpeg(random_rgb())]), config)


def test_preprocessing_fn_through_tft_beam_with_curated_schema(tmp_path):
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tfx_bsl.public import tfxio
    from tensorflow_data_validation.utils import schema_util

    schema = schema_util.load_schema_text(str(SCHEMA_PATH))
    examples = [raw_example(image=make(), label=i, species=i % 2) for i, (_, make) in enumerate(ODD_IMAGES)]
    # Upscaled and downscaled trimaps from one PNG each: NEAREST must keep exactly {1,2,3} -> {0,1,2}.
    examples += [raw_example(mask=png(trimap(8, 8))), raw_example(mask=png(trimap(200, 120)))]
    record = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["test"], schema=schema)
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path)):
        raw = pipeline | beam.Create(examples, reshuffle=False) | record.BeamSource()
        (transformed, metadata), _ = (raw, record.TensorAdapterConfig()) | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing.preprocessing_fn, custom_config={"image_size": SIZE}),
            output_record_batches=False,
        )
        _ = transformed | beam.combiners.ToList() | beam.Map(_check_tft_rows, len(examples))

    # One fixed-length value per example reaches the transformed schema, so the Trainer parses dense features.
    shapes = {f.name: [d.size for d in f.shape.dim] for f in metadata.schema.feature}
    assert shapes == {features.IMAGE_KEY: [], features.MASK_KEY: [], features.SPECIES_KEY: [], features.LABEL_KEY: []}


def _check_tft_rows(rows, count):
    assert len(rows) == count
    stacked = {key: np.stack([np.asarray(row[key]) for row in rows]) for key in rows[0]}
    _check_transformed(stacked, count)
    assert sorted(stacked[features.LABEL_KEY].tolist()) == sorted([5, 5] + list(range(len(ODD_IMAGES))))

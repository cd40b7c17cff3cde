"""The export as TF Serving uses it: signatures, image requests, Transform parity, errors, precision."""

import io
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from PIL import Image
from tfx.types import standard_artifacts

from support import trainer_fixtures
from support.trainer_fixtures import limited, trained, transform_run  # noqa: F401 (pytest fixtures)
from config import names
from trainer import model as model_lib, precision, run, signatures
from transform import features

SIZE = trainer_fixtures.tiny_config().model.image_size
SAVED_MODEL_CLI = str(pathlib.Path(sys.executable).parent / "saved_model_cli")


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# 333 wide x 171 high: neither square nor the model's size, and above SMALL_MAX_PIXELS.
PHOTO = _pixels(171, 333)
# A PNG header claiming 3000x3000 with its pixel data cut off: only a header check can call it too large.
BOMB_HEADER = _encode(np.zeros((3000, 3000, 3), np.uint8), "PNG")[:64]


@pytest.fixture(scope="module")
def served(trained):
    return tf.saved_model.load(trained.serving_model_dir)


@pytest.fixture(scope="module")
def limited_serving(limited):
    """serving_default of the model exported with SMALL_MAX_PIXELS, loaded once like a server would."""
    return tf.saved_model.load(limited.serving_model_dir).signatures[signatures.SERVING_SIGNATURE]


def _check_prediction(outputs, count: int = 1) -> None:
    mask, probabilities = outputs["mask"].numpy(), outputs["probabilities"].numpy()
    assert mask.dtype == np.uint8 and mask.shape == (count, SIZE, SIZE)
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert probabilities.shape == (count, SIZE, SIZE, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask, probabilities.argmax(axis=-1))


def _assert_same(left, right) -> None:
    for key in ("mask", "probabilities"):
        np.testing.assert_array_equal(left[key].numpy(), right[key].numpy(), err_msg=key)


def test_saved_model_cli_lists_the_signatures(trained):
    shown = subprocess.run(
        [SAVED_MODEL_CLI, "show", "--dir", trained.serving_model_dir, "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (signatures.SERVING_SIGNATURE, signatures.EXAMPLES_SIGNATURE, signatures.TRANSFORM_SIGNATURE):
        assert f"signature_def['{name}']" in shown
    serving = shown.split(f"signature_def['{signatures.SERVING_SIGNATURE}']")[1].split("signature_def[")[0]
    assert f"inputs['{features.SERVING_INPUT_KEY}']" in serving
    mask = serving.split("outputs['mask']")[1].split("outputs[")[0]
    assert "DT_UINT8" in mask and f"(-1, {SIZE}, {SIZE})" in mask


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_serving_default_on_an_image_of_any_size(served, fmt):
    _check_prediction(served.signatures[signatures.SERVING_SIGNATURE](image_bytes=tf.constant([_encode(PHOTO, fmt)])))


def test_serving_default_batches_mixed_formats_and_sizes(served):
    batch = [_encode(PHOTO, "JPEG"), _encode(_pixels(40, 90, seed=1), "PNG")]
    serve = served.signatures[signatures.SERVING_SIGNATURE]
    outputs = serve(image_bytes=tf.constant(batch))
    _check_prediction(outputs, count=2)
    # Each image is predicted on its own: batching does not change its result.
    alone = serve(image_bytes=tf.constant(batch[1:]))
    np.testing.assert_array_equal(outputs["mask"].numpy()[1:], alone["mask"].numpy())


def _feature(example: tf.train.Example, key: str):
    return example.features.feature[key]


def test_serving_resizes_exactly_like_transform(served, trained, transform_run):
    raw = trainer_fixtures.split_records(trainer_fixtures.raw_examples(transform_run), "eval")[:3]
    materialized = np.stack(
        [
            np.frombuffer(
                _feature(tf.train.Example.FromString(r), features.IMAGE_KEY).bytes_list.value[0], np.uint8
            ).reshape(SIZE, SIZE, 3)
            for r in trainer_fixtures.split_records(trainer_fixtures.transformed_examples(transform_run), "eval")
        ]
    )

    # The exported Transform layer reproduces what the Beam Transform run wrote (its order is not the input's).
    transformed = served.signatures[signatures.TRANSFORM_SIGNATURE](examples=tf.constant(raw))[features.IMAGE_KEY]
    assert transformed.dtype == tf.uint8

    def distance(image):
        return np.abs(materialized.astype(np.int16) - image).max(axis=(1, 2, 3))

    twins = [int(np.argmin(distance(image))) for image in transformed.numpy()]
    np.testing.assert_array_equal(transformed.numpy(), materialized[twins])

    # Image bytes through serving_default predict what the model predicts on Transform's output.
    image_bytes = [_feature(tf.train.Example.FromString(r), features.RAW_IMAGE_KEY).bytes_list.value[0] for r in raw]
    by_bytes = served.signatures[signatures.SERVING_SIGNATURE](image_bytes=tf.constant(image_bytes))
    _assert_same(by_bytes, served.signatures[signatures.EXAMPLES_SIGNATURE](examples=tf.constant(raw)))
    # The export holds signatures, not a callable object; Keras rebuilds the model from its config.
    model = tf.keras.models.load_model(trained.serving_model_dir, compile=False)
    logits = model(tf.constant(materialized[twins]), training=False)
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-6)


def test_examples_without_the_per_image_numbers_are_served_as_before(served, transform_run):
    # TfdsExampleGen adds them for statistics and drift; clients that send today's Examples lack them.
    raw = trainer_fixtures.split_records(trainer_fixtures.raw_examples(transform_run), "eval")[:3]
    parsed = [tf.train.Example.FromString(r) for r in raw]
    assert all(key in example.features.feature for example in parsed for key in features.IMAGE_STATISTICS_KEYS)
    for example in parsed:
        for key in features.IMAGE_STATISTICS_KEYS:
            del example.features.feature[key]
    today = tf.constant([example.SerializeToString() for example in parsed])
    examples_signature = served.signatures[signatures.EXAMPLES_SIGNATURE]
    _assert_same(examples_signature(examples=today), examples_signature(examples=tf.constant(raw)))
    # Transform ignores them too: the same outputs, none of them a per-image number.
    transform_signature = served.signatures[signatures.TRANSFORM_SIGNATURE]
    with_numbers, without = transform_signature(examples=tf.constant(raw)), transform_signature(examples=today)
    assert set(with_numbers) == set(without) == {features.IMAGE_KEY, features.MASK_KEY, *features.SLICE_KEYS}
    for key in with_numbers:
        np.testing.assert_array_equal(with_numbers[key].numpy(), without[key].numpy())


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "image_bytes is empty"),
        (b"not an image at all", "Unknown image file format"),
        (_encode(PHOTO, "JPEG")[:300], "Invalid JPEG data"),
        (_encode(PHOTO, "JPEG"), f"image too large: more than {trainer_fixtures.SMALL_MAX_PIXELS} pixels"),
        (_encode(PHOTO, "PNG"), "image too large"),
        (_encode(PHOTO, "GIF"), "image too large"),
        (BOMB_HEADER, "image too large"),
    ],
    ids=["empty", "unknown", "truncated-jpeg", "large-jpeg", "large-png", "large-gif", "png-bomb-header"],
)
def test_bad_requests_fail_cleanly_and_serving_goes_on(limited_serving, payload, message):
    serve = limited_serving
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(image_bytes=tf.constant([payload]))
    # Exactly at the pixel limit is allowed, and the same loaded model still answers.
    _check_prediction(serve(image_bytes=tf.constant([_encode(_pixels(100, 100), "PNG")])))


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_a_mixed_precision_export_takes_and_returns_what_a_float32_one_does(
    transform_run, tmp_path, policy, compute_dtype
):
    config = trainer_fixtures.tiny_config(**{"model.mixed_precision": policy})
    graph = tft.TFTransformOutput(
        trainer_fixtures.output(transform_run, standard_artifacts.TransformGraph, names.TRANSFORM_ID).uri
    )
    # As run_fn builds and exports it: the policy is the layers', the global one stays float32.
    try:
        model = model_lib.build_model(config.model, precision.policy_name(config.model.mixed_precision))
        assert model.get_layer("block1_conv1").compute_dtype == compute_dtype
        run.export_model(model, str(tmp_path), graph, config.model)
    finally:
        tf.keras.backend.clear_session()

    loaded = tf.saved_model.load(str(tmp_path))
    raw = trainer_fixtures.split_records(trainer_fixtures.raw_examples(transform_run), "eval")[:2]
    requests = {
        signatures.SERVING_SIGNATURE: {features.SERVING_INPUT_KEY: tf.constant([_encode(PHOTO, "JPEG")] * 2)},
        signatures.EXAMPLES_SIGNATURE: {"examples": tf.constant(raw)},
    }
    for name, request in requests.items():
        signature = loaded.signatures[name]
        assert {key: spec.dtype for key, spec in signature.structured_input_signature[1].items()} == {
            key: tf.string for key in request
        }
        outputs = signature(**request)
        assert (outputs["mask"].dtype, outputs["probabilities"].dtype) == (tf.uint8, tf.float32), name
        _check_prediction(outputs, count=2)
        assert np.isfinite(outputs["probabilities"].numpy()).all()

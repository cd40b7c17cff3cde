"""TFX Transform `preprocessing_fn`, the image/trimap decoders it shares with serving, and its uint8 record format."""

from typing import Any, Dict, Mapping, Optional, Union

import tensorflow as tf

from transform import features

# Downscaling Oxford photos (~500x375) to 96..224 px without a low-pass filter aliases fur and
# stripes into moire; antialiasing costs little and serving uses the same helper, so train and
# serve see identical pixels.
IMAGE_ANTIALIAS = True

# Trimap values as stored in the PNG; class id = value - 1 (see `features.CLASS_NAMES`).
TRIMAP_MIN, TRIMAP_MAX = 1, 3

AnyTensor = Union[tf.Tensor, tf.SparseTensor, tf.RaggedTensor]


def decode_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image (scalar string) to uint8 [image_size, image_size, 3].

    Accepts anything `tf.io.decode_image` reads (JPEG incl. CMYK, PNG incl. 16-bit, GIF first
    frame, BMP) with any channel count: grayscale is replicated and alpha dropped, because the
    real dataset holds grayscale, RGBA and CMYK files and PNGs named `.jpg`. The image is squashed
    to a square (no crop or pad) exactly as `decode_mask` squashes the trimap, so pixels align.
    Resizing is bilinear with antialiasing (`IMAGE_ANTIALIAS`) in float, then rounded back to 8 bits:
    Transform stores a quarter of float32's bytes, and serving rounds the same way, so the model
    sees identical pixels in training and serving. The model scales them to [0, 1] itself.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    # decode_image yields uint8 (16-bit PNGs are reduced to 8 bits).
    image = tf.image.resize(
        tf.cast(image, tf.float32),
        [image_size, image_size],
        method=tf.image.ResizeMethod.BILINEAR,
        antialias=IMAGE_ANTIALIAS,
    )
    # The antialiasing kernel's negative lobes can overshoot [0, 255] slightly: saturate, then round.
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_mask(png_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one trimap PNG (scalar string) to uint8 [image_size, image_size] class ids in {0, 1, 2}.

    Resizing is NEAREST so every output pixel is a source pixel: bilinear would invent in-between
    class values along every pet/border/background edge. Trimap values outside 1..3 (e.g. 0 or 255
    from a broken annotation) are not clipped, since that would silently relabel them as pet or
    border: the op fails with an InvalidArgumentError naming the offending range.
    """
    mask = tf.io.decode_image(png_bytes, channels=1, expand_animations=False)
    expected = "expected only 1 pet, 2 background, 3 border"
    checks = [
        tf.debugging.assert_greater_equal(
            tf.reduce_min(mask),
            tf.constant(TRIMAP_MIN, tf.uint8),
            message=f"trimap has values below {TRIMAP_MIN}; {expected}",
        ),
        tf.debugging.assert_less_equal(
            tf.reduce_max(mask),
            tf.constant(TRIMAP_MAX, tf.uint8),
            message=f"trimap has values above {TRIMAP_MAX}; {expected}",
        ),
    ]
    # Explicit dependency: inside tf.map_fn's loop body asserts are not otherwise guaranteed to run.
    with tf.control_dependencies(checks):
        mask = tf.identity(mask)
    mask = tf.image.resize(mask, [image_size, image_size], method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
    mask = tf.squeeze(mask, axis=-1) - TRIMAP_MIN
    return tf.ensure_shape(mask, [image_size, image_size])


# The record format of Transform's `image` and `mask`: the uint8 pixels as raw bytes, row-major
# (image H x W x RGB, mask H x W class ids), so any reader gets them back with one
# `tf.io.decode_raw` (or `numpy.frombuffer`) and a reshape, and each record holds S^2 x 4 bytes.


def to_raw(pixels: tf.Tensor) -> tf.Tensor:
    """A uint8 tensor's bytes, row-major, as a scalar string.

    TensorFlow has no encode op for raw bytes, but `serialize_tensor` ends with exactly them (a
    TensorProto's `tensor_content`, its last field), so the proto header in front is cut off.
    """
    serialized = tf.io.serialize_tensor(pixels)
    size = tf.size(pixels)
    return tf.strings.substr(serialized, tf.strings.length(serialized) - size, size)


def image_from_raw(raw: AnyTensor, image_size: int) -> tf.Tensor:
    """Transform's `image` feature ([B] or [B, 1] strings) -> uint8 [B, S, S, 3]."""
    return tf.reshape(tf.io.decode_raw(to_vector(raw, b""), tf.uint8), [-1, image_size, image_size, 3])


def mask_from_raw(raw: AnyTensor, image_size: int) -> tf.Tensor:
    """Transform's `mask` feature ([B] or [B, 1] strings) -> uint8 [B, S, S] class ids."""
    return tf.reshape(tf.io.decode_raw(to_vector(raw, b""), tf.uint8), [-1, image_size, image_size])


def to_vector(tensor: AnyTensor, default_value: Any) -> tf.Tensor:
    """One value per example as a dense [B] tensor.

    Transform hands a feature over as dense [B, 1] when the schema gives it a shape and as a
    SparseTensor (or ragged) otherwise; an example missing a sparse value gets `default_value`.
    More than one value per example is an error rather than a silent truncation.
    """
    if isinstance(tensor, tf.RaggedTensor):
        tensor = tensor.to_sparse()
    if isinstance(tensor, tf.SparseTensor):
        tensor = tf.sparse.to_dense(
            tf.sparse.reset_shape(tensor, [tensor.dense_shape[0], 1]), default_value=default_value
        )
    if tensor.shape.rank == 2:
        if tensor.shape[1] not in (1, None):
            raise ValueError(f"expected one value per example, got shape {tensor.shape}")
        tensor = tf.squeeze(tensor, axis=1)
    if tensor.shape.rank != 1:
        raise ValueError(f"expected a [batch] or [batch, 1] tensor, got shape {tensor.shape}")
    return tensor


def preprocessing_fn(
    inputs: Mapping[str, AnyTensor], custom_config: Optional[Dict[str, Any]] = None
) -> Dict[str, tf.Tensor]:
    """TFX Transform entry point: raw Oxford-pet features -> model features.

    `custom_config` must hold `{"image_size": int}` (TFX passes `Transform(custom_config=...)`).
    Outputs: `image` and `mask` as raw uint8 bytes per example (S x S x 3 pixels, S x S class ids in
    {0, 1, 2}; `image_from_raw` / `mask_from_raw` read them), and `species` / `label` int64 [B]
    (squeezed from [B, 1] so the transformed schema holds one scalar per example, which TFMA
    slicing needs).
    """
    image_size = _image_size(custom_config)
    # Decoding is per image by nature. Two loops, not one: a signature that needs only the image (or
    # only the mask) gets the other's loop pruned from its graph.
    string = tf.TensorSpec([], tf.string)
    return {
        features.IMAGE_KEY: tf.map_fn(
            lambda b: to_raw(decode_image(b, image_size)),
            to_vector(inputs[features.RAW_IMAGE_KEY], b""),
            fn_output_signature=string,
        ),
        features.MASK_KEY: tf.map_fn(
            lambda b: to_raw(decode_mask(b, image_size)),
            to_vector(inputs[features.RAW_MASK_KEY], b""),
            fn_output_signature=string,
        ),
        # -1 only reaches the output for a sparse feature missing a value, and is then visible.
        **{key: tf.cast(to_vector(inputs[key], -1), tf.int64) for key in features.SLICE_KEYS},
    }


def _image_size(custom_config: Optional[Mapping[str, Any]]) -> int:
    size = (custom_config or {}).get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"preprocessing_fn needs custom_config={{'image_size': <positive int>}}, got {custom_config!r}; "
            "pass Transform(custom_config={'image_size': config.model.image_size})"
        )
    return size

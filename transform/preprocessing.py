"""TFX Transform `preprocessing_fn` and the image/trimap decoders it shares with the serving signature."""

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
    """Decodes one encoded image (scalar string) to float32 [image_size, image_size, 3] in [0, 1].

    Accepts anything `tf.io.decode_image` reads (JPEG incl. CMYK, PNG incl. 16-bit, GIF first
    frame, BMP) with any channel count: grayscale is replicated and alpha dropped, because the
    real dataset holds grayscale, RGBA and CMYK files and PNGs named `.jpg`. The image is squashed
    to a square (no crop or pad) exactly as `decode_mask` squashes the trimap, so pixels align.
    Resizing is bilinear with antialiasing (`IMAGE_ANTIALIAS`).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    # decode_image yields uint8 (16-bit PNGs are reduced to 8 bits), so this divides by 255.
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, [image_size, image_size], method=tf.image.ResizeMethod.BILINEAR,
                            antialias=IMAGE_ANTIALIAS)
    # A convex resampling kernel stays in range up to float rounding; clip makes [0, 1] a guarantee.
    image = tf.clip_by_value(image, 0.0, 1.0)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_mask(png_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one trimap PNG (scalar string) to int64 [image_size, image_size] class ids in {0, 1, 2}.

    Resizing is NEAREST so every output pixel is a source pixel: bilinear would invent in-between
    class values along every pet/border/background edge. Trimap values outside 1..3 (e.g. 0 or 255
    from a broken annotation) are not clipped, since that would silently relabel them as pet or
    border: the op fails with an InvalidArgumentError naming the offending range.
    """
    mask = tf.io.decode_image(png_bytes, channels=1, expand_animations=False)
    expected = "expected only 1 pet, 2 background, 3 border"
    checks = [
        tf.debugging.assert_greater_equal(
            tf.reduce_min(mask), tf.constant(TRIMAP_MIN, tf.uint8),
            message=f"trimap has values below {TRIMAP_MIN}; {expected}"),
        tf.debugging.assert_less_equal(
            tf.reduce_max(mask), tf.constant(TRIMAP_MAX, tf.uint8),
            message=f"trimap has values above {TRIMAP_MAX}; {expected}"),
    ]
    # Explicit dependency: inside tf.map_fn's loop body asserts are not otherwise guaranteed to run.
    with tf.control_dependencies(checks):
        mask = tf.identity(mask)
    mask = tf.image.resize(mask, [image_size, image_size],
                           method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
    mask = tf.cast(tf.squeeze(mask, axis=-1), tf.int64) - TRIMAP_MIN
    return tf.ensure_shape(mask, [image_size, image_size])


def decode_image_batch(image_bytes: AnyTensor, image_size: int) -> tf.Tensor:
    """`decode_image` over a batch of encoded images ([B], [B, 1] or sparse) -> float32 [B, S, S, 3]."""
    return tf.map_fn(lambda b: decode_image(b, image_size), to_vector(image_bytes, b""),
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))


def decode_mask_batch(png_bytes: AnyTensor, image_size: int) -> tf.Tensor:
    """`decode_mask` over a batch of trimap PNGs ([B], [B, 1] or sparse) -> int64 [B, S, S]."""
    return tf.map_fn(lambda b: decode_mask(b, image_size), to_vector(png_bytes, b""),
                     fn_output_signature=tf.TensorSpec([image_size, image_size], tf.int64))


def to_vector(tensor: AnyTensor, default_value: Any) -> tf.Tensor:
    """One value per example as a dense [B] tensor.

    Transform hands a feature over as dense [B, 1] when the schema gives it a shape and as a
    SparseTensor (or ragged) otherwise; an example missing a sparse value gets `default_value`.
    More than one value per example is an error rather than a silent truncation.
    """
    if isinstance(tensor, tf.RaggedTensor):
        tensor = tensor.to_sparse()
    if isinstance(tensor, tf.SparseTensor):
        tensor = tf.sparse.to_dense(tf.sparse.reset_shape(tensor, [tensor.dense_shape[0], 1]),
                                    default_value=default_value)
    if tensor.shape.rank == 2:
        if tensor.shape[1] not in (1, None):
            raise ValueError(f"expected one value per example, got shape {tensor.shape}")
        tensor = tf.squeeze(tensor, axis=1)
    if tensor.shape.rank != 1:
        raise ValueError(f"expected a [batch] or [batch, 1] tensor, got shape {tensor.shape}")
    return tensor


def preprocessing_fn(inputs: Mapping[str, AnyTensor],
                     custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, tf.Tensor]:
    """TFX Transform entry point: raw Oxford-pet features -> model features.

    `custom_config` must hold `{"image_size": int}` (TFX passes `Transform(custom_config=...)`).
    Outputs, all with static non-batch dims: `image` float32 [B, S, S, 3] in [0, 1], `mask`
    int64 [B, S, S] in {0, 1, 2}, and `species` / `label` int64 [B] (squeezed from [B, 1] so the
    transformed schema holds one scalar per example, which TFMA slicing needs).
    """
    image_size = _image_size(custom_config)
    return {
        features.IMAGE_KEY: decode_image_batch(inputs[features.RAW_IMAGE_KEY], image_size),
        features.MASK_KEY: decode_mask_batch(inputs[features.RAW_MASK_KEY], image_size),
        # -1 only reaches the output for a sparse feature missing a value, and is then visible.
        **{key: tf.cast(to_vector(inputs[key], -1), tf.int64) for key in features.SLICE_KEYS},
    }


def _image_size(custom_config: Optional[Mapping[str, Any]]) -> int:
    size = (custom_config or {}).get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"preprocessing_fn needs custom_config={{'image_size': <positive int>}}, got {custom_config!r}; "
            "pass Transform(custom_config={'image_size': config.model.image_size})")
    return size

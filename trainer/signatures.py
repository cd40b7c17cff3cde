"""Serving signatures: encoded images in (TF Serving), raw tf.Examples in (Evaluator), and Transform."""

from __future__ import annotations

from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft

from config.names import EXAMPLES_SIGNATURE, SERVING_SIGNATURE, TRANSFORM_SIGNATURE
from transform import features, preprocessing

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")


def _header_int(image_bytes: tf.Tensor, offset: int, size: int, big_endian: bool) -> tf.Tensor:
    """An unsigned integer stored at `offset` in the file header, as int64."""
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, offset, size), tf.uint8), tf.int64)
    weights = tf.constant([256**i for i in (range(size - 1, -1, -1) if big_endian else range(size))], tf.int64)
    return tf.reduce_sum(digits * weights)


def encoded_shape(image_bytes: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 of one encoded image, read from its header where the format allows.

    JPEG, PNG (IHDR) and GIF (logical screen) state their size up front, so an oversized request is
    refused before its pixels are inflated; a few-KB PNG or GIF can otherwise decode to gigabytes.
    Other formats (BMP: uncompressed, so its byte size already bounds it) are decoded once to learn it.
    """
    length = tf.strings.length(image_bytes)
    is_png = tf.logical_and(length >= 24, tf.equal(tf.strings.substr(image_bytes, 0, 8), _PNG_SIGNATURE))
    prefix = tf.strings.substr(image_bytes, 0, 6)
    is_gif = tf.logical_and(length >= 10, tf.reduce_any([tf.equal(prefix, sig) for sig in _GIF_SIGNATURES]))
    return tf.case(
        [
            (tf.io.is_jpeg(image_bytes), lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64)),
            (is_png, lambda: tf.stack([_header_int(image_bytes, 20, 4, True), _header_int(image_bytes, 16, 4, True)])),
            (is_gif, lambda: tf.stack([_header_int(image_bytes, 8, 2, False), _header_int(image_bytes, 6, 2, False)])),
        ],
        default=lambda: tf.shape(
            tf.io.decode_image(image_bytes, channels=3, expand_animations=False), out_type=tf.int64
        )[:2],
    )


def checked_decode(image_bytes: tf.Tensor, image_size: int, max_pixels: int) -> tf.Tensor:
    """`preprocessing.decode_image` with request guards that fail as InvalidArgument, not a crash."""
    not_empty = tf.debugging.assert_greater(
        tf.strings.length(image_bytes), 0, message="image_bytes is empty; send a JPEG or PNG file's bytes"
    )
    with tf.control_dependencies([not_empty]):
        shape = encoded_shape(image_bytes)
    small_enough = tf.debugging.assert_less_equal(
        shape[0] * shape[1],
        tf.constant(max_pixels, tf.int64),
        message=f"image too large: more than {max_pixels} pixels (model.serving_max_pixels)",
    )
    # Explicit dependencies: inside tf.map_fn's loop body asserts are not otherwise guaranteed to run.
    with tf.control_dependencies([small_enough]):
        image_bytes = tf.identity(image_bytes)
    return preprocessing.decode_image(image_bytes, image_size)


def _outputs(logits: tf.Tensor) -> Dict[str, tf.Tensor]:
    logits = tf.cast(logits, tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    # argmax over NaN returns a real class id; mark such pixels instead of inventing a prediction.
    finite = tf.reduce_all(tf.math.is_finite(logits), axis=-1)
    mask = tf.where(
        finite, tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8), tf.constant(features.INVALID_CLASS, tf.uint8)
    )
    return {"mask": mask, "probabilities": probabilities}


def make_signatures(
    model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput, image_size: int, max_pixels: int
) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """The three exported signatures; the Transform layer is attached to `model` so it is saved."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()

    def decoded(transformed):
        # Transform stores pixels and class ids as raw uint8 bytes; callers get tensors.
        return {
            **transformed,
            features.IMAGE_KEY: preprocessing.image_from_raw(transformed[features.IMAGE_KEY], image_size),
            features.MASK_KEY: tf.cast(
                preprocessing.mask_from_raw(transformed[features.MASK_KEY], image_size), tf.int64
            ),
        }

    # autograph=False: these bodies are graph code already, and converting them would also transpile the
    # tf_keras code behind every model call (TF exempts only the `keras` package from AutoGraph).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT_KEY)], autograph=False)
    def serve_images(image_bytes):
        images = tf.map_fn(
            lambda b: checked_decode(b, image_size, max_pixels),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        return _outputs(model(images, training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def transform_features(examples):
        return decoded(model.tft_layer(tf.io.parse_example(examples, raw_spec)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(examples):
        # The image only: this runs per eval batch in TFMA, where the mask would be decoded for nothing.
        transformed = model.tft_layer(tf.io.parse_example(examples, raw_spec))
        images = preprocessing.image_from_raw(transformed[features.IMAGE_KEY], image_size)
        return _outputs(model(images, training=False))

    return {
        SERVING_SIGNATURE: serve_images.get_concrete_function(),
        EXAMPLES_SIGNATURE: serve_examples.get_concrete_function(),
        TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
    }

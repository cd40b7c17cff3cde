"""Trainer input pipeline over Transform's materialized examples: (image, mask) batches."""

from __future__ import annotations

from typing import List, Optional, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from transform import features, preprocessing

# Records are parsed in chunks, then unbatched so caching, shuffling and batching work per example.
_READ_BATCH = 64


def flip_pair(image: tf.Tensor, mask: tf.Tensor, seed: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Random horizontal flip applied identically to one image [H, W, 3] and its mask [H, W]."""
    flip = tf.random.uniform([], seed=seed) < 0.5
    return (
        tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image),
        tf.cond(flip, lambda: tf.reverse(mask, axis=[1]), lambda: mask),
    )


def split_files(file_patterns: List[str]) -> List[str]:
    return sorted(path for pattern in file_patterns for path in tf.io.gfile.glob(pattern))


def fits_cache(file_patterns: List[str], max_bytes: int) -> bool:
    """Whether a split may be cached in memory: plain records hold its uint8 pixels byte for byte.

    Compressed records (`*.gz`) say nothing certain about their decoded size, so they stream.
    """
    files = split_files(file_patterns)  # one listing: on GCS every glob is a request
    if any(path.endswith(".gz") for path in files):
        return False
    return sum(tf.io.gfile.stat(path).length for path in files) <= max_bytes


def decoded_bytes(examples: int, image_size: int) -> int:
    """Memory that `examples` decoded examples take: uint8 pixels (3 per pixel) and class ids (1)."""
    return examples * image_size * image_size * 4


def input_fn(
    file_pattern: List[str],
    data_accessor,
    tf_transform_output: tft.TFTransformOutput,
    global_batch_size: int,
    image_size: int,
    *,
    training: bool,
    shuffle_buffer: int = 512,
    repeat: bool = False,
    cache: bool = True,
    seed: Optional[int] = None,
    limit: Optional[int] = None,
) -> tf.data.Dataset:
    """(image uint8 [B, S, S, 3], mask uint8 [B, S, S]) batches of the global batch size.

    Training batches are shuffled every epoch and randomly flipped; evaluation batches are neither,
    so evaluation data never sees the training map. With `cache`, decoded examples
    stay in memory after the first pass (uint8, S^2 x 4 bytes each), so later epochs cost no reading;
    without it every epoch streams the files (`fits_cache` decides which). `limit` keeps the first
    `limit` examples in the files' deterministic read order, the same ones every epoch.
    """
    # The factory reads files in parallel (interleaved, AUTOTUNE threads) whatever the cache does.
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=_READ_BATCH, shuffle=False, num_epochs=1),
        tf_transform_output.transformed_metadata.schema,
    )
    # Whole read batches at once: decode_raw is one vectorised op per batch, not one per example.
    dataset = dataset.map(
        lambda f: (
            preprocessing.image_from_raw(f[features.IMAGE_KEY], image_size),
            preprocessing.mask_from_raw(f[features.MASK_KEY], image_size),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).unbatch()
    if limit is not None:
        dataset = dataset.take(limit)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(lambda image, mask: flip_pair(image, mask, seed), num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        dataset = dataset.repeat()
    # The last partial batch is kept so every example is seen each epoch; Keras distributes it fine.
    dataset = dataset.batch(global_batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # The split may have fewer files than workers: shard by example, not by file.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning thread: destroying an iterator can wait out that thread's sleep (up to a minute),
    # and Keras drops one every epoch and at the end of fit. AUTOTUNE settings keep tf.data's starting
    # values, and epochs train as fast.
    options.autotune.enabled = False
    return dataset.with_options(options)

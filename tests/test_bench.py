"""bench helpers on trivial sizes: analytic FLOP counts, the timing loops and the tf.data decode limit run."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from bench import measure, stages, training
from config.profiles import load_config
from support.images import png, random_rgb, raw_example, trimap
from transform import preprocessing

TINY = dataclasses.replace(load_config("tiny"), train=dataclasses.replace(load_config("tiny").train, batch_size=2))


@pytest.fixture(autouse=True)
def _fresh_keras():
    yield
    tf.keras.backend.clear_session()
    tf.keras.mixed_precision.set_global_policy("float32")


def test_conv_macs_by_hand():
    x = tf.keras.Input((8, 8, 3))
    y = tf.keras.layers.Conv2D(4, 3, padding="same", name="c")(x)
    y = tf.keras.layers.Conv2DTranspose(2, 4, strides=2, padding="same", name="t")(y)
    model = tf.keras.Model(x, y)
    assert measure.conv_macs(model) == {"c": 8 * 8 * 9 * 3 * 4, "t": 8 * 8 * 16 * 4 * 2}
    total = 8 * 8 * 9 * 3 * 4 + 8 * 8 * 16 * 4 * 2
    assert measure.training_flops_per_image(model) == 6 * total
    model.get_layer("c").trainable = False
    assert measure.training_flops_per_image(model) == 2 * 8 * 8 * 9 * 3 * 4 + 6 * 8 * 8 * 16 * 4 * 2
    assert measure.inference_flops_per_image(model) == 2 * total


def test_matmul_and_training_loops_run():
    assert measure.matmul_flops_per_second(tf.float32, size=64, repeats=1, chain=1) > 0
    model = training.build(TINY)
    batches = training.synthetic_batches(TINY.model.image_size, 2, 2)
    assert training.images_per_second(model, lambda: training.in_memory(batches), 2, 2, repeats=1) > 0


def test_decoded_matches_preprocessing(tmp_path):
    path = tmp_path / "Split-eval" / "data.tfrecord"
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(raw_example(png(random_rgb()), png(trimap())))
    files = stages.record_files(str(tmp_path), ("eval",))
    [(image, mask)] = list(stages.decoded(files, 32))
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
    np.testing.assert_array_equal(mask.numpy(), preprocessing.decode_mask(tf.constant(png(trimap())), 32).numpy())


def test_transformed_bytes_per_example(tmp_path):
    path = tmp_path / "Split-train" / "data"
    path.parent.mkdir()
    records = [b"x" * 100, b"y" * 300]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    (tmp_path / "Split-eval").mkdir()
    # TFRecord framing adds 16 bytes per record (length, two CRCs).
    assert stages.transformed_bytes_per_example(str(tmp_path), len(records)) == (400 + 2 * 16) / 2


def test_float32_and_bfloat16_training_are_both_timed():
    batches = training.synthetic_batches(TINY.model.image_size, 2, 2)
    figures = training.precision_figures(TINY, batches, 2, 2)
    speeds = figures["train_images_per_second_by_precision"]
    assert set(speeds) == {"float32", "bfloat16"} and all(v > 0 for v in speeds.values())
    assert figures["mixed_precision_auto_picks"] in ("float32", "mixed_bfloat16")

"""Transform's plain uint8 records and the Trainer's input: cached or streamed, the same batches."""

import glob
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from tfx import types
from tfx.types import standard_artifacts

from config import names
from bench import stages
from support import trainer_fixtures
from support.trainer_fixtures import transform_run  # noqa: F401 (pytest fixture)
from trainer import data
from transform import features


def test_transform_writes_plain_records_of_raw_uint8_pixels(transform_run):
    size = trainer_fixtures.tiny_config().model.image_size
    examples = trainer_fixtures.transformed_examples(transform_run)
    files = tf.io.gfile.glob(os.path.join(examples.uri, "Split-*", "*"))
    assert files and not [f for f in files if f.endswith(".gz")], files
    records = trainer_fixtures.split_records(examples, "eval")
    assert len(records) == trainer_fixtures.EVAL_IMAGES
    feature = tf.train.Example.FromString(records[0]).features.feature
    image = np.frombuffer(feature[features.IMAGE_KEY].bytes_list.value[0], np.uint8)
    mask = np.frombuffer(feature[features.MASK_KEY].bytes_list.value[0], np.uint8)
    assert image.size == size * size * 3 and mask.size == size * size
    assert set(np.unique(mask)) <= {0, 1, 2} and image.max() > image.min()
    # Each record is its pixels plus a few dozen bytes of framing, feature names and slice keys.
    on_disk = sum(tf.io.gfile.stat(f).length for f in files)
    total = trainer_fixtures.TRAIN_IMAGES + trainer_fixtures.EVAL_IMAGES
    assert size * size * 4 <= on_disk / total <= size * size * 4 + 200


def test_cached_and_streamed_input_yield_the_same_batches(transform_run):
    fn_args = trainer_fixtures.fn_args(transform_run, 31, trainer_fixtures.tiny_config())
    size = trainer_fixtures.tiny_config().model.image_size
    graph = tft.TFTransformOutput(fn_args.transform_output)

    def batches(cache):
        dataset = data.input_fn(fn_args.eval_files, fn_args.data_accessor, graph, 3, size, training=False, cache=cache)
        return [(image.numpy(), mask.numpy()) for image, mask in dataset]

    cached, streamed = batches(True), batches(False)
    assert [b[0].shape for b in cached] == [(3, size, size, 3), (3, size, size, 3), (2, size, size, 3)]
    assert cached[0][0].dtype == np.uint8 and cached[0][1].dtype == np.uint8
    for (image_a, mask_a), (image_b, mask_b) in zip(cached, streamed):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)


def test_a_split_is_cached_only_within_the_budget(transform_run, tmp_path):
    fn_args = trainer_fixtures.fn_args(transform_run, 32, trainer_fixtures.tiny_config())
    size = sum(os.path.getsize(path) for pattern in fn_args.eval_files for path in glob.glob(pattern))
    assert data.fits_cache(fn_args.eval_files, size)
    assert not data.fits_cache(fn_args.eval_files, size - 1)
    assert not data.fits_cache(fn_args.eval_files, 0)
    # Compressed records: their decoded size is unknown, so they stream whatever the budget.
    (tmp_path / "part-0.gz").write_bytes(b"\x1f\x8b")
    assert not data.fits_cache([str(tmp_path / "*")], 10**12)


def test_transform_drops_the_sink_folder_of_an_attempt_that_never_committed(transform_run, tmp_path):
    """A Flink failover during Transform leaves the first attempt's sink folder beside the shards."""
    component = trainer_fixtures.transform_component(
        types.Channel(type=standard_artifacts.Examples), types.Channel(type=standard_artifacts.Schema)
    )
    inputs = {
        "examples": [trainer_fixtures.raw_examples(transform_run)],
        "schema": [trainer_fixtures.output(transform_run, standard_artifacts.Schema, names.SCHEMA_GEN_ID)],
    }
    split = tmp_path / "transformed_examples" / "Split-eval"
    leftover = split / "beam-temp-transformed_examples-0123456789abcdef"
    leftover.mkdir(parents=True)
    (leftover / "half-written-shard").write_bytes(b"\x00" * 100)
    stages.run_executor(component, inputs, str(tmp_path), [])
    assert [p.name for p in split.iterdir()] == ["transformed_examples-00000-of-00001"]
    records = list(tf.data.TFRecordDataset(tf.io.gfile.glob(str(split / "*"))).as_numpy_iterator())
    assert len(records) == trainer_fixtures.EVAL_IMAGES

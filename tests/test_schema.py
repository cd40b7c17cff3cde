"""The curated raw schema on records the real TFDS builder writes: they pass, broken ones stop the run at the
ValidationGate."""

import json
import os
import shutil

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_data_validation.utils import schema_util
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.coders import example_coder

from tfx.components.example_validator import executor as example_validator
from tfx.types import standard_artifacts, standard_component_specs

from components import example_gen, tfds_prepare, validation_gate
from pipeline.pipeline import SCHEMA_FILE as SCHEMA_PATH
from transform import features


@pytest.fixture(scope="module")
def schema() -> schema_pb2.Schema:
    return schema_util.load_schema_text(str(SCHEMA_PATH))


@pytest.fixture(scope="module")
def tfds_records(tmp_path_factory):
    """Serialized tf.Examples of both splits, as the real oxford_iiit_pet builder writes them and TfdsExampleGen
    hands them on (with the per-image numbers)."""
    prepared = tfds_prepare.prepare(tmp_path_factory.mktemp("tfds"), "synthetic", synthetic=(6, 3, 0))
    out = tmp_path_factory.mktemp("examples")
    records = {}
    for split, files in prepared.files.items():
        written = [str(out / f"{split}-{i}") for i in range(len(files))]
        for source, target in zip(files, written):
            example_gen.add_image_statistics(source, target)
        records[split] = [r.numpy() for r in tf.data.TFRecordDataset(written)]
    return records


def good(tfds_records):
    return tfds_records["train"]


def broken(record: bytes, drop=(), **values) -> bytes:
    """`record` with features removed or replaced: key -> list of ints, floats or bytes."""
    example = tf.train.Example.FromString(record)
    feature = example.features.feature
    for key in drop:
        del feature[key]
    for key, value in values.items():
        kind = {int: "int64_list", float: "float_list", bytes: "bytes_list"}[type(value[0])]
        feature[key].Clear()
        getattr(feature[key], kind).value.extend(value)
    return example.SerializeToString()


def statistics_for(schema, examples):
    """StatisticsGen's generators given the schema, run in memory: Beam would add seconds per case."""
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(examples)
    return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))


def anomalies_for(schema, examples):
    """What ExampleValidator reports for `examples`: feature name -> short description."""
    stats = statistics_for(schema, examples)
    return {name: info.short_description for name, info in tfdv.validate_statistics(stats, schema).anomaly_info.items()}


def test_tfds_records_of_both_splits_have_no_anomalies(schema, tfds_records):
    assert anomalies_for(schema, tfds_records["train"]) == {}
    assert anomalies_for(schema, tfds_records["test"]) == {}


def test_transform_gets_every_tfds_feature_dense_and_the_image_numbers_optional(schema, tfds_records):
    # Transform and serving parse with the feature spec derived from the schema: fixed shapes give dense
    # tensors; the per-image numbers have none, so an Example without them (a client's) parses as well.
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    numbers = set(features.IMAGE_STATISTICS_KEYS)
    assert {k for k, s in spec.items() if isinstance(s, tf.io.FixedLenFeature)} == set(spec) - numbers, spec
    assert all(isinstance(spec[k], tf.io.VarLenFeature) for k in numbers), spec
    parsed = tf.io.parse_example(tfds_records["test"], spec)
    assert all(t.shape[0] == len(tfds_records["test"]) for k, t in parsed.items() if k not in numbers)
    assert all(parsed[k].values.shape[0] == len(tfds_records["test"]) for k in numbers)
    without = tf.io.parse_example([broken(r, drop=numbers) for r in tfds_records["test"]], spec)
    assert all(without[k].values.shape[0] == 0 for k in numbers)


def test_statistics_of_the_image_bytes_are_byte_sizes_not_categories(schema, tfds_records):
    def kinds(stats):
        return {f.path.step[0]: f.WhichOneof("stats") for f in stats.datasets[0].features}

    with_schema = kinds(statistics_for(schema, good(tfds_records)))
    assert with_schema[features.RAW_IMAGE_KEY] == with_schema[features.RAW_MASK_KEY] == "bytes_stats"
    # Without it, every encoded image would be counted as a category of its own.
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(good(tfds_records))
    without = kinds(stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions()))
    assert without[features.RAW_IMAGE_KEY] == "string_stats"


@pytest.mark.parametrize(
    "change,feature",
    [
        (dict(species=[2]), features.SPECIES_KEY),
        (dict(label=[37]), features.LABEL_KEY),
        (dict(drop=(features.RAW_MASK_KEY,)), features.RAW_MASK_KEY),
        (dict(head_bbox=[0.1, 0.2]), features.HEAD_BBOX_KEY),
        (dict(head_bbox=[0.1, 0.2, 1.5, 0.6]), features.HEAD_BBOX_KEY),
        (dict(image=[b"a", b"b"]), features.RAW_IMAGE_KEY),
        (dict(drop=(features.IMAGE_HEIGHT_KEY,)), features.IMAGE_HEIGHT_KEY),
        (dict(image_brightness=[300.0]), features.IMAGE_BRIGHTNESS_KEY),
    ],
    ids=[
        "species_2",
        "label_37",
        "missing_mask",
        "short_bbox",
        "bbox_out_of_range",
        "two_images",
        "missing_height",
        "brightness_out_of_range",
    ],
)
def test_a_broken_record_raises_an_anomaly_on_its_feature(schema, tfds_records, change, feature):
    records = good(tfds_records)
    found = anomalies_for(schema, records[1:] + [broken(records[0], **change)])
    assert feature in found, found


def run_example_validator(tmp_path, schema_file, examples_by_split):
    """Runs the real ExampleValidator executor on in-memory stats; returns its anomalies artifact."""
    stats = standard_artifacts.ExampleStatistics()
    stats.uri, stats.split_names = str(tmp_path / "stats"), json.dumps(sorted(examples_by_split))
    schema = standard_artifacts.Schema()
    schema.uri = str(tmp_path / "schema")
    os.makedirs(schema.uri)
    shutil.copy(schema_file, schema.uri)
    parsed = schema_util.load_schema_text(str(schema_file))
    for split, examples in examples_by_split.items():
        os.makedirs(os.path.join(stats.uri, f"Split-{split}"))
        with open(os.path.join(stats.uri, f"Split-{split}", "FeatureStats.pb"), "wb") as f:
            f.write(statistics_for(parsed, examples).SerializeToString())
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = str(tmp_path / "anomalies")
    example_validator.Executor().Do(
        {standard_component_specs.STATISTICS_KEY: [stats], standard_component_specs.SCHEMA_KEY: [schema]},
        {standard_component_specs.ANOMALIES_KEY: [anomalies]},
        {standard_component_specs.EXCLUDE_SPLITS_KEY: "[]"},
    )
    return anomalies


def test_gate_passes_the_tfds_splits(tmp_path, tfds_records):
    anomalies = run_example_validator(
        tmp_path, SCHEMA_PATH, {"train": tfds_records["train"], "eval": tfds_records["test"]}
    )
    assert set(validation_gate.load_anomalies(anomalies)) == {"train", "eval"}
    validation_gate.ValidationGate.test_call(anomalies=anomalies)


def test_gate_stops_the_run_naming_split_feature_and_reason(tmp_path, tfds_records):
    train, test = tfds_records["train"], tfds_records["test"]
    anomalies = run_example_validator(
        tmp_path,
        SCHEMA_PATH,
        {
            "train": train[1:] + [broken(train[0], species=[2])],
            "eval": test[1:] + [broken(test[0], drop=(features.RAW_MASK_KEY,))],
        },
    )
    with pytest.raises(validation_gate.AnomaliesFoundError) as error:
        validation_gate.ValidationGate.test_call(anomalies=anomalies)
    lines = str(error.value).splitlines()
    assert lines[0] == "ExampleValidator found anomalies; stopping before Transform:"
    assert lines[1].startswith("  split 'eval', feature 'segmentation_mask': ")
    assert lines[2].startswith("  split 'train', feature 'species': Out-of-range values (")
    assert "2" in lines[2] and len(lines) == 4


def test_describe_anomalies_covers_dataset_level_and_missing_data():
    proto = anomalies_pb2.Anomalies(data_missing=True)
    proto.dataset_anomaly_info.short_description = "Low num examples in dataset."
    assert validation_gate.describe_anomalies({"train": anomalies_pb2.Anomalies()}) == ""
    message = validation_gate.describe_anomalies({"train": proto})
    assert "  split 'train': no data" in message
    assert "  split 'train', dataset: Low num examples in dataset." in message


def test_gate_refuses_a_missing_file(tmp_path):
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri, anomalies.split_names = str(tmp_path), json.dumps(["train", "eval"])
    proto = anomalies_pb2.Anomalies()
    proto.anomaly_info["label"].short_description = "Out-of-range values"
    os.makedirs(tmp_path / "Split-train")
    (tmp_path / "Split-train" / validation_gate.ANOMALIES_FILE).write_bytes(proto.SerializeToString())
    with pytest.raises(FileNotFoundError, match="split 'eval'"):
        validation_gate.load_anomalies(anomalies)
    os.makedirs(tmp_path / "Split-eval")
    (tmp_path / "Split-eval" / validation_gate.ANOMALIES_FILE).write_bytes(b"")
    assert "feature 'label': Out-of-range values" in validation_gate.describe_anomalies(
        validation_gate.load_anomalies(anomalies)
    )

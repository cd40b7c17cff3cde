"""The curated raw schema accepts good TFDS-layout examples, and bad ones stop the run at the ValidationGate."""

import json
import os
import shutil

import pytest
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_data_validation.utils import schema_util
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx_bsl.coders import example_coder

from tfx.components.example_validator import executor as example_validator
from tfx.types import standard_artifacts, standard_component_specs

from components import validation_gate
from pipeline.pipeline import SCHEMA_FILE as SCHEMA_PATH
from support.images import raw_example
from transform import features


@pytest.fixture(scope="module")
def schema() -> schema_pb2.Schema:
    return schema_util.load_schema_text(str(SCHEMA_PATH))


def statistics_for(schema, examples):
    """StatisticsGen's generators given the schema, run in memory: Beam would add seconds per case."""
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(examples)
    return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))


def anomalies_for(schema, examples):
    """What ExampleValidator reports for `examples`: feature name -> short description."""
    stats = statistics_for(schema, examples)
    return {name: info.short_description
            for name, info in tfdv.validate_statistics(stats, schema).anomaly_info.items()}


def test_schema_covers_every_raw_feature_as_required_and_shaped(schema):
    by_name = {feature.name: feature for feature in schema.feature}
    assert set(by_name) == {features.RAW_IMAGE_KEY, features.RAW_MASK_KEY, features.LABEL_KEY,
                            features.SPECIES_KEY, features.FILE_NAME_KEY, features.HEAD_BBOX_KEY}
    for feature in by_name.values():
        assert feature.presence.min_fraction == 1.0 and feature.presence.min_count == 1, feature.name
    shapes = {name: [d.size for d in f.shape.dim] for name, f in by_name.items()}
    assert shapes == {"image": [1], "segmentation_mask": [1], "file_name": [1], "label": [1],
                      "species": [1], "head_bbox": [4]}
    assert by_name["image"].HasField("image_domain") and by_name["segmentation_mask"].HasField("image_domain")
    assert (by_name["label"].int_domain.min, by_name["label"].int_domain.max) == (0, 36)
    assert (by_name["species"].int_domain.min, by_name["species"].int_domain.max) == (0, 1)


def good_examples():
    return [raw_example(label=label, species=label % 2, file_name=f"pet_{label}.jpg".encode())
            for label in (0, 17, 36)]


def test_good_examples_have_no_anomalies(schema):
    assert anomalies_for(schema, good_examples()) == {}


def test_image_domain_keeps_encoded_images_out_of_categorical_stats(schema):
    stats = statistics_for(schema, good_examples())
    kinds = {f.path.step[0]: f.WhichOneof("stats") for f in stats.datasets[0].features}
    assert kinds[features.RAW_IMAGE_KEY] == kinds[features.RAW_MASK_KEY] == "bytes_stats"


@pytest.mark.parametrize("bad,feature", [
    (dict(species=2), features.SPECIES_KEY),
    (dict(label=37), features.LABEL_KEY),
    (dict(drop=(features.RAW_MASK_KEY,)), features.RAW_MASK_KEY),
    (dict(head_bbox=(0.1, 0.2)), features.HEAD_BBOX_KEY),
], ids=["species_2", "label_37", "missing_mask", "short_bbox"])
def test_bad_examples_raise_anomalies_on_the_right_feature(schema, bad, feature):
    found = anomalies_for(schema, good_examples() + [raw_example(**bad)])
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
        {standard_component_specs.EXCLUDE_SPLITS_KEY: "[]"})
    return anomalies


def test_gate_passes_clean_splits(tmp_path):
    anomalies = run_example_validator(tmp_path, SCHEMA_PATH, {"train": good_examples(), "eval": good_examples()})
    assert set(validation_gate.load_anomalies(anomalies)) == {"train", "eval"}
    validation_gate.ValidationGate.test_call(anomalies=anomalies)


def test_gate_stops_the_run_naming_split_feature_and_reason(tmp_path):
    anomalies = run_example_validator(tmp_path, SCHEMA_PATH, {
        "train": good_examples() + [raw_example(species=2)],
        "eval": good_examples() + [raw_example(drop=(features.RAW_MASK_KEY,))],
    })
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
        validation_gate.load_anomalies(anomalies))

"""The curated raw schema parses, accepts good TFDS-layout examples and flags bad ones."""

import pytest
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_data_validation.utils import schema_util
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder

from test_preprocessing import SCHEMA_PATH, raw_example
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

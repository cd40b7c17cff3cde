"""TfdsExampleGen under a real LocalDagRunner, read back by TFXIO and the real StatisticsGen."""

import json
import os

import pytest
import tensorflow_data_validation as tfdv
from tfx.components import StatisticsGen
from tfx.components.util import examples_utils, tfxio_utils
from tfx.orchestration import metadata, pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.types import artifact_utils
from tfx_bsl.tfxio import dataset_options

from components.example_gen import TfdsExampleGen
from report.artifacts import RunArtifacts


def test_raw_dir_source_needs_a_folder():
    with pytest.raises(ValueError, match="needs raw_dir"):
        TfdsExampleGen(data_dir="/tmp/unused", source="raw-dir")


def test_local_dag_runner_example_gen_then_statistics_gen(tmp_path):
    example_gen = TfdsExampleGen(data_dir=str(tmp_path / "tfds"), source="synthetic",
                                 synthetic_train_images=12, synthetic_test_images=6, synthetic_seed=1)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    metadata_config = metadata.sqlite_metadata_connection_config(str(tmp_path / "mlmd.sqlite"))
    # Not `tfx.v1`: importing it loads the Google Cloud extensions, ~15 s of a loaded 2-core box.
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name="tfds_example_gen_test", pipeline_root=str(tmp_path / "root"),
        components=[example_gen, statistics_gen], metadata_connection_config=metadata_config))

    run = RunArtifacts(str(tmp_path / "mlmd.sqlite"), "tfds_example_gen_test")
    [examples] = run.outputs(example_gen.id, "examples")
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    assert examples_utils.get_payload_format_string(examples) == "FORMAT_TF_EXAMPLE"
    props = {k: examples.get_custom_property(k) for k in
             ("tfds_name", "tfds_version", "source", "num_train", "num_eval", "skipped", "span")}
    assert props == {"tfds_name": "oxford_iiit_pet", "tfds_version": "4.0.0", "source": "synthetic",
                     "num_train": 12, "num_eval": 6, "skipped": "{}", "span": 0}
    assert examples.get_custom_property("tfds_data_dir") == str(tmp_path / "tfds")
    assert examples.get_custom_property("input_fingerprint")
    assert json.loads(examples.get_custom_property("repaired")) == {}

    # TFXIO, as Transform/Trainer would read the artifact (uncompressed tfrecords included).
    for split, count in (("train", 12), ("eval", 6)):
        io = tfxio_utils.get_split_tfxio([examples], split, telemetry_descriptors=["test"])
        batches = list(io.RecordBatches(dataset_options.RecordBatchesOptions(
            batch_size=100, shuffle=False, num_epochs=1)))
        assert sum(b.num_rows for b in batches) == count
        assert {"image", "segmentation_mask", "label", "species"} <= set(batches[0].schema.names)

    [stats_artifact] = run.outputs(statistics_gen.id, "statistics")
    for split, count in (("train", 12), ("eval", 6)):
        stats = tfdv.load_stats_binary(os.path.join(stats_artifact.uri, f"Split-{split}", "FeatureStats.pb"))
        assert stats.datasets[0].num_examples == count

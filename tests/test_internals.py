"""components.internals, one test per function: each fails when the library it reaches into behaves differently.

End-to-end coverage of the same functions: test_trainer_data (Transform's plain records, from the real
executor), test_evaluation (the Evaluator's fixed batches, through real tfx_bsl and Beam), test_tfds_data
(the real builder offline) and test_kubeflow_offline (the Kubeflow task entrypoint).
"""

import inspect
import pathlib

import pytest
import tensorflow_datasets as tfds
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.transform import executor as transform_executor

from components import internals
from dataset import archive, synthetic


def test_a_library_of_another_version_is_refused_by_name():
    installed = {"tfx": "1.21.0", "tensorflow-datasets": "4.9.9", "tensorflow": "2.21.0"}
    with pytest.raises(
        internals.IncompatibleLibraryError,
        match=r"tfx 1\.21\.0 \(written for 1\.16\.\*\), "
        r"tensorflow 2\.21\.0 \(written for 2\.16\.\*\)",
    ):
        internals.check_versions(installed.__getitem__)
    internals.check_versions()  # the installed stack is the one the module was written for


def test_transform_builds_its_processor_by_the_name_the_block_replaces():
    # TFX's executor calls `TransformProcessor()` by its module-level name; were it bound elsewhere, the
    # block would change nothing and the records would be gzipped again.
    assert "TransformProcessor" in transform_executor.Executor.Do.__code__.co_names
    stock = transform_executor.TransformProcessor
    with internals.transform_writes_plain_records():
        processor = transform_executor.TransformProcessor
        assert issubclass(processor, stock) and processor is not stock
        # The sink it replaces is still the one TFX calls, with the arguments it is called with.
        assert (
            list(inspect.signature(stock._EncodeAndWrite).parameters)[:4]
            == list(inspect.signature(processor._EncodeAndWrite).parameters)[:4]
        )
    assert transform_executor.TransformProcessor is stock


def _batch_sizes(tfxio, path) -> list:
    """Rows per record batch of a TFXIO's Beam source, through a real (direct) Beam pipeline."""
    import json

    import apache_beam as beam

    with beam.Pipeline() as pipeline:
        _ = (
            pipeline
            | tfxio.BeamSource()
            | beam.Map(lambda batch: batch.num_rows)
            | beam.combiners.ToList()
            | beam.Map(lambda sizes: json.dumps(sorted(sizes)))
            | beam.io.WriteToText(str(path), shard_name_template="")
        )
    return json.loads(path.read_text())


def test_the_evaluator_reads_the_tfxio_factory_by_the_name_the_block_replaces(tmp_path):
    import tensorflow as tf
    from tfx.types import standard_artifacts

    assert "tfxio_utils" in evaluator_executor.Executor.Do.__code__.co_names
    (tmp_path / "Split-eval").mkdir()
    with tf.io.TFRecordWriter(str(tmp_path / "Split-eval" / "data.tfrecord")) as writer:
        for i in range(20):
            feature = {"x": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    examples = standard_artifacts.Examples()
    examples.uri, examples.split_names = str(tmp_path), '["eval"]'
    pattern = str(tmp_path / "Split-eval" / "*")

    stock = evaluator_executor.tfxio_utils
    with internals.evaluator_reads_batches_of(8):
        assert evaluator_executor.tfxio_utils is not stock
        factory = evaluator_executor.tfxio_utils.get_tfxio_factory_from_artifact([examples], ["test"])
    assert evaluator_executor.tfxio_utils is stock
    assert _batch_sizes(factory(pattern), tmp_path / "ours") == [4, 8, 8]
    # TFX's own factory batches adaptively, from one example up: what the block is there to change.
    stock_sizes = _batch_sizes(stock.get_tfxio_factory_from_artifact([examples], ["test"])(pattern), tmp_path / "stock")
    assert sum(stock_sizes) == 20 and stock_sizes != [4, 8, 8], stock_sizes


def test_kubeflow_executor_flags_split_into_tfx_flags_and_beam_args():
    args, beam_args = internals.parse_kubeflow_v2_executor_flags(
        [
            "prog",
            "--executor_class_path",
            "components.pusher.Executor",
            "--json_serialized_invocation_args",
            "{}",
            "--runner=DirectRunner",
            "--direct_num_workers=2",
        ]
    )
    assert args.executor_class_path == "components.pusher.Executor"
    assert args.json_serialized_invocation_args == "{}"
    # TFX keeps argv[0] among the Beam args (Beam ignores what is not a flag); the split must be TFX's own.
    assert beam_args == ["prog", "--runner=DirectRunner", "--direct_num_workers=2"]


def test_the_builder_reencodes_the_samples_tfds_lists_as_corrupt():
    names = internals.tfds_reencoded_names()
    assert "beagle_116" in names and len(names) >= 5


def test_the_extracted_builder_builds_the_real_dataset_quietly(tmp_path, capfd):
    raw = synthetic.write_archive(tmp_path / "raw", 2, 1, seed=0)
    builder_class = internals.extracted_tfds_builder("oxford_iiit_pet", tuple(archive.LIST_FILES.items()))
    builder = builder_class(raw, data_dir=str(tmp_path / "tfds"), version="4.0.0")
    capfd.readouterr()
    builder.download_and_prepare()
    # The real builder's download messages would go to stdout; here nothing is downloaded.
    assert capfd.readouterr().out == ""
    plain = tfds.builder("oxford_iiit_pet:4.0.0", data_dir=str(tmp_path / "tfds"))
    assert plain.is_prepared() and plain.info.splits["train"].num_examples == 2


def global_names(code) -> set:
    """Names a function's code reads, its comprehensions' included (each is a code object of its own)."""
    return set(code.co_names).union(*(global_names(c) for c in code.co_consts if inspect.iscode(c)))


def test_the_distribution_validator_keeps_normalized_abs_difference_and_reads_a_json_config():
    from google.protobuf import json_format
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.components.distribution_validator import executor as validator_executor
    from tfx.proto import distribution_validator_pb2

    high = anomalies_pb2.AnomalyInfo.Type.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH
    stock = validator_executor._COMPARISON_ANOMALY_TYPES
    # TFX 1.16 leaves the type out, and filters reasons by the module-level name the block replaces.
    assert high not in stock
    assert "_COMPARISON_ANOMALY_TYPES" in global_names(validator_executor._get_comparison_only_anomalies.__code__)
    assert "_get_distribution_validator_config" in validator_executor.Executor.Do.__code__.co_names
    config = distribution_validator_pb2.DistributionValidatorConfig()
    config.default_slice_config.feature.add().path.step.append("label")
    key = "distribution_validator_config"
    compiled = {key: json_format.MessageToJson(config), "include_split_pairs": "null"}
    with internals.distribution_validator_fixed(compiled) as fixed:
        assert high in validator_executor._COMPARISON_ANOMALY_TYPES
        assert fixed[key] == config and fixed["include_split_pairs"] == "null"
        # What the executor reads the config with hands on the message.
        assert validator_executor._get_distribution_validator_config({}, fixed) == config
    assert validator_executor._COMPARISON_ANOMALY_TYPES is stock
    with internals.distribution_validator_fixed({key: config}) as fixed:
        assert fixed[key] is config


def test_local_dag_runner_logs_the_lines_progress_reads(tmp_path):
    """Two runs of a one-node pipeline, the second from cache, as LocalDagRunner logs them."""
    import logging

    from absl import logging as absl_logging
    from tfx.v1.components import ImportSchemaGen
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.events = []

        def emit(self, record):
            event = internals.local_runner_progress(record)
            if event[0]:
                self.events.append(event)

    schema = pathlib.Path(__file__).resolve().parent.parent / "transform" / "schema.pbtxt"
    records = Records()
    root = logging.getLogger()
    # TFX logs through absl, whose logger drops INFO unless the verbosity flag allows it; another
    # test (or TF's SavedModel export) may have left it at WARNING.
    saved_level, saved_verbosity = root.level, absl_logging.get_verbosity()
    root.addHandler(records)
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        for _ in range(2):
            LocalDagRunner().run(
                pipeline.Pipeline(
                    pipeline_name="progress",
                    pipeline_root=str(tmp_path / "root"),
                    enable_cache=True,
                    components=[ImportSchemaGen(schema_file=str(schema))],
                    metadata_connection_config=metadata.sqlite_metadata_connection_config(str(tmp_path / "m.sqlite")),
                )
            )
    finally:
        root.removeHandler(records)
        root.setLevel(saved_level)
        absl_logging.set_verbosity(saved_verbosity)
    kinds = [kind for kind, _ in records.events]
    assert kinds == ["running", "finished", "running", "cached", "finished"], records.events
    assert records.events[0][1] == "ImportSchemaGen" and isinstance(records.events[3][1], int)
    assert internals.local_runner_progress(logging.LogRecord("x", logging.INFO, "f", 1, "other", None, None)) == (
        "",
        None,
    )

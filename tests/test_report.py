"""The post-run readers on real files: MLMD of a real tiny run, Examples tfrecords, TensorBoard logs."""

import json

import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

from config import names
from report.artifacts import RunArtifacts
from report.example_records import tfrecords
from report.training_history import training_history

NODES = {
    names.EXAMPLE_GEN_ID,
    names.SCHEMA_GEN_ID,
    names.STATISTICS_GEN_ID,
    names.EXAMPLE_VALIDATOR_ID,
    names.VALIDATION_GATE_ID,
    names.TRANSFORM_ID,
    names.LATEST_BLESSED_MODEL_ID,
    names.DRIFT_VALIDATOR_ID,
    names.DRIFT_GATE_ID,
    names.TRAINER_ID,
    names.EVALUATOR_ID,
    names.PUSHER_ID,
}


def test_run_artifacts_of_a_real_run(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    with RunArtifacts(str(tiny_run / "metadata.sqlite")) as run:
        assert set(run.node_ids()) == NODES
        [trainer] = run.executions(names.TRAINER_ID)
        assert trainer.last_known_state == metadata_store_pb2.Execution.COMPLETE
        model = run.one(names.TRAINER_ID, "model")
        assert model.uri == summary["model"] and [a.id for a in run.outputs_of(trainer, "model")] == [model.id]
        [examples] = run.inputs_of(run.executions(names.TRANSFORM_ID)[0], "examples")
        assert examples.id == run.get(names.EXAMPLE_GEN_ID, "examples").id
        assert examples.get_int_custom_property("num_train") == summary["dataset"]["examples"]["train"]
        assert run.one(names.TRAINER_ID, "no_such_key") is None
        with pytest.raises(LookupError, match="Pusher.no_such_key"):
            run.get(names.PUSHER_ID, "no_such_key")
        times = run.component_times()
    # Times come from MLMD's execution stamps, in the order the components started.
    assert set(times) == NODES and not any(t["cached"] for t in times.values())
    assert all(t["seconds"] >= 0 for t in times.values())
    order = list(times).index
    assert order(names.TRAINER_ID) > order(names.TRANSFORM_ID) > order(names.EXAMPLE_GEN_ID)
    assert summary["components"] == times


def test_missing_store_is_refused_not_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metadata store"):
        RunArtifacts(str(tmp_path / "metadata.sqlite"))
    assert not (tmp_path / "metadata.sqlite").exists()


def _write(path, records, compression=""):
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type=compression)) as writer:
        for record in records:
            writer.write(record)


def test_tfrecords_reads_plain_and_gzip_files_as_tfx_names_them(tmp_path):
    _write(tmp_path / "plain-00000-of-00001", [b"a", b"b"])
    _write(tmp_path / "zipped-00000-of-00001.gz", [b"c"], "GZIP")
    assert [r.numpy() for r in tfrecords([str(tmp_path / "plain-00000-of-00001")])] == [b"a", b"b"]
    assert [r.numpy() for r in tfrecords([str(tmp_path / "zipped-00000-of-00001.gz")])] == [b"c"]
    with pytest.raises(ValueError, match="cannot read .gz and plain"):
        tfrecords([str(tmp_path / "plain-00000-of-00001"), str(tmp_path / "zipped-00000-of-00001.gz")])


def _log(logdir, tag, steps_and_values):
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for step, value in steps_and_values:
            tf.summary.scalar(tag, value, step=step)
    writer.close()


def test_training_history_from_tensorboard_logs_of_a_resumed_training(tmp_path):
    _log(tmp_path / "train", "epoch_loss", [(0, 0.9), (1, 0.8), (2, 0.7)])
    # Killed after epoch 2 and resumed from the backup of epoch 1: a second events file repeats steps 1 and 2.
    _log(tmp_path / "train", "epoch_loss", [(1, 0.6), (2, 0.5), (3, 0.4)])
    _log(tmp_path / "validation", "epoch_loss", [(0, 1.0), (1, 0.95)])
    _log(tmp_path / "validation", "evaluation_loss_vs_iterations", [(0, 1.0)])
    history = training_history(str(tmp_path))
    assert history == {
        "loss": pytest.approx([0.9, 0.6, 0.5, 0.4]),
        "val_loss": pytest.approx([1.0, 0.95]),
        "epoch": [0, 1, 2, 3],
    }
    assert training_history(None) == {} and training_history(str(tmp_path / "none")) == {}

"""run_fn with real TFX FnArgs on a real Transform output: trains, logs, exports, resumes, warm-starts."""

import json
import logging
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from support import trainer_fixtures
from support.trainer_fixtures import limited, trained, transform_run  # noqa: F401 (pytest fixtures)
from trainer import model as model_lib, run, strategy
from report.training_history import training_history
from transform import features

# The worker is killed after this epoch of EPOCHS; its retry must train only the rest.
KILL_AFTER, EPOCHS = 1, 3


def _history(fn_args) -> dict:
    """What the dashboard shows of the Trainer's epochs: its TensorBoard events."""
    return training_history(fn_args.model_run_dir)


def _epoch_steps(log_dir: str, tag: str = "epoch_loss") -> list:
    """Steps (0-based epochs) at which TensorBoard summaries of `tag` were written."""
    steps = []
    for path in tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def _weights(model_dir: str) -> dict:
    weights = {w.name: w.numpy() for w in tf.keras.models.load_model(model_dir, compile=False).weights}
    assert weights
    return weights


def _keras_layer_traces(model_dir: str) -> list:
    """Functions in the export that Keras traced per layer (`*_layer_call_fn`, `*_layer_call_and_return_*`)."""
    saved = saved_model_pb2.SavedModel.FromString(pathlib.Path(model_dir, "saved_model.pb").read_bytes())
    return [
        f.signature.name
        for graph in saved.meta_graphs
        for f in graph.graph_def.library.function
        if "layer_call" in f.signature.name
    ]


def test_run_fn_trains_logs_and_exports(trained):
    history = _history(trained)
    assert history["epoch"] == [0, 1]
    assert history["loss"][1] < history["loss"][0], history
    assert len(history["val_loss"]) == 2
    for subdir in ("train", "validation"):
        assert _epoch_steps(os.path.join(trained.model_run_dir, subdir)) == [0, 1]
    assert tf.saved_model.contains_saved_model(trained.serving_model_dir)
    # Only the signatures are exported: per-layer traces would triple the export's save and load time.
    assert _keras_layer_traces(trained.serving_model_dir) == []
    # Keras drops the backup of a finished training, so a later run never "resumes" a complete one.
    assert not tf.io.gfile.exists(run.backup_dir(trained))


def _variables_bytes(model_dir: str) -> int:
    folder = pathlib.Path(model_dir, "variables")
    return sum(path.stat().st_size for path in folder.iterdir())


def test_export_holds_the_weights_alone(trained):
    """No optimizer state in what is served, evaluated and warm-started from: Adam's slots triple it."""
    export = trained.serving_model_dir
    stored = dict(tf.train.list_variables(os.path.join(export, "variables", "variables")))
    optimizer_keys = [key for key in stored if "optimizer" in key.lower()]
    assert optimizer_keys == []
    parameters = model_lib.build_model(trainer_fixtures.tiny_config().model, "float32").count_params()
    values = sum(int(np.prod(shape)) for shape in stored.values())
    # The weights, and a few dozen values of the metrics' running totals besides.
    assert parameters <= values <= parameters + 100, (parameters, values)
    assert 4 * parameters <= _variables_bytes(export) <= 1.05 * 4 * parameters


def test_killed_training_resumes_at_the_next_epoch(transform_run):
    # Its own epoch count also gives it its own backup folder, apart from `trained`'s.
    overrides = {"train.epochs": EPOCHS}
    config = trainer_fixtures.tiny_config(**overrides)
    killed = trainer_fixtures.fn_args(transform_run, 11, config)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    worker = subprocess.run(
        [
            sys.executable,
            trainer_fixtures.__file__,
            "--metadata",
            transform_run,
            "--execution-id",
            "11",
            "--overrides",
            json.dumps(overrides),
            "--exit-after-epoch",
            str(KILL_AFTER),
            "--exit-code",
            "17",
        ],
        cwd=trainer_fixtures.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert worker.returncode == 17, worker.stdout[-3000:] + worker.stderr[-3000:]
    assert not tf.io.gfile.exists(killed.serving_model_dir)
    assert tf.io.gfile.listdir(run.backup_dir(killed))
    # The best epoch so far is kept beside the backup, for the retry to weigh its epochs against.
    assert tf.io.gfile.exists(os.path.join(run.backup_dir(killed), run.BEST_EPOCH_FILE))

    # A TFX retry is a new execution with fresh output URIs but the same inputs and config.
    retry = trainer_fixtures.fn_args(transform_run, 12, config)
    assert retry.serving_model_dir != killed.serving_model_dir
    assert run.backup_dir(retry) == run.backup_dir(killed)
    run.run_fn(retry)
    assert _history(retry)["epoch"] == list(range(KILL_AFTER, EPOCHS))
    assert _epoch_steps(os.path.join(retry.model_run_dir, "train")) == list(range(KILL_AFTER, EPOCHS))
    assert tf.saved_model.contains_saved_model(retry.serving_model_dir)
    assert not tf.io.gfile.exists(run.backup_dir(retry))


class _EpochWeights(tf.keras.callbacks.Callback):
    """Each epoch's validation mean IoU and weights; epoch `spoiled` starts from zeros at learning rate 0.

    Zero weights give zero logits, one class everywhere: that epoch validates worse than any trained one.
    """

    def __init__(self, spoiled: int):
        super().__init__()
        self.spoiled, self.mean_iou, self.weights = spoiled, [], []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.spoiled:
            self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])
            self.model.optimizer.learning_rate.assign(0.0)

    def on_epoch_end(self, epoch, logs=None):
        self.mean_iou.append(logs["val_mean_iou"])
        self.weights.append({w.name: w.numpy() for w in self.model.weights})


def test_the_export_holds_the_best_validated_epoch_not_the_last(transform_run, capsys):
    config = trainer_fixtures.tiny_config(**{"train.epochs": 3, "train.lr_patience": 0})
    args = trainer_fixtures.fn_args(transform_run, 51, config)
    seen = _EpochWeights(spoiled=2)
    run.run_fn(args, extra_callbacks=[seen])
    best = int(np.argmax(seen.mean_iou))
    assert best < 2, seen.mean_iou
    exported = _weights(args.serving_model_dir)
    assert exported.keys() == seen.weights[best].keys()
    for name, value in exported.items():
        np.testing.assert_array_equal(value, seen.weights[best][name], err_msg=name)
    # Printed beside fit's epoch lines, the last epoch's value with it.
    printed = capsys.readouterr().out
    assert f"Exporting epoch {best + 1}'s weights: the best validation mean IoU, {seen.mean_iou[best]:.4f}" in printed
    assert f"(the last epoch's: {seen.mean_iou[-1]:.4f})" in printed
    assert not tf.io.gfile.exists(run.backup_dir(args))


class _ValidationBatches(tf.keras.callbacks.Callback):
    """Batches of each validation pass."""

    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_test_begin(self, logs=None):
        self.per_epoch.append(0)

    def on_test_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


def test_validation_sees_the_first_n_eval_examples_every_epoch_and_drives_the_lr_schedule(transform_run):
    n, batch = 5, 2
    # A learning rate too small to move val_loss by ReduceLROnPlateau's min_delta: a plateau by construction.
    config = trainer_fixtures.tiny_config(
        **{"train.validation_images": n, "train.batch_size": batch, "train.epochs": 3, "train.lr_patience": 1}
    )
    config.train.learning_rate = 1e-11  # `--set` reads 1e-11 as text (YAML 1.1 floats need a dot)
    args = trainer_fixtures.fn_args(transform_run, 41, config)
    counted = _ValidationBatches()
    run.run_fn(args, extra_callbacks=[counted])
    assert n < trainer_fixtures.EVAL_IMAGES
    assert counted.per_epoch == [-(-n // batch)] * 3  # 3 batches of at most 2, not the split's 4

    history = _history(args)
    # The same examples each epoch: with weights that barely move, val_loss barely moves.
    assert max(history["val_loss"]) - min(history["val_loss"]) < 1e-5, history["val_loss"]
    # ReduceLROnPlateau halved the rate after patience 1 (logs carry the rate before its change).
    np.testing.assert_allclose(history["lr"], [1e-11, 1e-11, 5e-12], rtol=1e-5)

    # The last val_loss is the exported weights' loss on exactly the split's first n records.
    size = config.model.image_size
    records = trainer_fixtures.split_records(trainer_fixtures.transformed_examples(transform_run), "eval")[:n]
    parsed = [tf.train.Example.FromString(r).features.feature for r in records]
    images = np.stack(
        [np.frombuffer(f[features.IMAGE_KEY].bytes_list.value[0], np.uint8).reshape(size, size, 3) for f in parsed]
    )
    masks = np.stack(
        [np.frombuffer(f[features.MASK_KEY].bytes_list.value[0], np.uint8).reshape(size, size) for f in parsed]
    )
    logits = tf.keras.models.load_model(args.serving_model_dir, compile=False)(images)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(masks, logits)
    np.testing.assert_allclose(history["val_loss"][-1], float(loss), rtol=1e-5)


def test_warm_start_begins_from_the_base_model_weights(trained, limited):
    # The Trainer executor resolves the base Model artifact to its Format-Serving folder.
    assert limited.base_model == trained.serving_model_dir
    assert _history(limited).get("epoch", []) == []  # epochs=0: the export holds the starting weights
    base, warm = _weights(trained.serving_model_dir), _weights(limited.serving_model_dir)
    assert base.keys() == warm.keys()
    for name, value in base.items():
        np.testing.assert_array_equal(warm[name], value, err_msg=name)


def test_warm_start_skips_a_base_model_of_another_architecture(trained, caplog):
    model = model_lib.build_model(trainer_fixtures.tiny_config(**{"model.head_width": 16}).model, "float32")
    before = model.get_weights()
    with caplog.at_level(logging.WARNING, logger=run.__name__):
        run._warm_start(model, trained.serving_model_dir)
    assert "different architecture" in caplog.text
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize(
    "model, logs, folder",
    [
        # TFX's local layout: one folder per output, one per execution under it.
        ("gs://b/root/Trainer/model/7/Format-Serving", "gs://b/root/Trainer/model_run/7", "gs://b/root/Trainer"),
        # Kubeflow's: the task's folder holds its outputs; a TFJob's replicas write them to staging beside them.
        (
            "gs://b/root/run-1/Trainer/model/Format-Serving",
            "gs://b/root/run-1/Trainer/model_run",
            "gs://b/root/run-1/Trainer",
        ),
        ("gs://b/t/tfjob-staging/model/Format-Serving", "gs://b/t/tfjob-staging/model_run", "gs://b/t/tfjob-staging"),
        ("/pets/root/Trainer/model/9/Format-Serving", "/pets/root/Trainer/model_run/9", "/pets/root/Trainer"),
    ],
)
def test_the_backup_sits_in_the_folder_the_trainers_outputs_share(model, logs, folder):
    fn_args = types.SimpleNamespace(
        train_files=["gs://b/root/Transform/x/Split-train/*"],
        eval_files=["gs://b/root/Transform/x/Split-eval/*"],
        transform_output="gs://b/root/Transform/graph/3",
        base_model=None,
        custom_config={"model": {}},
        serving_model_dir=model,
        model_run_dir=logs,
    )
    assert run.backup_dir(fn_args).rsplit("/", 2)[:2] == [folder, "backup"]


def test_outputs_that_share_no_folder_are_refused():
    fn_args = types.SimpleNamespace(
        train_files=[],
        eval_files=[],
        transform_output="",
        base_model=None,
        custom_config={},
        serving_model_dir="gs://a/model",
        model_run_dir="gs://b/logs",
    )
    with pytest.raises(ValueError, match="share no folder"):
        run.backup_dir(fn_args)


@pytest.mark.parametrize(
    "tf_config, chief",
    [
        (None, True),
        ({"cluster": {"chief": ["c:2222"], "worker": ["w:2222"]}, "task": {"type": "chief", "index": 0}}, True),
        ({"cluster": {"chief": ["c:2222"], "worker": ["w:2222"]}, "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": {"worker": ["w0:2222", "w1:2222"]}, "task": {"type": "worker", "index": 0}}, True),
    ],
)
def test_exactly_one_replica_is_the_chief(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert strategy.is_chief() is chief

"""TFX Trainer entry point (`run_fn`): strategy, data, resumable fit, warm start, servable export."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import tempfile
from typing import Sequence

import tensorflow as tf
import tensorflow_transform as tft

from config.settings import ModelConfig, TrainConfig
from trainer import best_epoch, data, model as model_lib, precision, signatures, strategy as strategy_lib

log = logging.getLogger(__name__)


# Beside Keras' backup checkpoints, with the same lifetime.
BEST_EPOCH_FILE = "best_epoch.npz"


def backup_dir(fn_args) -> str:
    """A BackupAndRestore folder that a retry of the same training finds again.

    Each TFX execution (a retry too) gets fresh output URIs, so the folder is keyed on what defines
    the training instead: its input artifacts and settings. It sits in the deepest folder the Trainer's
    two outputs (the model and its logs) share, whatever the orchestrator's layout below it: a local
    run's `<pipeline_root>/Trainer/`, a Kubeflow task's own folder. It is removed once training finishes.
    """
    key = json.dumps(
        {
            "train": sorted(fn_args.train_files),
            "eval": sorted(fn_args.eval_files),
            "transform": fn_args.transform_output,
            "base": fn_args.base_model or "",
            "config": fn_args.custom_config,
        },
        sort_keys=True,
    )
    return posixpath.join(
        _shared_folder(fn_args.serving_model_dir, fn_args.model_run_dir),
        "backup",
        hashlib.sha256(key.encode()).hexdigest()[:16],
    )


def _shared_folder(*uris: str) -> str:
    """The deepest folder of local paths or URIs (gs://...) that holds them all; split as strings, since
    pathlib and posixpath.commonpath turn "gs://b" into "gs:/b"."""
    parts = [uri.rstrip("/").split("/") for uri in uris]
    shared = []
    for names in zip(*parts):
        if len(set(names)) > 1:
            break
        shared.append(names[0])
    folder = "/".join(shared)
    if folder.rstrip("/").endswith(":") or not folder.strip("/"):
        raise ValueError(f"the Trainer's outputs share no folder to keep a backup in: {', '.join(uris)}")
    return folder


def _warm_start(model: tf.keras.Model, base_model_dir: str) -> None:
    """Copies weights from the last blessed model when the architecture still matches."""
    base = tf.keras.models.load_model(base_model_dir, compile=False)
    if [w.shape for w in base.weights] != [w.shape for w in model.weights]:
        log.warning("Not warm-starting: %s has a different architecture", base_model_dir)
        return
    model.set_weights(base.get_weights())
    log.info("Warm-started from %s", base_model_dir)


def _lr_schedule(train_config: TrainConfig) -> list:
    """Halve the learning rate when validation loss stalls: the last epochs then refine, not bounce."""
    if not train_config.lr_patience:
        return []
    return [
        tf.keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=0.5,
            patience=train_config.lr_patience,
            min_lr=train_config.learning_rate / 64,
            verbose=1,
        )
    ]


def export_model(
    model: tf.keras.Model, export_dir: str, tf_transform_output: tft.TFTransformOutput, model_config: ModelConfig
) -> None:
    """Saves the servable model: weights, the three signatures and the Keras config, no optimizer state.

    Everything that loads the export (TF Serving, the Evaluator, warm start, the Pusher's copies) needs
    the weights only; Adam's two slots per weight would triple its size. Resuming reads the backup
    checkpoints instead, which keep them. Without Keras's per-layer traces the export saves and loads
    in about a third of the time: consumers call the signatures, and warm start rebuilds the Keras
    model from its layers' configs.
    """
    model.save(
        export_dir,
        save_format="tf",
        include_optimizer=False,
        save_traces=False,
        signatures=signatures.make_signatures(
            model, tf_transform_output, model_config.image_size, model_config.serving_max_pixels
        ),
    )


def run_fn(fn_args, extra_callbacks: Sequence[tf.keras.callbacks.Callback] = ()) -> None:
    """Trains VGG16-FCN8 on the transformed examples and exports it with its serving signatures.

    TFX calls `run_fn(fn_args)`; `extra_callbacks` run after the backup is written each epoch, so a
    caller can observe (or interrupt) training at a point it will resume from. On a multi-worker
    cluster every replica runs it with the same arguments: the chief exports and writes the run's logs,
    the others return once the chief's export is complete (TFX checks `serving_model_dir` on each).
    """
    model_config = ModelConfig(**fn_args.custom_config["model"])
    train_config = TrainConfig(**fn_args.custom_config["train"])
    strategy = strategy_lib.choose_strategy(train_config)
    policy = precision.training_policy(model_config.mixed_precision, model_config, train_config, strategy)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)

    global_batch = train_config.batch_size * strategy.num_replicas_in_sync
    repeat = train_config.steps_per_epoch is not None
    size = model_config.image_size
    train_ds = data.input_fn(
        fn_args.train_files,
        fn_args.data_accessor,
        tf_transform_output,
        global_batch,
        size,
        training=True,
        shuffle_buffer=train_config.shuffle_buffer,
        repeat=repeat,
        cache=data.fits_cache(fn_args.train_files, train_config.cache_max_bytes),
    )
    # Keras validates on a fixed subset, so each epoch's validation costs a bounded share of the epoch
    # whatever the eval split's size; the Evaluator scores the whole split once. The subset's decoded
    # size is known exactly, compressed records or not.
    validation_images = train_config.validation_images
    eval_ds = data.input_fn(
        fn_args.eval_files,
        fn_args.data_accessor,
        tf_transform_output,
        global_batch,
        size,
        training=False,
        limit=validation_images,
        cache=data.decoded_bytes(validation_images, size) <= train_config.cache_max_bytes,
    )

    with strategy.scope():
        model = model_lib.build_model(model_config, policy)
        # Before the first push the base model is an empty placeholder: train from scratch.
        if fn_args.base_model and tf.saved_model.contains_saved_model(fn_args.base_model):
            _warm_start(model, fn_args.base_model)
        model_lib.compile_model(model, train_config)
    log.info(
        "Training %s parameters, global batch %d over %d replica(s)",
        f"{model.count_params():,}",
        global_batch,
        strategy.num_replicas_in_sync,
    )

    chief = strategy_lib.is_chief()
    backup = backup_dir(fn_args)
    best = best_epoch.BestEpoch(posixpath.join(backup, BEST_EPOCH_FILE), writer=chief)
    history = model.fit(
        train_ds,
        validation_data=eval_ds,
        epochs=train_config.epochs,
        steps_per_epoch=train_config.steps_per_epoch,
        callbacks=[
            # Before TensorBoard: it adds the epoch's learning rate to the logs TensorBoard then writes.
            *_lr_schedule(train_config),
            # Every replica of a cluster runs run_fn with the same model_run_dir: one writer, the chief. Its
            # events are the run's one history (the dashboard reads them).
            *([tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")] if chief else []),
            best,
            tf.keras.callbacks.BackupAndRestore(backup),
            *extra_callbacks,
        ],
        verbose=2,
    )
    _restore_best(best, history)
    if chief:
        export_model(model, fn_args.serving_model_dir, tf_transform_output, model_config)
    else:
        # Saving may run collectives (reading the metrics' sync-on-read variables) that every replica
        # must join, so the other replicas save the same model, to scratch.
        scratch = tempfile.mkdtemp(prefix="petseg-replica-export-")
        export_model(model, scratch, tf_transform_output, model_config)
        tf.io.gfile.rmtree(scratch)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _wait_for_every_replica(strategy)
        # TFX fails a replica whose serving_model_dir is missing after run_fn; the chief's is there now.
        if not tf.saved_model.contains_saved_model(fn_args.serving_model_dir):
            raise RuntimeError(
                f"The chief's export {fn_args.serving_model_dir} is missing after every replica "
                "finished: replicas must share the Trainer's output storage (e.g. gs://)"
            )
    # Keras deletes its checkpoint files when fit completes but leaves their folder behind; in a cluster
    # the other replicas' temporary files in it are gone only once they have all finished (above).
    if chief and tf.io.gfile.isdir(backup) and not tf.io.gfile.listdir(backup):
        tf.io.gfile.rmtree(backup)


def _restore_best(best: best_epoch.BestEpoch, history: tf.keras.callbacks.History) -> None:
    """The model takes the weights of its best validated epoch, the one it is exported with.

    Printed, as Keras's own EarlyStopping prints its restore, beside fit's epoch lines, where users read
    the epochs' numbers.
    """
    epoch = best.restore()
    if epoch is None:
        print("No epoch validated: exporting the weights as they are", flush=True)
        return
    last = history.history.get(best_epoch.MONITOR, [None])[-1]
    tail = "" if last is None or history.epoch[-1] == epoch else f" (the last epoch's: {last:.4f})"
    print(f"Exporting epoch {epoch + 1}'s weights: the best validation mean IoU, {best.value:.4f}{tail}", flush=True)


def _wait_for_every_replica(strategy: tf.distribute.Strategy) -> None:
    """Returns once every replica of the cluster has called it.

    An all-reduce completes only when all replicas have contributed, so no replica leaves before the
    chief, which enters only after its export is complete.
    """
    replicas = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
    log.info("All %d replicas finished; the chief's export is complete", int(replicas))

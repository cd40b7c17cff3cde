"""Subprocess for tests/test_strategy.py: trains the tiny model under choose_strategy() and writes results."""

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import config  # noqa: F401  the Keras switch, before TensorFlow
import numpy as np
import tensorflow as tf

from config.settings import ModelConfig, TrainConfig
from trainer import model as model_lib, precision
from trainer.strategy import choose_strategy

MODEL = ModelConfig(image_size=32, width_multiplier=0.125, head_width=16)
GLOBAL_BATCH = 8
EXAMPLES = 16  # two steps per epoch
KILLED_EXIT_CODE = 17


class _EpochLog(tf.keras.callbacks.Callback):
    """Appends each epoch index as it begins, so a test can see where a resumed run started."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_begin(self, epoch, logs=None):
        with open(self.path, "a") as f:
            f.write(f"{epoch}\n")


class _KillAfterEpoch(tf.keras.callbacks.Callback):
    """Simulates a preempted worker: no cleanup, no on_train_end."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            os._exit(KILLED_EXIT_CODE)


class _StepTimer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.durations = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def _dataset():
    rng = np.random.default_rng(0)
    # As the Trainer's input_fn yields them: uint8 pixels and class ids.
    images = rng.integers(0, 256, size=(EXAMPLES, MODEL.image_size, MODEL.image_size, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, size=(EXAMPLES, MODEL.image_size, MODEL.image_size), dtype=np.uint8)
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _deterministic_weights(model):
    # Initial weights from numpy, so every process starts identically whatever device creates the variables.
    rng = np.random.default_rng(1)

    def scale(shape):  # unit-variance activations
        return np.sqrt(3.0 / max(1, np.prod(shape[:-1])))

    model.set_weights([(rng.uniform(-1, 1, w.shape) * scale(w.shape)).astype(np.float32) for w in model.get_weights()])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cpu-replicas", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backup-dir")
    parser.add_argument("--kill-after-epoch", type=int)
    parser.add_argument(
        "--then-split-cpu",
        action="store_true",
        help="after training, ask choose_strategy for 2 CPU replicas; record its error",
    )
    parser.add_argument("--precision", default="none", help="model.mixed_precision, decided inside the scope")
    parser.add_argument(
        "--cpu-bf16",
        choices=("detect", "yes", "no"),
        default="detect",
        help="what this process takes the CPU to have: forces either branch of 'auto' on any CPU",
    )
    parser.add_argument(
        "--bf16-min-speedup",
        type=float,
        help="0 makes the timed step pick bfloat16, a large value float32, whatever this CPU measures",
    )
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu_bf16 != "detect":
        precision.cpu_supports_bf16 = lambda *_: args.cpu_bf16 == "yes"
    if args.bf16_min_speedup is not None:
        precision.BF16_MIN_SPEEDUP = args.bf16_min_speedup
    timed = []  # the real step timing, recorded as it returns
    real_timing = precision.model_step_seconds
    precision.model_step_seconds = lambda *a, **k: timed.append(real_timing(*a, **k)) or timed[-1]

    train_config = TrainConfig(learning_rate=1e-3, cpu_replicas=args.cpu_replicas)
    strategy = choose_strategy(train_config)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    with strategy.scope():
        # Inside the scope: the decision must not depend on the scope it is asked in.
        policy = precision.training_policy(args.precision, MODEL, train_config, strategy)
        model = model_lib.build_model(MODEL, policy, dropout=0)
        _deterministic_weights(model)
        model_lib.compile_model(model, train_config)

    timer = _StepTimer()
    callbacks = [timer]
    if args.backup_dir:
        # BackupAndRestore first: it must save the epoch before the kill callback ends the process.
        callbacks = [tf.keras.callbacks.BackupAndRestore(args.backup_dir), _EpochLog(out / "epochs.txt"), timer]
        if args.kill_after_epoch is not None:
            callbacks.append(_KillAfterEpoch(args.kill_after_epoch))
    history = model.fit(_dataset(), epochs=args.epochs, verbose=0, callbacks=callbacks)

    np.savez(out / f"weights-{task}.npz", *model.get_weights())
    (out / f"result-{task}.json").write_text(
        json.dumps(
            {
                "strategy": type(strategy).__name__,
                "replicas": strategy.num_replicas_in_sync,
                "loss": history.history["loss"],
                "policy": policy,
                "compute_dtype": model.get_layer("block1_conv1").compute_dtype,
                "timed_steps": timed,
                # The first step includes tracing; the rest is the steady-state step time.
                "step_seconds": float(np.median(timer.durations[1:])) if len(timer.durations) > 1 else None,
            }
        )
    )

    if args.then_split_cpu:
        # Devices are initialized by now, so splitting the CPU must fail with an actionable message.
        try:
            choose_strategy(TrainConfig(cpu_replicas=2))
        except RuntimeError as exc:
            (out / "split-error.txt").write_text(str(exc))


if __name__ == "__main__":
    main()

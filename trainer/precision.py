"""Mixed-precision policy for the Trainer: named in the config, or decided once per run on the configured model."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from config.settings import ModelConfig, TrainConfig
from trainer import model as model_lib
from trainer.strategy import is_chief
from transform.features import NUM_CLASSES

log = logging.getLogger(__name__)

# The Keras policies a config value stands for; their order is the code shared between replicas.
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# /proc/cpuinfo flags of CPUs whose oneDNN kernels run bfloat16 natively; elsewhere bf16 is emulated and slower.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# bfloat16 costs precision, so it must earn it: a clear speed-up, above a step's timing noise on a shared machine.
BF16_MIN_SPEEDUP = 1.1


def policy_name(mixed_precision: str) -> str:
    """The Keras policy for a `model.mixed_precision` value other than "auto" ("none" is float32)."""
    if mixed_precision == "auto":
        raise ValueError(
            "model.mixed_precision 'auto' depends on the machine that trains: decide it there with "
            "trainer.precision.training_policy()"
        )
    return "float32" if mixed_precision == "none" else mixed_precision


def training_policy(
    mixed_precision: str, model_config: ModelConfig, train_config: TrainConfig, strategy: tf.distribute.Strategy
) -> str:
    """The Keras policy every replica trains in.

    "auto" is decided on the chief, where training runs (not where the pipeline was compiled), by
    timing the configured model; under MultiWorkerMirroredStrategy the chief's choice reaches the other
    workers through an all-reduce, so every replica computes in the same dtype. Call it on every replica,
    inside or outside the strategy's scope.
    """
    if mixed_precision != "auto":
        return policy_name(mixed_precision)
    decided = decide_auto(model_config, train_config) if is_chief() else None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        decided = _from_chief(strategy, decided)
    log.info("Mixed precision: auto -> %s", decided)
    return decided


def decide_auto(model_config: ModelConfig, train_config: TrainConfig) -> str:
    """What "auto" stands for on this machine, timing the configured model's step where the hardware leaves a choice."""
    capability = _gpu_capability()
    cpu_bf16 = capability is None and cpu_supports_bf16()
    seconds = model_step_seconds(model_config, train_config) if cpu_bf16 else None
    return auto_policy(capability, cpu_bf16, seconds)


def auto_policy(
    gpu_capability: Optional[Tuple[int, int]], cpu_bf16: bool, step_seconds: Optional[Dict[str, float]]
) -> str:
    """The policy "auto" stands for, given the machine.

    `gpu_capability` is the first GPU's compute capability (None without a GPU), `cpu_bf16` whether
    the CPU has bfloat16 instructions (AVX512_BF16 or AMX), `step_seconds` the configured model's
    training step per compute dtype (`model_step_seconds`), needed only for such a CPU.
    """
    if gpu_capability is not None:
        # float16 tensor cores start at compute capability 7.0; older GPUs get slower, not faster.
        return "mixed_float16" if tuple(gpu_capability) >= (7, 0) else "float32"
    if not cpu_bf16:
        return "float32"  # bf16 is emulated there, several times slower
    if step_seconds is None:
        raise ValueError("a CPU with bfloat16 instructions needs the model's step timed (model_step_seconds)")
    # bf16 instructions alone do not make a model faster (a layer's shape and oneDNN's kernels decide):
    # the configured model's own step does.
    faster = step_seconds["float32"] / step_seconds["bfloat16"] >= BF16_MIN_SPEEDUP
    return "mixed_bfloat16" if faster else "float32"


def model_step_seconds(model_config: ModelConfig, train_config: TrainConfig, repeats: int = 2) -> Dict[str, float]:
    """Best wall seconds of one training step of the configured model, in float32 and in mixed bfloat16.

    The model has the configured widths, image size and frozen layers, at the per-replica batch, so
    the figure is the one training will see. It runs in a thread of its own: a distribution strategy's
    scope is thread-local, so the timed models get plain variables whichever scope the caller is in.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="precision-probe") as pool:
        seconds = pool.submit(_time_steps, model_config, train_config, repeats).result()
    log.info(
        "Training step of the configured model on this CPU: float32 %.0f ms, bfloat16 %.0f ms",
        1e3 * seconds["float32"],
        1e3 * seconds["bfloat16"],
    )
    return seconds


def _time_steps(model_config: ModelConfig, train_config: TrainConfig, repeats: int) -> Dict[str, float]:
    size, batch = model_config.image_size, train_config.batch_size
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, size, size, 3), np.uint8))
    masks = tf.constant(rng.integers(0, NUM_CLASSES, (batch, size, size), np.uint8))
    seconds = {}
    for dtype, policy in (("float32", "float32"), ("bfloat16", "mixed_bfloat16")):
        model = model_lib.compile_model(model_lib.build_model(model_config, policy, load_weights=False), train_config)
        model.train_on_batch(images, masks)  # traces the step
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model.train_on_batch(images, masks)
            best = min(best, time.perf_counter() - start)
        seconds[dtype] = best
        del model
    return seconds


def _from_chief(strategy: tf.distribute.Strategy, decided: Optional[str]) -> str:
    """The chief's policy on every worker: the chief's replicas add a one-hot vote, the others zeros."""
    vote = np.zeros(len(POLICIES), np.float32)
    if decided is not None:
        vote[POLICIES.index(decided)] = 1.0
    votes = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(vote)), axis=None)
    return POLICIES[int(np.argmax(votes.numpy()))]


def _gpu_capability() -> Optional[Tuple[int, int]]:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    # A GPU that does not report it is treated as one without tensor cores.
    return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0)))


def cpu_supports_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)

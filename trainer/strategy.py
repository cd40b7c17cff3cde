"""Distribution strategy and mixed-precision policy for the Trainer, chosen from the machine and TF_CONFIG."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Dict, Optional, Tuple

import tensorflow as tf

from config.settings import TrainConfig

log = logging.getLogger(__name__)

# /proc/cpuinfo flags of CPUs whose oneDNN kernels run bfloat16 natively; elsewhere bf16 is emulated and slower.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def choose_strategy(train_config: TrainConfig) -> tf.distribute.Strategy:
    """Multi-worker if TF_CONFIG names >1 worker, else all local GPUs, else N logical CPUs, else the default.

    Call it before any other TensorFlow work (building a model, creating a dataset): splitting the CPU
    into logical devices and joining a multi-worker cluster are both only possible before TF initializes
    its devices.
    """
    workers = _tf_config_workers()
    if workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log.info("Strategy: MultiWorkerMirroredStrategy, %d workers, %d replicas in sync",
                 workers, strategy.num_replicas_in_sync)
        return strategy
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(len(gpus))])
        log.info("Strategy: MirroredStrategy over %d GPU(s)", len(gpus))
        return strategy
    if train_config.cpu_replicas > 1:
        devices = _split_cpu(train_config.cpu_replicas)
        strategy = tf.distribute.MirroredStrategy(devices)
        log.info("Strategy: MirroredStrategy over %d logical CPU devices", len(devices))
        return strategy
    # The default strategy, not OneDeviceStrategy: Keras' BackupAndRestore (our resume) rejects the latter.
    log.info("Strategy: default (one device)")
    return tf.distribute.get_strategy()


def resolve_mixed_precision(name: str) -> str:
    """Keras policy name for a config value: "auto" picks what this machine computes fastest."""
    if name == "none":
        return "float32"
    if name != "auto":
        return name
    capability = _gpu_capability()
    cpu_bf16 = capability is None and cpu_supports_bf16()
    return auto_policy(capability, cpu_bf16, measured_conv_step() if cpu_bf16 else None)


def auto_policy(gpu_capability: Optional[Tuple[int, int]], cpu_bf16: bool,
                conv_seconds: Optional[Dict[str, float]]) -> str:
    """The policy "auto" stands for, given the machine.

    `gpu_capability` is the first GPU's compute capability (None without a GPU), `cpu_bf16` whether
    the CPU has bfloat16 instructions (AVX512_BF16 or AMX), `conv_seconds` a measured convolution step
    per compute dtype (`conv_step_seconds`), needed only for such a CPU.
    """
    if gpu_capability is not None:
        # float16 tensor cores start at compute capability 7.0; older GPUs get slower, not faster.
        return "mixed_float16" if tuple(gpu_capability) >= (7, 0) else "float32"
    if not cpu_bf16:
        return "float32"  # bf16 is emulated there, several times slower
    if conv_seconds is None:
        raise ValueError("a CPU with bfloat16 instructions needs a measured convolution step (conv_step_seconds)")
    # bf16 instructions alone do not make bf16 faster (small layers, oneDNN build): the timing decides.
    return "mixed_bfloat16" if conv_seconds["bfloat16"] < conv_seconds["float32"] else "float32"


def _gpu_capability() -> Optional[Tuple[int, int]]:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    # A GPU that does not report it is treated as one without tensor cores.
    return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0)))


@functools.lru_cache(maxsize=None)
def measured_conv_step() -> Dict[str, float]:
    """`conv_step_seconds()` once per process, logged."""
    seconds = conv_step_seconds()
    log.info("Convolution step on this CPU: float32 %.1f ms, bfloat16 %.1f ms",
             1e3 * seconds["float32"], 1e3 * seconds["bfloat16"])
    return seconds


def conv_step_seconds(repeats: int = 5) -> Dict[str, float]:
    """Best wall seconds of one forward + backward pass of two 3x3 convolutions, per compute dtype.

    About a second on a CPU: VGG16 is 3x3 convolutions throughout, so this is the op that decides.
    """
    seconds = {}
    for name in ("float32", "bfloat16"):
        dtype = tf.as_dtype(name)
        images = tf.random.stateless_uniform([8, 64, 64, 32], seed=[0, 1], dtype=tf.float32)
        kernels = [tf.Variable(tf.random.stateless_normal([3, 3, 32, 32], seed=[i, 2]) * 0.1) for i in range(2)]

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                x = tf.cast(images, dtype)
                for kernel in kernels:
                    x = tf.nn.relu(tf.nn.conv2d(x, tf.cast(kernel, dtype), 1, "SAME"))
                loss = tf.reduce_sum(tf.cast(x, tf.float32))
            return tape.gradient(loss, kernels)

        step()  # trace
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            [g.numpy() for g in step()]
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
    return seconds


def set_mixed_precision(name: str) -> str:
    """Sets the global Keras policy for `name` (see resolve_mixed_precision) and returns the policy name."""
    policy = resolve_mixed_precision(name)
    tf.keras.mixed_precision.set_global_policy(policy)
    log.info("Mixed precision: %r -> policy %s", name, policy)
    return policy


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
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def _tf_config_workers(tf_config: Optional[str] = None) -> int:
    """Chief plus workers named in TF_CONFIG (0 when unset); MultiWorkerMirroredStrategy refuses other jobs."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except ValueError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def _split_cpu(replicas: int) -> list:
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != replicas:
        try:
            tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError as exc:
            raise RuntimeError(
                f"Cannot split the CPU into {replicas} logical devices: TensorFlow already initialized its "
                "devices in this process (some TF op, model or dataset was created first). Call "
                "trainer.strategy.choose_strategy() before any other TensorFlow work, or set "
                "train.cpu_replicas=1.") from exc
    return [f"/cpu:{i}" for i in range(replicas)]

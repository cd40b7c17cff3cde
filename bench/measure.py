"""Timing, peak-FLOP/s, analytic FLOP and memory helpers shared by every benchmark stage."""

from __future__ import annotations

import os
import resource
import time
from typing import Callable, Dict, List

import numpy as np
import tensorflow as tf


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` calls: on a shared machine the minimum is the least disturbed run."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def latencies_ms(fn: Callable[[], object], calls: int) -> Dict[str, float]:
    """p50 / p99 / mean of `calls` sequential calls, in milliseconds."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(np.mean(times)),
    }


def matmul_flops_per_second(dtype: tf.DType, size: int = 2048, repeats: int = 5, chain: int = 4) -> float:
    """Dense [size, size] matmul FLOP/s on the default device: the peak MFU divides by."""
    a = tf.random.uniform([size, size], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)

    @tf.function
    def run():
        # A chain of independent matmuls amortises the Python call; the sum keeps all of them live.
        return tf.add_n([tf.reduce_sum(tf.matmul(a + tf.cast(i, dtype), b)) for i in range(chain)])

    run().numpy()  # trace and warm up
    seconds = best_seconds(lambda: run().numpy(), repeats)
    return 2.0 * size**3 * chain / seconds


def conv_macs(model: tf.keras.Model) -> Dict[str, int]:
    """Multiply-accumulates per image of every convolution, by layer name (dense layers count too).

    Conv2D: output pixels x kernel area x in x out channels. Conv2DTranspose scatters each *input*
    pixel through the whole kernel, so it counts input pixels. Pooling, ReLU, adds and the loss are
    elementwise and left out (well under 1% here).
    """
    macs = {}
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2DTranspose):
            _, h, w, cin = layer.input.shape
            kh, kw = layer.kernel_size
            macs[layer.name] = h * w * kh * kw * cin * layer.filters
        elif isinstance(layer, tf.keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw = layer.kernel_size
            macs[layer.name] = h * w * kh * kw * layer.input.shape[-1] * cout
        elif isinstance(layer, tf.keras.layers.Dense):
            macs[layer.name] = int(np.prod(layer.output.shape[1:-1] or [1])) * layer.input.shape[-1] * layer.units
    return macs


def training_flops_per_image(model: tf.keras.Model) -> float:
    """Analytic FLOPs of one training step per image: 2 FLOPs per MAC, x3 for a trainable layer
    (forward, gradient w.r.t. inputs, gradient w.r.t. weights), x1 for a frozen layer (forward only:
    frozen layers are the pretrained encoder, upstream of every trainable one, so nothing flows back)."""
    macs = conv_macs(model)
    return float(sum(2 * n * (3 if model.get_layer(name).trainable else 1) for name, n in macs.items()))


def inference_flops_per_image(model: tf.keras.Model) -> float:
    return float(2 * sum(conv_macs(model).values()))


def peak_rss_mb() -> float:
    """Peak resident memory of this process, which ran the Trainer's model, Transform and Evaluator.

    Not RUSAGE_CHILDREN: a forked child starts with the parent's pages resident, so its peak is never
    below ours and says nothing about the pipeline runs.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# /proc/cpuinfo flags that decide the dense and bf16 limits: AVX-512 FMA, int8 VNNI, native bf16, AMX tiles.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu() -> Dict[str, object]:
    """The CPU's model name and which of CPU_FLAGS it reports."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}}


def machine() -> Dict[str, object]:
    """What the figures were measured on, including how busy the machine was."""
    from trainer.precision import cpu_supports_bf16

    return {
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        **cpu(),
        "avx512_bf16": cpu_supports_bf16(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux)"),
    }


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else float("nan")


def round_all(values: Dict[str, object], digits: int = 2) -> Dict[str, object]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def stack_batches(dataset: tf.data.Dataset, batches: int) -> List[tuple]:
    """The first `batches` elements of `dataset` as eager tensors held in memory."""
    return [tuple(tf.identity(t) for t in element) for element in dataset.take(batches)]

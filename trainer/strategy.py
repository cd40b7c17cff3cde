"""Distribution strategy for the Trainer, chosen from the machine and TF_CONFIG, and each process's role in it."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import tensorflow as tf

from config.settings import TrainConfig

log = logging.getLogger(__name__)


def choose_strategy(train_config: TrainConfig) -> tf.distribute.Strategy:
    """Multi-worker if TF_CONFIG names >1 worker, else all local GPUs, else N logical CPUs, else the default.

    Call it before any other TensorFlow work (building a model, creating a dataset): splitting the CPU
    into logical devices and joining a multi-worker cluster are both only possible before TF initializes
    its devices.
    """
    workers = _tf_config_workers()
    if workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log.info(
            "Strategy: MultiWorkerMirroredStrategy, %d workers, %d replicas in sync",
            workers,
            strategy.num_replicas_in_sync,
        )
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


def is_chief() -> bool:
    """Single-process training, the `chief` task, or worker 0 of a cluster without one (TF's own rule)."""
    tf_config = _tf_config()
    task = tf_config.get("task")
    if not task or task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in tf_config.get("cluster", {})


def _tf_config_workers(tf_config: Optional[str] = None) -> int:
    """Chief plus workers named in TF_CONFIG (0 when unset); MultiWorkerMirroredStrategy refuses other jobs."""
    cluster = _tf_config(tf_config).get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def _tf_config(raw: Optional[str] = None) -> dict:
    """TF_CONFIG (or `raw`) parsed; {} when unset."""
    raw = os.environ.get("TF_CONFIG", "") if raw is None else raw
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc


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
                "train.cpu_replicas=1."
            ) from exc
    return [f"/cpu:{i}" for i in range(replicas)]

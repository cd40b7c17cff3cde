"""A Flink run's Transform and Evaluator outputs against the same executors on DirectRunner, same inputs."""

from __future__ import annotations

import math
import os
import pathlib
from typing import Dict, Iterable, List

import tensorflow as tf

from config import names
from bench import stages
from config.profiles import load_config
from report import metrics
from report.artifacts import RunArtifacts
from report.example_records import tfrecords


def _canonical(files: List[str]) -> List[tuple]:
    """Every example as sorted (feature, values) pairs: proto map order is not part of the data."""
    out = []
    for record in tfrecords(files):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        out.append(tuple(sorted((k, f.SerializeToString(deterministic=True)) for k, f in features.items())))
    return sorted(out)


def _split_files(uri: str) -> Dict[str, List[str]]:
    return {p.name: sorted(str(f) for f in p.iterdir()) for p in sorted(pathlib.Path(uri).glob("Split-*"))}


def _flatten(metrics, prefix="") -> Dict[str, float]:
    flat = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def compare_with_direct(output: pathlib.Path, work: str, overrides: Iterable[str] = ()) -> Dict[str, object]:
    """Reruns Transform and Evaluator of the Flink run in `output` on DirectRunner; returns the differences.

    `overrides` are the run's own `key=value` settings other than `beam.*`, so both build the same executors.
    """
    config = load_config("tiny", overrides=[*overrides, f"output={output}"])  # beam.runner=direct
    run = RunArtifacts(config.metadata_path, config.name)
    by_id, beam_args = stages.components(config)
    assert beam_args == []
    examples, schema = run.get(names.EXAMPLE_GEN_ID, "examples"), run.get(names.SCHEMA_GEN_ID, "schema")

    direct_transform = os.path.join(work, "transform")
    stages.run_executor(
        by_id[names.TRANSFORM_ID], {"examples": [examples], "schema": [schema]}, direct_transform, beam_args
    )
    flink_splits = _split_files(run.get(names.TRANSFORM_ID, "transformed_examples").uri)
    direct_splits = _split_files(os.path.join(direct_transform, "transformed_examples"))
    flink_rows = {s: _canonical(f) for s, f in flink_splits.items()}
    direct_rows = {s: _canonical(f) for s, f in direct_splits.items()}

    direct_eval = os.path.join(work, "evaluator")
    stages.run_executor(
        by_id[names.EVALUATOR_ID],
        {"examples": [examples], "model": [run.get(names.TRAINER_ID, "model")]},
        direct_eval,
        beam_args,
    )
    flink_metrics = _flatten(metrics.load_metrics(run.get(names.EVALUATOR_ID, "evaluation").uri))
    direct_metrics = _flatten(metrics.load_metrics(os.path.join(direct_eval, "evaluation")))
    diffs = [
        abs(flink_metrics[k] - direct_metrics[k])
        for k in flink_metrics
        if not (math.isnan(flink_metrics[k]) and math.isnan(direct_metrics.get(k, math.nan)))
    ]
    return {
        "transformed_examples": {
            "flink": sum(len(r) for r in flink_rows.values()),
            "direct": sum(len(r) for r in direct_rows.values()),
            "splits": sorted(flink_rows),
            "identical": flink_rows == direct_rows,
        },
        "metrics": {
            "keys": len(flink_metrics),
            "same_keys": set(flink_metrics) == set(direct_metrics),
            "max_abs_diff": max(diffs) if diffs and set(flink_metrics) == set(direct_metrics) else math.inf,
            "mean_iou": {
                "flink": flink_metrics.get("overall.mean_iou"),
                "direct": direct_metrics.get("overall.mean_iou"),
            },
        },
    }

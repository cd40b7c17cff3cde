"""Every pipeline run, oldest first: spans, drift, scores, verdict and push; from a run folder's MLMD (local runs) or
from the run folders under a Kubeflow pipeline root (whose metadata store lives in the cluster)."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from typing import Any, Dict, List, Optional, Tuple

from ml_metadata.proto import metadata_store_pb2
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.compiler import constants
from tfx.types import Artifact

from components import drift
from components.example_gen import WINDOW_SPLIT_PREFIX
from components.pusher import PUSHED_TO_FILE
from config import names
from report import metrics
from report.artifacts import RunArtifacts

Execution = metadata_store_pb2.Execution
_FINISHED = (Execution.COMPLETE, Execution.CACHED)
_FAILED = (Execution.FAILED, Execution.CANCELED)
# What a run's row says about how it ended.
COMPLETED, STOPPED_BY_DRIFT, RUNNING = "completed", "stopped by drift", "incomplete"
# A span window's older train splits, as TfdsExampleGen's output folders name them.
_WINDOW_SPLIT = f"Split-{WINDOW_SPLIT_PREFIX}"


def _custom(artifact: Optional[Artifact], name: str) -> Any:
    properties = artifact.mlmd_artifact.custom_properties if artifact is not None else {}
    if name not in properties:
        return None
    return getattr(properties[name], properties[name].WhichOneof("value"))


def run_history(metadata_path: str, pipeline_name: str) -> List[Dict[str, Any]]:
    """One row per pipeline run of `pipeline_name`, oldest first (see `_row`); [] without a store."""
    if not pathlib.Path(metadata_path).exists():
        return []
    mlmd = RunArtifacts(metadata_path, pipeline_name)
    prefix = f"{pipeline_name}."
    node_of: Dict[int, str] = {}
    for context in mlmd.contexts(constants.NODE_CONTEXT_TYPE_NAME):
        if context.name.startswith(prefix):
            for execution in mlmd.store.get_executions_by_context(context.id):
                node_of[execution.id] = context.name[len(prefix) :]
    runs = []
    for context in mlmd.contexts(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME):
        executions = [e for e in mlmd.store.get_executions_by_context(context.id) if e.id in node_of]
        if executions:
            runs.append((min(e.create_time_since_epoch for e in executions), context.name, executions))
    return [_row(mlmd, run_id, started, executions, node_of) for started, run_id, executions in sorted(runs)]


def _row(
    mlmd: RunArtifacts, run_id: str, started: int, executions: List[Execution], node_of: Dict[int, str]
) -> Dict[str, Any]:
    """run, date, spans, drift verdict, candidate and baseline mean IoU, blessed, pushed version, status, and the
    Evaluator's output."""
    latest: Dict[str, Execution] = {}
    for execution in sorted(executions, key=lambda e: e.id):
        latest[node_of[execution.id]] = execution

    def output(node: str, key: str) -> Optional[Artifact]:
        execution = latest.get(node)
        if execution is None or execution.last_known_state not in _FINISHED:
            return None
        return next(iter(mlmd.outputs_of(execution, key)), None)

    examples = output(names.EXAMPLE_GEN_ID, "examples")
    window = json.loads(_custom(examples, "spans") or "[]")
    spans = [entry["span"] for entry in window] or ([_custom(examples, "span")] if examples else [])
    anomalies = output(names.DRIFT_VALIDATOR_ID, "anomalies")
    verdict = _drift_verdict(anomalies) if anomalies else None
    evaluation = output(names.EVALUATOR_ID, "evaluation")
    candidate, baseline = _mean_ious(evaluation.uri if evaluation is not None else None)
    pushed = output(names.PUSHER_ID, "pushed_model")
    failed = sorted((e.id, node) for node, e in latest.items() if e.last_known_state in _FAILED)
    if failed:
        status = STOPPED_BY_DRIFT if failed[0][1] == names.DRIFT_GATE_ID else f"failed at {failed[0][1]}"
    else:
        status = COMPLETED if pushed is not None else RUNNING
    return {
        "run": run_id,
        "started": datetime.datetime.fromtimestamp(started / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "spans": spans,
        "drift": verdict,
        "candidate_mean_iou": candidate,
        "baseline_mean_iou": baseline,
        "blessed": _custom(output(names.EVALUATOR_ID, "blessing"), "blessed") == 1 if evaluation else None,
        "pushed_version": _custom(pushed, names.PUSHED_VERSION) if _custom(pushed, names.PUSHED) == 1 else None,
        "status": status,
        "evaluation": evaluation.uri if evaluation is not None else None,
    }


def _drift_verdict(anomalies: Artifact) -> Optional[str]:
    try:
        return drift.load_report(anomalies)["verdict"]
    except FileNotFoundError:
        return None


def _mean_ious(evaluation_uri: Optional[str]) -> Tuple[Optional[float], Optional[float]]:
    """The candidate's and the baseline's overall mean IoU in an Evaluator output; (None, None) without one."""
    if evaluation_uri is None:
        return None, None
    baseline = metrics.load_baseline_metrics(evaluation_uri)
    return (
        metrics.load_metrics(evaluation_uri)[metrics.OVERALL].get("mean_iou"),
        baseline[metrics.OVERALL].get("mean_iou") if baseline else None,
    )


def folder_history(runs_dir: str) -> List[Dict[str, Any]]:
    """`run_history`'s rows for the run folders under `runs_dir`, oldest first, read from the artifacts alone.

    `runs_dir` holds one folder per run: `<pipeline root>/<pipeline name>` on open-source Kubeflow Pipelines
    (tasks at `<run>/<task>/<execution>/<output>`), `<pipeline root>/<project number>` on Vertex
    (`<run>/<task>_<execution>/<output>`); gs:// or any tf.io.gfile path. A task KFP served from its cache
    writes no folder in that run, so its columns stay empty there.
    """
    import tensorflow as tf

    rows = []
    for name in sorted(tf.io.gfile.listdir(runs_dir)):
        run = os.path.join(runs_dir, name.rstrip("/"))
        if tf.io.gfile.isdir(run):
            row = _folder_row(run, name.rstrip("/"))
            if row is not None:
                rows.append(row)
    return sorted(rows, key=lambda row: row["started"])


def _output(run: str, task: str, key: str, *path: str) -> Optional[str]:
    import tensorflow as tf

    for pattern in (f"{run}/{task}/*/{key}", f"{run}/{task}_*/{key}", f"{run}/{task}/{key}"):
        found = sorted(tf.io.gfile.glob(os.path.join(pattern, *path)))
        if found:
            return found[-1]
    return None


def _folder_row(run: str, run_id: str) -> Optional[Dict[str, Any]]:
    import tensorflow as tf

    examples = _output(run, names.EXAMPLE_GEN_ID, "examples")
    report_file = _output(run, names.DRIFT_VALIDATOR_ID, "anomalies", drift.REPORT_FILE)
    if examples is None and report_file is None:
        return None  # not a run of this pipeline
    report = json.loads(tf.io.gfile.GFile(report_file).read()) if report_file else {}
    # The newest span is the one drift was measured on; a window's older spans are its train_span_<N> splits.
    older = (
        sorted(
            int(os.path.basename(p.rstrip("/"))[len(_WINDOW_SPLIT) :])
            for p in tf.io.gfile.glob(f"{examples}/{_WINDOW_SPLIT}*")
        )
        if examples
        else []
    )
    spans = older + ([report["span"]] if "span" in report else [])
    evaluation = _output(run, names.EVALUATOR_ID, "evaluation")
    candidate, baseline = _mean_ious(evaluation)
    blessing = _output(run, names.EVALUATOR_ID, "blessing")
    pushed_to = _output(run, names.PUSHER_ID, "pushed_model", PUSHED_TO_FILE)
    first_records = sorted(tf.io.gfile.glob(f"{examples}/Split-train/*"))[:1] if examples else []
    stamps = [tf.io.gfile.stat(f).mtime_nsec for f in [*first_records, report_file, pushed_to] if f] or [0]
    blessed = tf.io.gfile.exists(os.path.join(blessing, evaluator_constants.BLESSED_FILE_NAME)) if blessing else None
    if pushed_to or blessed is False:
        status = COMPLETED
    elif report.get("verdict") == drift.DRIFTED and _output(run, names.TRANSFORM_ID, "transform_graph") is None:
        status = STOPPED_BY_DRIFT
    else:
        status = RUNNING
    return {
        "run": run_id,
        "started": datetime.datetime.fromtimestamp(min(stamps) / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "spans": spans,
        "drift": report.get("verdict"),
        "candidate_mean_iou": candidate,
        "baseline_mean_iou": baseline,
        "blessed": blessed,
        "pushed_version": os.path.basename(tf.io.gfile.GFile(pushed_to).read().strip()) if pushed_to else None,
        "status": status,
        "evaluation": evaluation,
    }

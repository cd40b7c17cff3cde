"""Every pipeline run an output folder's MLMD records, oldest first: spans, drift, scores, verdict and push."""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any, Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.compiler import constants

from components import drift
from config import names
from report import metrics

Execution = metadata_store_pb2.Execution
_FINISHED = (Execution.COMPLETE, Execution.CACHED)
_FAILED = (Execution.FAILED, Execution.CANCELED)
# What a run's row says about how it ended.
COMPLETED, STOPPED_BY_DRIFT, RUNNING = "completed", "stopped by drift", "incomplete"


class _Store:
    """The public MetadataStore API, read-only, over one run folder's metadata.sqlite."""

    def __init__(self, metadata_path: str):
        connection = metadata_store_pb2.ConnectionConfig()
        connection.sqlite.filename_uri = metadata_path
        connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        self.store = metadata_store.MetadataStore(connection)

    def contexts(self, type_name: str) -> List[metadata_store_pb2.Context]:
        return list(self.store.get_contexts_by_type(type_name))

    def outputs(self, execution: Execution, key: str) -> List[metadata_store_pb2.Artifact]:
        events = self.store.get_events_by_execution_ids([execution.id])
        ids = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT
               and e.path.steps and e.path.steps[0].key == key]
        return list(self.store.get_artifacts_by_id(ids)) if ids else []


def _custom(artifact: Optional[metadata_store_pb2.Artifact], name: str) -> Any:
    if artifact is None or name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    return getattr(value, value.WhichOneof("value"))


def run_history(metadata_path: str, pipeline_name: str) -> List[Dict[str, Any]]:
    """One row per pipeline run of `pipeline_name`, oldest first (see `_row`); [] without a store."""
    if not pathlib.Path(metadata_path).exists():
        return []
    mlmd = _Store(metadata_path)
    prefix = f"{pipeline_name}."
    node_of: Dict[int, str] = {}
    for context in mlmd.contexts(constants.NODE_CONTEXT_TYPE_NAME):
        if context.name.startswith(prefix):
            for execution in mlmd.store.get_executions_by_context(context.id):
                node_of[execution.id] = context.name[len(prefix):]
    runs = []
    for context in mlmd.contexts(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME):
        executions = [e for e in mlmd.store.get_executions_by_context(context.id) if e.id in node_of]
        if executions:
            runs.append((min(e.create_time_since_epoch for e in executions), context.name, executions))
    return [_row(mlmd, run_id, started, executions, node_of) for started, run_id, executions in sorted(runs)]


def _row(mlmd: _Store, run_id: str, started: int, executions: List[Execution],
         node_of: Dict[int, str]) -> Dict[str, Any]:
    """run, date, spans, drift verdict, candidate and baseline mean IoU, blessed, pushed version, status, and the
    Evaluator's output."""
    latest: Dict[str, Execution] = {}
    for execution in sorted(executions, key=lambda e: e.id):
        latest[node_of[execution.id]] = execution

    def output(node: str, key: str) -> Optional[metadata_store_pb2.Artifact]:
        execution = latest.get(node)
        if execution is None or execution.last_known_state not in _FINISHED:
            return None
        return next(iter(mlmd.outputs(execution, key)), None)

    examples = output(names.EXAMPLE_GEN_ID, "examples")
    window = json.loads(_custom(examples, "spans") or "[]")
    spans = [entry["span"] for entry in window] or ([_custom(examples, "span")] if examples else [])
    anomalies = output(names.DRIFT_VALIDATOR_ID, "anomalies")
    verdict = _drift_verdict(anomalies.uri) if anomalies else None
    evaluation = output(names.EVALUATOR_ID, "evaluation")
    candidate = baseline = None
    if evaluation is not None:
        candidate = metrics.load_metrics(evaluation.uri)[metrics.OVERALL].get("mean_iou")
        found = metrics.load_baseline_metrics(evaluation.uri)
        baseline = found[metrics.OVERALL].get("mean_iou") if found else None
    pushed = output(names.PUSHER_ID, "pushed_model")
    failed = sorted((e.id, node) for node, e in latest.items() if e.last_known_state in _FAILED)
    if failed:
        status = STOPPED_BY_DRIFT if failed[0][1] == names.DRIFT_GATE_ID else f"failed at {failed[0][1]}"
    else:
        status = COMPLETED if output(names.PUSHER_ID, "pushed_model") is not None else RUNNING
    return {
        "run": run_id,
        "started": datetime.datetime.fromtimestamp(started / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "spans": spans,
        "drift": verdict,
        "candidate_mean_iou": candidate,
        "baseline_mean_iou": baseline,
        "blessed": _custom(output(names.EVALUATOR_ID, "blessing"), "blessed") == 1 if evaluation else None,
        "pushed_version": _custom(pushed, "pushed_version") if _custom(pushed, "pushed") == 1 else None,
        "status": status,
        "evaluation": evaluation.uri if evaluation is not None else None,
    }


def _drift_verdict(anomalies_uri: str) -> Optional[str]:
    path = pathlib.Path(anomalies_uri) / drift.REPORT_FILE
    return json.loads(path.read_text())["verdict"] if path.exists() else None

"""`<output>/summary.json` of a finished run: what MLMD says each component produced, the metrics and a table."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, Optional, TextIO

import numpy as np

from components import drift
from config import names
from config.settings import PipelineConfig
from report import images, metrics
from report.artifacts import RunArtifacts
from report.scores import undefined
from transform.features import CLASS_NAMES

SUMMARY_FILE = "summary.json"


def _prop(artifact, name: str) -> Any:
    """The artifact's custom property, None when the artifact or the property is absent."""
    return artifact.get_custom_property(name) if artifact is not None else None


def build_summary(config: PipelineConfig, run: RunArtifacts, stopped: Optional[str] = None) -> Dict[str, Any]:
    """The latest pipeline run's summary; `stopped` is why it ended early (it then has no later nodes' outputs)."""
    run_id = run.latest_run_id()

    def one(node: str, key: str):
        return run.one(node, key, run_id) if run_id else None

    examples = one(names.EXAMPLE_GEN_ID, "examples")
    data_dir = _prop(examples, "tfds_data_dir") or config.tfds_data_dir
    evaluation = one(names.EVALUATOR_ID, "evaluation")
    blessing = one(names.EVALUATOR_ID, "blessing")
    pushed = one(names.PUSHER_ID, "pushed_model")
    model, model_run = one(names.TRAINER_ID, "model"), one(names.TRAINER_ID, "model_run")
    anomalies = one(names.DRIFT_VALIDATOR_ID, "anomalies")

    found = metrics.load_metrics(evaluation.uri, metrics.load_breed_names(data_dir)) if evaluation else None
    baseline = metrics.load_baseline_metrics(evaluation.uri) if evaluation else None
    pushed_dir = _prop(pushed, names.PUSHED_DESTINATION) if _prop(pushed, names.PUSHED) == 1 else None
    return {
        "profile": config.profile,
        "dataset": {
            "name": _prop(examples, "tfds_name"),
            "version": _prop(examples, "tfds_version"),
            "source": _prop(examples, "source"),
            "data_dir": data_dir,
            "examples": {"train": _prop(examples, "num_train"), "eval": _prop(examples, "num_eval")},
            # The newest span (0 without a {SPAN} pattern) and the window trained on, oldest first.
            "span": _prop(examples, "span"),
            "spans": json.loads(_prop(examples, "spans") or "[]"),
            "skipped": json.loads(_prop(examples, "skipped") or "{}"),
            # Kept, but re-encoded (e.g. TIFF named .jpg, palette trimaps): worth knowing, not an error.
            "repaired": json.loads(_prop(examples, "repaired") or "{}"),
        },
        # The newest span against the served model's training data (components.drift's report).
        "drift": dict(drift.load_report(anomalies), action=config.drift.action) if anomalies else None,
        "stopped": stopped,
        "metrics": found,
        "blessed": _prop(blessing, "blessed") == 1,
        # The gate judges the baseline on the overall slice only, so that is what the summary keeps.
        "baseline": baseline[metrics.OVERALL] if baseline else None,
        "pushed_model": str(pathlib.Path(pushed_dir).resolve()) if pushed_dir else None,
        "serving_versions": sorted(p.name for p in pathlib.Path(config.serving_dir).glob("[0-9]*")),
        "components": run.component_times(),
        "report": str(pathlib.Path(config.report_dir).resolve()),
        "model": model.uri if model else None,
        "model_run": model_run.uri if model_run else None,
        "eval_examples": examples.uri + "/Split-eval" if examples else None,
    }


# Console table columns: (header, metric key as report.metrics.metric_value reads it).
_TABLE = (
    [("mIoU", "mean_iou")]
    + [(c[:6], f"iou/{c}") for c in CLASS_NAMES]
    + [("mDice", "mean_dice"), ("acc", "pixel_accuracy")]
)


def _row(name: str, m: Dict[str, Any]) -> str:
    values = (metrics.metric_value(m, key) for _, key in _TABLE)
    return " ".join([f"{name:<34}"] + ["   -  " if undefined(v) else f"{v:6.3f}" for v in values])


def drift_line(block: Optional[Dict[str, Any]]) -> Optional[str]:
    """One line saying what the drift gate found, or None when the run has no drift check."""
    if not block:
        return None
    if block["verdict"] == drift.NO_BASELINE:
        return "drift: no baseline (no served model with training statistics yet)"
    against = f"against version {block['baseline_version']} (span {block['baseline_span']})"
    if block["verdict"] == drift.PASSED:
        return f"drift: passed {against}"
    found = ", ".join(
        f"{row['feature']} {row['value'] if row['value'] is None else round(row['value'], 4)} "
        f"(threshold {row['threshold']:g})"
        for row in block["features"]
        if row["drifted"]
    )
    return f"drift: DRIFTED {against}: {found}"


def print_summary(summary: Dict[str, Any], stream: TextIO) -> None:
    """A readable table of the overall and per-slice metrics and the verdict."""
    lines = []
    if summary["metrics"]:
        lines.append(" ".join([f"{'slice':<34}"] + [f"{header:>6}" for header, _ in _TABLE]))
        lines.append(_row(metrics.OVERALL, summary["metrics"][metrics.OVERALL]))
        for name, m in sorted(summary["metrics"]["slices"].items()):
            lines.append(_row(name, m))
    drifted = drift_line(summary.get("drift"))
    if drifted:
        lines.append(drifted)
    if summary.get("stopped"):
        lines.append(f"stopped by {summary['stopped']}: nothing was trained or pushed")
    else:
        baseline = summary["baseline"]
        baseline_text = f"{baseline['mean_iou']:.3f}" if baseline else "none (first model)"
        lines.append(f"blessed: {summary['blessed']}   baseline mean IoU: {baseline_text}")
        lines.append(f"pushed model: {summary['pushed_model'] or 'nothing pushed'}")
    slow = ", ".join(
        f"{k} {v['seconds']:.0f}s{' (cached)' if v['cached'] else ''}"
        for k, v in summary["components"].items()
        if v.get("seconds") is not None
    )
    lines.append(f"components: {slow}")
    print("\n".join(lines), file=stream, flush=True)


def _json_safe(value: Any) -> Any:
    """NaN (an absent class) becomes null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def read_summary(output_dir: str) -> Optional[Dict[str, Any]]:
    """The run's summary.json, or None when there is none (or it was damaged by hand)."""
    try:
        return json.loads((pathlib.Path(output_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def finish_run(config: PipelineConfig, stream: TextIO, stopped: Optional[str] = None) -> Dict[str, Any]:
    """Writes `<output>/summary.json` and the report images, prints the table; returns the summary.

    `stopped` names the gate that ended the run early: the summary then says so, and has no model.
    """
    with RunArtifacts(config.metadata_path, config.name) as run:
        summary = build_summary(config, run, stopped)
    path = config.output_dir / SUMMARY_FILE
    model_dir = summary["pushed_model"] or (summary["model"] and summary["model"] + "/Format-Serving")
    if model_dir and summary["eval_examples"]:
        source = {"model": model_dir, "examples": summary["eval_examples"], "count": config.eval.report_images}
        previous = read_summary(str(config.output_dir)) or {}
        if previous.get("report_images_source") == source and all(
            pathlib.Path(p).exists() for p in previous.get("report_images", [])
        ):
            # Artifacts are immutable, so the same model on the same examples draws the same PNGs;
            # skipping the model load keeps an unchanged re-run short.
            summary["report_images"] = previous["report_images"]
        else:
            summary["report_images"] = images.write_report_images(
                model_dir, summary["eval_examples"], config.report_dir, config.eval.report_images
            )
        summary["report_images_source"] = source
    else:
        summary["report_images"] = []  # earlier runs' PNGs in report/ are not this run's
    path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    print_summary(summary, stream)
    print(f"[petseg] summary: {path}\n[petseg] report: {summary['report']}", file=stream, flush=True)
    return summary

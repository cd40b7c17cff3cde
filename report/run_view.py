"""One `petseg run` output read into plain python: summary.json, the TFMA evaluation, the Trainer's history."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Dict, List, Optional

from config import names
from config.settings import PipelineConfig
from report import metrics, summary as summary_lib
from report.artifacts import RunArtifacts
from report.history import run_history
from report.training_history import training_history


@dataclasses.dataclass
class RunView:
    """Everything the dashboard and the notebook show of one run, as plain python (NaN = undefined metric)."""

    run_dir: str
    summary: Dict[str, Any]
    evaluation_uri: Optional[str]
    metrics: Optional[Dict[str, Any]]
    baseline: Optional[Dict[str, Any]]
    blessed: bool
    thresholds: Dict[str, Optional[float]]
    failures: List[str]
    history: Dict[str, List[float]]
    images: List[str]
    # Every run of this output folder's MLMD, oldest first (report.history.run_history).
    runs: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


def run_layout(run_dir: str, pipeline_name: str = PipelineConfig.name) -> PipelineConfig:
    """Where a run's files are: the run's own config type places metadata.sqlite and report/ under its output."""
    return PipelineConfig(name=pipeline_name, output=run_dir)


def find_evaluation(run_dir: str, pipeline_name: str = PipelineConfig.name) -> Optional[str]:
    """The Evaluator's output in the latest pipeline run's MLMD (a cached rerun reuses an earlier one); None
    when that run has none (it stopped before the Evaluator)."""
    path = pathlib.Path(run_layout(run_dir, pipeline_name).metadata_path)
    if not path.exists():
        return None
    with RunArtifacts(str(path), pipeline_name) as run:
        run_id = run.latest_run_id()
        artifact = run.one(names.EVALUATOR_ID, "evaluation", run_id) if run_id else None
    return artifact.uri if artifact else None


def load_eval_result(run_dir: str, pipeline_name: str = PipelineConfig.name):
    """The candidate model's `tfma.EvalResult`, for `tfma.view.render_*` in a notebook."""
    import tensorflow_model_analysis as tfma

    uri = find_evaluation(run_dir, pipeline_name)
    if uri is None:
        raise FileNotFoundError(f"{run_dir}: no Evaluator output in this run's metadata.sqlite")
    return tfma.load_eval_result(uri, model_name=metrics.model_name(uri))


def pushed_eval_results(run_dir: str, pipeline_name: str = PipelineConfig.name):
    """The evaluation that blessed each model pushed from this folder, oldest first, as a model-centric
    `tfma.EvalResults` for `tfma.view.render_time_series` (each scored on its own run's newest span)."""
    import tensorflow_model_analysis as tfma

    layout = run_layout(run_dir, pipeline_name)
    results, seen = [], set()
    for row in run_history(layout.metadata_path, pipeline_name):
        if row["pushed_version"] and row["pushed_version"] not in seen:  # a rerun handed the same model is no new push
            seen.add(row["pushed_version"])
            uri = row["evaluation"]
            results.append(tfma.load_eval_result(uri, model_name=metrics.model_name(uri)))
    return tfma.make_eval_results(results, tfma.constants.MODEL_CENTRIC_MODE)


def load_run(run_dir: str, pipeline_name: str = PipelineConfig.name) -> RunView:
    """Reads summary.json, the TFMA evaluation and the Trainer's history of one `petseg run` output."""
    layout = run_layout(run_dir, pipeline_name)
    root = layout.output_dir
    summary = summary_lib.read_summary(str(root))
    if summary is None:
        raise FileNotFoundError(f"{root}: no readable summary.json (is this a `petseg run --output-dir` folder?)")
    uri = find_evaluation(str(root), pipeline_name)
    found = baseline = None
    thresholds: Dict[str, Optional[float]] = {"min_mean_iou": None, "max_regression": None}
    failures: List[str] = []
    blessed = bool(summary.get("blessed"))
    if uri:
        # TFMA's output keeps NaN for undefined scores, which summary.json can only store as null.
        breeds = metrics.load_breed_names(summary["dataset"]["data_dir"])
        found = metrics.load_metrics(uri, breeds)
        baseline = metrics.load_baseline_metrics(uri, breeds)
        blessed = metrics.is_blessed(uri)
        thresholds = metrics.gate_thresholds(uri)
        failures = metrics.validation_failures(uri)
    # The run's own images; report/ may also hold an earlier run's (a run stopped before training has none).
    pngs = (
        summary["report_images"]
        if "report_images" in summary
        else sorted(str(p) for p in pathlib.Path(layout.report_dir).glob("*.png"))
    )
    return RunView(
        str(root),
        summary,
        uri,
        found or summary.get("metrics"),
        baseline,
        blessed,
        thresholds,
        failures,
        training_history(summary.get("model_run")),
        pngs,
        run_history(layout.metadata_path, pipeline_name),
    )

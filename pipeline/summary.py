"""After a run: read MLMD for what each component produced, write `summary.json`, the report PNGs, a table."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Dict, List, Optional, Sequence, TextIO

import numpy as np
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from pipeline import evaluation
from pipeline.config import PipelineConfig
from transform import features

log = logging.getLogger(__name__)

# Colours of pet / background / border in the report's mask images.
MASK_COLOURS = np.array([[230, 120, 40], [40, 40, 60], [250, 250, 250]], np.uint8)


class RunArtifacts:
    """The output artifacts of each node's latest execution in this pipeline, read from MLMD."""

    def __init__(self, config: PipelineConfig):
        connection = metadata.sqlite_metadata_connection_config(config.metadata_path)
        self.store = metadata_store.MetadataStore(connection)
        self._pipeline = config.name

    def outputs(self, node_id: str, key: str) -> List[metadata_store_pb2.Artifact]:
        context = self.store.get_context_by_type_and_name("node", f"{self._pipeline}.{node_id}")
        if context is None:
            return []
        executions = self.store.get_executions_by_context(context.id)
        if not executions:
            return []
        latest = max(executions, key=lambda e: (e.create_time_since_epoch, e.id))
        ids = [event.artifact_id for event in self.store.get_events_by_execution_ids([latest.id])
               if event.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
               and event.path.steps and event.path.steps[0].key == key]
        return self.store.get_artifacts_by_id(ids)

    def one(self, node_id: str, key: str) -> Optional[metadata_store_pb2.Artifact]:
        found = self.outputs(node_id, key)
        return found[0] if found else None


def _prop(artifact: Optional[metadata_store_pb2.Artifact], name: str) -> Any:
    if artifact is None or name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def breed_names(data_dir: str) -> List[str]:
    """The 37 breed names TFDS ships with the prepared dataset (label ids index this list)."""
    import tensorflow_datasets as tfds

    return tfds.builder("oxford_iiit_pet", data_dir=data_dir).info.features["label"].names


def build_summary(config: PipelineConfig, components: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    run = RunArtifacts(config)
    examples = run.one("TfdsExampleGen", "examples")
    data_dir = _prop(examples, "tfds_data_dir") or config.tfds_data_dir
    names = breed_names(data_dir)
    evaluation_artifact = run.one("Evaluator", "evaluation")
    blessing = run.one("Evaluator", "blessing")
    pushed = run.one("Pusher", "pushed_model")
    model, model_run = run.one("Trainer", "model"), run.one("Trainer", "model_run")

    metrics = evaluation.load_metrics(evaluation_artifact.uri, names) if evaluation_artifact else None
    baseline = evaluation.load_baseline_metrics(evaluation_artifact.uri) if evaluation_artifact else None
    # The baseline is judged on the overall slice only (the gate's slice), so that is what we report.
    baseline = baseline["overall"] if baseline else None
    pushed_dir = _prop(pushed, "pushed_destination") if _prop(pushed, "pushed") == 1 else None
    return {
        "profile": config.profile,
        "dataset": {
            "name": _prop(examples, "tfds_name"),
            "version": _prop(examples, "tfds_version"),
            "source": _prop(examples, "source"),
            "data_dir": data_dir,
            "examples": {"train": _prop(examples, "num_train"), "eval": _prop(examples, "num_eval")},
            "skipped": json.loads(_prop(examples, "skipped") or "{}"),
            # Kept, but re-encoded (e.g. TIFF named .jpg, palette trimaps): worth knowing, not an error.
            "repaired": json.loads(_prop(examples, "repaired") or "{}"),
        },
        "metrics": metrics,
        "blessed": _prop(blessing, "blessed") == 1,
        "baseline": baseline,
        "pushed_model": str(pathlib.Path(pushed_dir).resolve()) if pushed_dir else None,
        "serving_versions": sorted(p.name for p in pathlib.Path(config.serving_dir).glob("[0-9]*")),
        "components": components,
        "report": str(pathlib.Path(config.report_dir).resolve()),
        "model": model.uri if model else None,
        "model_run": model_run.uri if model_run else None,
        "eval_examples": examples.uri + "/Split-eval" if examples else None,
    }


def tfrecords(files: Sequence[str], parallel_reads: Optional[int] = None) -> tf.data.Dataset:
    """Serialized records of Examples files as TFX wrote them (ExampleGen plain, Transform gzip)."""
    return tf.data.TFRecordDataset(list(files), compression_type="GZIP" if files[0].endswith(".gz") else "",
                                   num_parallel_reads=parallel_reads)


def _colour_mask(mask: np.ndarray) -> np.ndarray:
    return MASK_COLOURS[np.clip(mask, 0, len(MASK_COLOURS) - 1)]


def write_report_images(model_dir: str, eval_examples_dir: str, report_dir: str, count: int) -> List[str]:
    """Input | true mask | predicted mask PNGs for the first `count` eval images (the seed's Step 10)."""
    from PIL import Image

    from transform import preprocessing

    out = pathlib.Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    if count <= 0:
        return []
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    dataset = tfrecords(sorted(str(p) for p in pathlib.Path(eval_examples_dir).iterdir()))
    written = []
    for i, record in enumerate(dataset.take(count)):
        example = tf.train.Example.FromString(record.numpy())
        feature = example.features.feature
        image_bytes = feature[features.RAW_IMAGE_KEY].bytes_list.value[0]
        predicted = serve(image_bytes=tf.constant([image_bytes]))["mask"][0].numpy()
        size = predicted.shape[0]
        image = (preprocessing.decode_image(tf.constant(image_bytes), size).numpy() * 255).astype(np.uint8)
        truth = preprocessing.decode_mask(
            tf.constant(feature[features.RAW_MASK_KEY].bytes_list.value[0]), size).numpy()
        panel = np.concatenate([image, _colour_mask(truth), _colour_mask(predicted)], axis=1)
        name = feature[features.FILE_NAME_KEY].bytes_list.value[0].decode().rsplit(".", 1)[0]
        path = out / f"{i:02d}_{name}.png"
        Image.fromarray(panel).resize((panel.shape[1] * 2, panel.shape[0] * 2), Image.NEAREST).save(path)
        written.append(str(path))
    return written


def _row(name: str, m: Dict[str, Any]) -> str:
    def f(x):
        return "   -  " if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:6.3f}"
    return (f"{name:<34} {f(m.get('mean_iou'))} {f(m['iou'].get('pet'))} {f(m['iou'].get('background'))} "
            f"{f(m['iou'].get('border'))} {f(m.get('mean_dice'))} {f(m.get('pixel_accuracy'))}")


def print_summary(summary: Dict[str, Any], stream: TextIO) -> None:
    """A readable table of the overall and per-slice metrics and the verdict."""
    lines = []
    if summary["metrics"]:
        lines.append(f"{'slice':<34} {'mIoU':>6} {'pet':>6} {'bg':>6} {'border':>6} {'mDice':>6} {'acc':>6}")
        lines.append(_row("overall", summary["metrics"]["overall"]))
        for name, m in sorted(summary["metrics"]["slices"].items()):
            lines.append(_row(name, m))
    baseline = summary["baseline"]
    baseline_text = f"{baseline['mean_iou']:.3f}" if baseline else "none (first model)"
    lines.append(f"blessed: {summary['blessed']}   baseline mean IoU: {baseline_text}")
    lines.append(f"pushed model: {summary['pushed_model'] or 'nothing pushed'}")
    slow = ", ".join(f"{k} {v['seconds']:.0f}s{' (cached)' if v['cached'] else ''}"
                     for k, v in summary["components"].items() if v.get("seconds") is not None)
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


def _previous_summary(path: pathlib.Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # first run, or a file damaged by hand: nothing to reuse
        return {}


def finish_run(config: PipelineConfig, components: Dict[str, Dict[str, Any]], stream: TextIO) -> Dict[str, Any]:
    """Writes `<output>/summary.json` and the report images, prints the table; returns the summary."""
    summary = build_summary(config, components)
    path = config.output_dir / "summary.json"
    model_dir = summary["pushed_model"] or (summary["model"] and summary["model"] + "/Format-Serving")
    if model_dir and summary["eval_examples"]:
        source = {"model": model_dir, "examples": summary["eval_examples"], "count": config.eval.report_images}
        previous = _previous_summary(path)
        if previous.get("report_images_source") == source and all(
                pathlib.Path(p).exists() for p in previous.get("report_images", [])):
            # Artifacts are immutable, so the same model on the same examples draws the same PNGs;
            # skipping the model load keeps an unchanged re-run short.
            summary["report_images"] = previous["report_images"]
        else:
            summary["report_images"] = write_report_images(
                model_dir, summary["eval_examples"], config.report_dir, config.eval.report_images)
        summary["report_images_source"] = source
    path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    from pipeline import dashboard  # it imports this module

    summary["dashboard"] = dashboard.write_dashboard(str(config.output_dir), pipeline_name=config.name)
    print_summary(summary, stream)
    print(f"[petseg] summary: {path}\n[petseg] report: {summary['report']}\n"
          f"[petseg] dashboard: {summary['dashboard']}", file=stream, flush=True)
    return summary

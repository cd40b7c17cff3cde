"""A run's evaluation as one self-contained HTML page: a view-model of the run, rendered by Jinja2 templates."""

from __future__ import annotations

import base64
import dataclasses
import math
import pathlib
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jinja2
from markupsafe import Markup

from config import names
from config.settings import PipelineConfig
from metrics.eval_config import GATED_METRIC
from report import images, metrics, summary as summary_lib
from report.artifacts import RunArtifacts
from transform.features import CLASS_NAMES

DASHBOARD_FILE = "index.html"
NA = "\u2014"
# Why a cell shows "—" instead of a number (metrics.segmentation explains the convention).
ABSENT_CLASS_HINT = ("Undefined: this class has no pixels in this slice's truth or predictions (0/0). "
                     "It is left out of the slice's mean IoU / mean Dice.")
NO_PIXELS_HINT = "Undefined: this slice has no pixels."
MISSING_HINT = "Not computed for this model."
# Below this overall IoU a class is flagged in the headline: the model barely ever finds it.
POOR_CLASS_IOU = 0.1
# Slice table columns: (key, header, tooltip); per-class keys read m["iou"][class] / m["dice"][class].
COLUMNS: List[Tuple[str, str, str]] = (
    [("examples", "examples", "eval examples in the slice"),
     ("mean_iou", "mean IoU", "mean over classes present of intersection / union (the gated metric)"),
     ("mean_dice", "mean Dice", "mean over classes present of 2·|A∩B| / (|A|+|B|)"),
     ("pixel_accuracy", "pixel acc.", "share of pixels whose predicted class is right")]
    + [(f"iou/{c}", f"IoU {c}", f"IoU of the {c} class") for c in CLASS_NAMES]
    + [(f"dice/{c}", f"Dice {c}", f"Dice of the {c} class") for c in CLASS_NAMES])
BAR_COLOURS = ["#3566c4", "#e08a2c", "#7a4fb0", "#9aa3b2", "#2f9c6b"]


@dataclasses.dataclass
class RunView:
    """Everything the dashboard shows, as plain python (NaN = undefined metric)."""

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


# ---------------------------------------------------------------- reading a run


def find_evaluation(run_dir: str, pipeline_name: str = PipelineConfig.name) -> Optional[str]:
    """The Evaluator's latest output in the run's MLMD (cached reruns reuse an earlier one)."""
    path = pathlib.Path(run_dir).resolve() / "metadata.sqlite"
    if not path.exists():
        return None
    with RunArtifacts(str(path), pipeline_name) as run:
        artifact = run.one(names.EVALUATOR_ID, "evaluation")
    return artifact.uri if artifact else None


def load_eval_result(run_dir: str, pipeline_name: str = PipelineConfig.name):
    """The candidate model's `tfma.EvalResult`, for `tfma.view.render_*` in a notebook."""
    import tensorflow_model_analysis as tfma

    uri = find_evaluation(run_dir, pipeline_name)
    if uri is None:
        raise FileNotFoundError(f"{run_dir}: no Evaluator output in this run's metadata.sqlite")
    return tfma.load_eval_result(uri, model_name=metrics.model_name(uri))


def training_history(model_run: Optional[str]) -> Dict[str, List[float]]:
    """Keras history per epoch from the Trainer's TensorBoard logs (train/ and validation/ under model_run).

    TensorBoard's own reader loads the events; a Trainer resumed from its backup writes a second
    events file that repeats the epochs since the backup, and the later value of an epoch wins.
    """
    if not model_run:
        return {}
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    history: Dict[str, List[float]] = {}
    for subdir, prefix in (("train", ""), ("validation", "val_")):
        logdir = pathlib.Path(model_run) / subdir
        if not logdir.is_dir():
            continue
        events = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
        events.Reload()
        for tag in events.Tags()[event_accumulator.TENSORS]:
            if tag.startswith("epoch_"):
                # TF2 event files carry no restart marker, so the accumulator keeps repeated steps.
                by_epoch = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
                history[prefix + tag[len("epoch_"):]] = [by_epoch[step] for step in sorted(by_epoch)]
    return history


def load_run(run_dir: str, pipeline_name: str = PipelineConfig.name) -> RunView:
    """Reads summary.json, the TFMA evaluation and the Trainer's history of one `petseg run` output."""
    root = pathlib.Path(run_dir).resolve()
    summary = summary_lib.read_summary(str(root))
    if summary is None:
        raise FileNotFoundError(f"{root}: no readable summary.json (is this a `petseg run --output` folder?)")
    uri = find_evaluation(str(root), pipeline_name)
    found = baseline = None
    thresholds: Dict[str, Optional[float]] = {"min_mean_iou": None, "max_regression": None}
    failures: List[str] = []
    blessed = bool(summary.get("blessed"))
    if uri:
        names = summary_lib.breed_names(summary["dataset"]["data_dir"])
        found = metrics.load_metrics(uri, names)
        baseline = metrics.load_baseline_metrics(uri, names)
        blessed = metrics.is_blessed(uri)
        thresholds = metrics.gate_thresholds(uri)
        failures = metrics.validation_failures(uri)
    pngs = sorted(str(p) for p in (root / "report").glob("*.png"))
    return RunView(str(root), summary, uri, found or summary.get("metrics"), baseline, blessed,
                   thresholds, failures, training_history(summary.get("model_run")), pngs)


def slice_rows(found: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Flat rows (overall, species, breeds) with one key per COLUMNS entry, for tables and DataFrames."""
    named = [(metrics.OVERALL, found[metrics.OVERALL])] + sorted(
        found["slices"].items(), key=lambda kv: (not kv[0].startswith("species:"), kv[0].lower()))
    return [{"slice": name, **{key: _column_value(m, key) for key, _, _ in COLUMNS}} for name, m in named]


def _column_value(m: Dict[str, Any], key: str) -> Any:
    if "/" in key:
        prefix, cls = key.split("/")
        return (m.get(prefix) or {}).get(cls)
    return m.get(key)


# ---------------------------------------------------------------- the view-model


def _undefined(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def hint(key: str, value: Any) -> Optional[str]:
    """Why a score shows as "—", or None when it is a number."""
    if not _undefined(value):
        return None
    if value is None:
        return MISSING_HINT
    return ABSENT_CLASS_HINT if "/" in key else NO_PIXELS_HINT


def tint(value: float) -> str:
    """Red (0) to green (1), so weak scores stand out."""
    return f"hsl({round(max(0.0, min(1.0, value)) * 120)},70%,88%)"


def _bar_chart(title: str, prefix: str, groups: Sequence[Tuple[str, Dict[str, Any]]],
               gate: Optional[float] = None) -> Dict[str, Any]:
    """Grouped bars: one group per class plus the mean, one bar per slice; gate line on the mean."""
    width, height, left, bottom, top = 560, 230, 36, 36, 14
    plot_h = height - bottom - top
    categories = list(CLASS_NAMES) + ["mean"]
    group_w = (width - left - 10) / len(categories)
    bar_w = (group_w - 16) / max(1, len(groups))
    chart: Dict[str, Any] = {
        "title": title, "width": width, "height": height, "left": left, "base": top + plot_h,
        "axis_y": height - bottom + 16,
        "ticks": [(tick, top + plot_h * (1 - tick)) for tick in (0, 0.25, 0.5, 0.75, 1.0)],
        "categories": [], "gate": gate,
        "legend": [(name, BAR_COLOURS[i % len(BAR_COLOURS)]) for i, (name, _) in enumerate(groups)]}
    for ci, category in enumerate(categories):
        x0 = left + ci * group_w + 8
        bars = []
        for gi, (name, m) in enumerate(groups):
            value = m.get(f"mean_{prefix}") if category == "mean" else (m.get(prefix) or {}).get(category)
            defined = not _undefined(value)
            # At least 1.5 px and a printed value, so a score of 0 reads as 0, not as a missing bar.
            h = max(1.5, plot_h * max(0.0, min(1.0, value))) if defined else 0.0
            bars.append({"x": x0 + gi * bar_w, "w": bar_w, "h": h, "value": value if defined else None,
                         "colour": BAR_COLOURS[gi % len(BAR_COLOURS)],
                         "label": f"{name} · {category}: " + (f"{value:.3f}" if defined else f"{NA} (undefined)")})
        chart["categories"].append({"name": category, "x0": x0, "centre": x0 + (group_w - 16) / 2, "bars": bars,
                                    "gate_x2": x0 + group_w - 12})
    chart["gate_y"] = top + plot_h * (1 - gate) if gate is not None else None
    return chart


def _line_chart(title: str, series: Dict[str, List[float]]) -> Optional[Dict[str, Any]]:
    """Per-epoch curves (train solid, validation dashed) on a shared y range."""
    width, height, left, bottom, top, right = 420, 200, 44, 28, 12, 10
    values = [v for vs in series.values() for v in vs if not _undefined(v)]
    if not values:
        return None
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    epochs = max(len(v) for v in series.values())
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> Tuple[float, float]:
        x = left + (plot_w * i / (epochs - 1) if epochs > 1 else plot_w / 2)
        return x, top + plot_h * (1 - (v - lo) / (hi - lo))

    lines = []
    for name, vs in series.items():
        points = [xy(i, v) for i, v in enumerate(vs) if not _undefined(v)]
        lines.append({"name": name, "kind": "val" if name.startswith("val_") else "train",
                      "points": [(x, y, v) for (x, y), v in zip(points, vs)]})
    return {"title": title, "width": width, "height": height, "left": left, "right": width - right,
            "centre": left + plot_w / 2, "epochs": epochs, "lines": lines,
            "grid": [(lo + (hi - lo) * frac, xy(0, lo + (hi - lo) * frac)[1]) for frac in (0, 0.5, 1)]}


def _headline(view: RunView) -> Dict[str, Any]:
    overall = (view.metrics or {}).get(metrics.OVERALL, {})
    base = (view.baseline or {}).get(metrics.OVERALL, {})
    cards = []
    for key, label in (("mean_iou", "mean IoU"), ("mean_dice", "mean Dice"), ("pixel_accuracy", "pixel accuracy")):
        value, before = overall.get(key), base.get(key)
        delta = None if _undefined(value) or _undefined(before) else value - before
        cards.append({"key": key, "label": label, "value": value, "delta": delta})
    ious = overall.get("iou") or {}
    classes = [(v, c) for c, v in ious.items() if not _undefined(v)]
    slices = [(m["mean_iou"], n) for n, m in ((view.metrics or {}).get("slices") or {}).items()
              if not _undefined(m.get("mean_iou"))]
    return {"cards": cards, "per_class": [(c, ious.get(c)) for c in CLASS_NAMES],
            "weakest_class": min(classes) if classes and view.metrics else None,
            "weakest_slice": min(slices) if slices else None,
            # A lax gate can bless a model that never finds a class; say so next to the verdict.
            "lost": [c for c in CLASS_NAMES if not _undefined(ious.get(c)) and ious[c] < POOR_CLASS_IOU]}


def _comparison(view: RunView) -> List[Dict[str, Any]]:
    if not view.baseline:
        return []
    overall = (view.metrics or {}).get(metrics.OVERALL, {})
    base = view.baseline[metrics.OVERALL]
    rows = []
    for key, label, _ in COLUMNS[1:]:
        now, before = _column_value(overall, key), _column_value(base, key)
        rule = ""
        if key == GATED_METRIC and view.thresholds["max_regression"] is not None:
            rule = f"≥ {view.thresholds['max_regression'] * -1:+g}"
        rows.append({"key": key, "label": label, "now": now, "before": before, "rule": rule,
                     "change": "" if _undefined(now) or _undefined(before) else f"{now - before:+.3f}"})
    return rows


def _facts(view: RunView) -> List[Tuple[str, str]]:
    s = view.summary
    data = s.get("dataset") or {}
    examples = data.get("examples") or {}
    skipped = ", ".join(f"{k}: {v}" for k, v in (data.get("skipped") or {}).items()) or "none"
    return [(k, str(v)) for k, v in (
        ("profile", s.get("profile")),
        ("dataset", f'{data.get("name")} {data.get("version")} ({data.get("source")})'),
        ("examples", f'train {examples.get("train")}, eval {examples.get("eval")}'),
        ("skipped examples", skipped),
        ("model", s.get("model")), ("evaluation", view.evaluation_uri),
        ("serving versions", ", ".join(s.get("serving_versions") or []) or "none"))]


def _gate_text(thresholds: Dict[str, Optional[float]]) -> str:
    low, regression = thresholds["min_mean_iou"], thresholds["max_regression"]
    return " and ".join([f"mean IoU ≥ {low:g}" if low is not None else "no absolute threshold",
                         f"no more than {regression:g} below the baseline" if regression is not None
                         else "no regression check (no baseline model yet)"])


def _image_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(pathlib.Path(path).read_bytes()).decode()


def view_model(view: RunView) -> Dict[str, Any]:
    """The template's context: every number placed and every choice made, so templates only lay out."""
    groups = [(metrics.OVERALL, view.metrics[metrics.OVERALL])] if view.metrics else []
    if view.metrics:
        groups += [(n, m) for n, m in sorted(view.metrics["slices"].items()) if n.startswith("species:")]
    if view.baseline:
        groups.append(("baseline overall", view.baseline[metrics.OVERALL]))
    bars = [_bar_chart("IoU per class", "iou", groups, view.thresholds["min_mean_iou"]),
            _bar_chart("Dice per class", "dice", groups)] if groups else []
    # Newer Trainers also log the epoch index itself: it is the x axis, not a curve.
    train = [k for k in view.history if not k.startswith("val_") and k != "epoch"]
    curves = [_line_chart(k, {n: view.history[n] for n in (k, "val_" + k) if n in view.history}) for k in train]
    components = view.summary.get("components") or {}
    return {
        "view": view, "title": f"petseg run · {view.summary.get('profile')} · "
                               f"{'blessed' if view.blessed else 'not blessed'}",
        "gate": _gate_text(view.thresholds), "headline": _headline(view), "comparison": _comparison(view),
        "bars": bars, "curves": [c for c in curves if c], "columns": COLUMNS,
        "rows": [dict(row, kind=row["slice"].split(":")[0] if ":" in row["slice"] else "overall")
                 for row in slice_rows(view.metrics)] if view.metrics else [],
        "mask_legend": [(name, "rgb(%d, %d, %d)" % tuple(int(x) for x in colour))
                        for name, colour in zip(CLASS_NAMES, images.MASK_COLOURS)],
        "masks": [(_image_uri(p), pathlib.Path(p).stem) for p in view.images],
        "facts": _facts(view), "components": components,
        "total_seconds": sum(c.get("seconds") or 0 for c in components.values()),
        "cached": sum(1 for c in components.values() if c.get("cached")),
        "poor_class_iou": POOR_CLASS_IOU,
        # Package files, inlined: the page's CSP allows no other source, so it opens from disk or a mail.
        "css": _static("dashboard.css"), "error_hook": _static("error_hook.js"), "sort_js": _static("sort.js"),
    }


def _static(name: str) -> Markup:
    return Markup(resources.files("report").joinpath("static", name).read_text(encoding="utf-8"))


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("report", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENV.globals.update(hint=hint, NA=NA)  # macros see globals, not the page context
_ENV.filters.update(f1="{:.1f}".format, f2="{:.2f}".format, f3="{:.3f}".format, f4="{:.4f}".format,
                    f6="{:.6f}".format, g="{:g}".format, g3="{:.3g}".format, tint=tint)


def render_html(view: RunView) -> str:
    """The whole page; every asset is inline so it opens from disk, a mail or a CI artifact."""
    return _ENV.get_template("dashboard.html.j2").render(view_model(view))


def write_dashboard(run_dir: str, output: Optional[str] = None, pipeline_name: str = PipelineConfig.name) -> str:
    """Writes the dashboard (default `<run>/report/index.html`) and returns its path."""
    view = load_run(run_dir, pipeline_name)
    path = pathlib.Path(output) if output else pathlib.Path(view.run_dir) / "report" / DASHBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(view), encoding="utf-8")
    return str(path.resolve())

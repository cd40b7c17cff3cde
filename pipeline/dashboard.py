"""A run's evaluation as one self-contained HTML page: verdict, slices, masks, training curves, run facts."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import pathlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipeline import evaluation
from pipeline.config import PipelineConfig
from pipeline.summary import MASK_COLOURS, RunArtifacts, breed_names
from transform.features import CLASS_NAMES

DASHBOARD_FILE = "index.html"
NA = "\u2014"
# Why a cell shows "—" instead of a number (components.segmentation_metrics explains the convention).
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


# ---------------------------------------------------------------- loading


def find_evaluation(run_dir: str, pipeline_name: str = PipelineConfig.name) -> Optional[str]:
    """The Evaluator's latest output in the run's MLMD (cached reruns reuse an earlier one)."""
    root = pathlib.Path(run_dir).resolve()
    if not (root / "metadata.sqlite").exists():  # MLMD would create an empty store
        return None
    artifact = RunArtifacts(PipelineConfig(output=str(root), name=pipeline_name)).one("Evaluator", "evaluation")
    return artifact.uri if artifact else None


def load_eval_result(run_dir: str, pipeline_name: str = PipelineConfig.name):
    """The candidate model's `tfma.EvalResult`, for `tfma.view.render_*` in a notebook."""
    import tensorflow_model_analysis as tfma

    uri = find_evaluation(run_dir, pipeline_name)
    if uri is None:
        raise FileNotFoundError(f"{run_dir}: no Evaluator output in this run's metadata.sqlite")
    # With a baseline TFMA stores both models; the candidate is the non-baseline spec.
    return tfma.load_eval_result(uri, model_name=evaluation._model_name(uri, baseline=False))


def gate_thresholds(evaluation_uri: str) -> Dict[str, Optional[float]]:
    """The mean-IoU bounds the Evaluator applied, read from the eval config stored with its output.

    TFX drops the change threshold when there is no baseline, so `max_regression` is then None.
    """
    from tensorflow_model_analysis.writers import eval_config_writer

    config, *_ = eval_config_writer.load_eval_run(evaluation_uri)
    found: Dict[str, Optional[float]] = {"min_mean_iou": None, "max_regression": None}
    for spec in config.metrics_specs if config else ():
        for metric in spec.metrics:
            thresholds = [t.threshold for t in metric.per_slice_thresholds] + (
                [metric.threshold] if metric.HasField("threshold") else [])
            if not metric.class_name or not _is_gated(metric.class_name):
                continue
            for threshold in thresholds:
                if threshold.value_threshold.HasField("lower_bound"):
                    found["min_mean_iou"] = threshold.value_threshold.lower_bound.value
                if threshold.change_threshold.HasField("absolute"):
                    found["max_regression"] = -threshold.change_threshold.absolute.value
    return found


def _is_gated(class_name: str) -> bool:
    from components import segmentation_metrics as sm

    return any(m.__name__ == class_name and m.DEFAULT_NAME == evaluation.GATED_METRIC for m in sm.METRICS)


def validation_failures(evaluation_uri: str) -> List[str]:
    """TFMA's reasons for not blessing, one readable line each."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    lines = []
    for per_slice in result.metric_validations_per_slice:
        for failure in per_slice.failures:
            lines.append(f"{failure.metric_key.name or 'metric'}: {failure.message}".strip())
    lines += [f"slice not found: {s}" for s in result.missing_slices]
    if result.missing_thresholds:
        lines.append(f"{len(result.missing_thresholds)} threshold(s) name a metric that was not computed")
    return lines


def training_history(model_run: Optional[str]) -> Dict[str, List[float]]:
    """Keras history per epoch: `history.json` from the Trainer, else its TensorBoard event files."""
    if not model_run:
        return {}
    root = pathlib.Path(model_run)
    if (root / "history.json").exists():
        return json.loads((root / "history.json").read_text())
    import tensorflow as tf

    history: Dict[str, List[float]] = {}
    for subdir, prefix in (("train", ""), ("validation", "val_")):
        for events in sorted((root / subdir).glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(events)):
                for value in event.summary.value:
                    if value.tag.startswith("epoch_"):
                        number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                        history.setdefault(prefix + value.tag[len("epoch_"):], []).append(number)
    return history


def load_run(run_dir: str, pipeline_name: str = PipelineConfig.name) -> RunView:
    """Reads summary.json, the TFMA evaluation and the Trainer's history of one `petseg run` output."""
    root = pathlib.Path(run_dir).resolve()
    summary_path = root / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{root}: no summary.json (is this a `petseg run --output` folder?)")
    summary = json.loads(summary_path.read_text())
    uri = find_evaluation(str(root), pipeline_name)
    metrics = baseline = None
    thresholds: Dict[str, Optional[float]] = {"min_mean_iou": None, "max_regression": None}
    failures: List[str] = []
    blessed = bool(summary.get("blessed"))
    if uri:
        names = breed_names(summary["dataset"]["data_dir"])
        metrics = evaluation.load_metrics(uri, names)
        baseline = evaluation.load_baseline_metrics(uri, names)
        blessed = evaluation.is_blessed(uri)
        thresholds = gate_thresholds(uri)
        failures = validation_failures(uri)
    images = sorted(str(p) for p in (root / "report").glob("*.png"))
    return RunView(str(root), summary, uri, metrics or summary.get("metrics"), baseline, blessed,
                   thresholds, failures, training_history(summary.get("model_run")), images)


def slice_rows(metrics: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Flat rows (overall, species, breeds) with one key per COLUMNS entry, for tables and DataFrames."""
    named = [(evaluation.OVERALL, metrics[evaluation.OVERALL])] + sorted(
        metrics["slices"].items(), key=lambda kv: (not kv[0].startswith("species:"), kv[0].lower()))
    return [{"slice": name, **{key: _column_value(m, key) for key, _, _ in COLUMNS}} for name, m in named]


def _column_value(m: Dict[str, Any], key: str) -> Any:
    if "/" in key:
        prefix, cls = key.split("/")
        return (m.get(prefix) or {}).get(cls)
    return m.get(key)


# ---------------------------------------------------------------- rendering


def _undefined(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _hint(key: str, value: Any) -> str:
    if value is None:
        return MISSING_HINT
    return ABSENT_CLASS_HINT if "/" in key else NO_PIXELS_HINT


def _cell(key: str, value: Any) -> str:
    """A table cell; metric cells are tinted red→green so weak slices stand out."""
    if _undefined(value):
        return f'<td class="na" data-v="" title="{html.escape(_hint(key, value))}">{NA}</td>'
    if key == "examples":
        return f'<td data-v="{value}">{value}</td>'
    return f'<td data-v="{value:.6f}" style="background:{_tint(value)}">{value:.3f}</td>'


def _tint(value: float) -> str:
    return f"hsl({round(max(0.0, min(1.0, value)) * 120)},70%,88%)"


def _fmt(value: Any, key: str = "mean_iou") -> str:
    if _undefined(value):
        return f'<span class="na" title="{html.escape(_hint(key, value))}">{NA}</span>'
    return f"{value:.3f}"


def _image_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(pathlib.Path(path).read_bytes()).decode()


def _bar_chart(title: str, prefix: str, groups: Sequence[Tuple[str, Dict[str, Any]]],
               gate: Optional[float] = None) -> str:
    """Grouped bars: one group per class plus the mean, one bar per slice; gate line on the mean."""
    categories = list(CLASS_NAMES) + ["mean"]
    palette = ["#3566c4", "#e08a2c", "#7a4fb0", "#9aa3b2", "#2f9c6b"]
    width, height, left, bottom, top = 560, 230, 36, 36, 14
    plot_h = height - bottom - top
    group_w = (width - left - 10) / len(categories)
    bar_w = (group_w - 16) / max(1, len(groups))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(f'<line x1="{left}" x2="{width - 6}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{tick:g}</text>')
    for ci, category in enumerate(categories):
        x0 = left + ci * group_w + 8
        for gi, (name, m) in enumerate(groups):
            value = m.get(f"mean_{prefix}") if category == "mean" else (m.get(prefix) or {}).get(category)
            x = x0 + gi * bar_w
            label = f"{name} · {category}: " + (f"{value:.3f}" if not _undefined(value) else f"{NA} (undefined)")
            if _undefined(value):
                parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - 3}" class="tick" '
                             f'text-anchor="middle"><title>{html.escape(label)}</title>{NA}</text>')
                continue
            # At least 1.5 px and a printed value, so a score of 0 reads as 0, not as a missing bar.
            h = max(1.5, plot_h * max(0.0, min(1.0, value)))
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                         f'fill="{palette[gi % len(palette)]}"><title>{html.escape(label)}</title></rect>'
                         f'<text x="{x + bar_w / 2 - 1:.1f}" y="{top + plot_h - h - 2:.1f}" class="value" '
                         f'text-anchor="middle">{value:.2f}</text>')
        parts.append(f'<text x="{x0 + (group_w - 16) / 2:.1f}" y="{height - bottom + 16}" class="axis" '
                     f'text-anchor="middle">{category}</text>')
        if category == "mean" and gate is not None:
            y = top + plot_h * (1 - gate)
            parts.append(f'<line x1="{x0 - 4:.1f}" x2="{x0 + group_w - 12:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                         f'class="gate"><title>gate: mean IoU ≥ {gate:g}</title></line>')
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{palette[i % len(palette)]}"></i>{html.escape(n)}</span>'
                     for i, (n, _) in enumerate(groups))
    gate_note = '<span><i class="gate-key"></i>gate</span>' if gate is not None else ""
    return f'<figure class="bars"><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}' \
           f'<div class="legend">{legend}{gate_note}</div></figure>'


def _line_chart(title: str, series: Dict[str, List[float]]) -> str:
    """Per-epoch curves (train solid, validation dashed) on a shared y range."""
    width, height, left, bottom, top, right = 420, 200, 44, 28, 12, 10
    values = [v for vs in series.values() for v in vs if not _undefined(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    epochs = max(len(v) for v in series.values())
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> Tuple[float, float]:
        x = left + (plot_w * i / (epochs - 1) if epochs > 1 else plot_w / 2)
        return x, top + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">']
    for frac in (0, 0.5, 1):
        v = lo + (hi - lo) * frac
        _, y = xy(0, v)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{v:.3g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" class="axis" text-anchor="middle">'
                 f'epoch (1–{epochs})</text>')
    for name, vs in series.items():
        points = [xy(i, v) for i, v in enumerate(vs) if not _undefined(v)]
        cls = "val" if name.startswith("val_") else "train"
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" class="{cls}"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="{cls}"><title>{html.escape(name)} epoch {i + 1}: '
                  f'{v:.4f}</title></circle>' for i, ((x, y), v) in enumerate(zip(points, vs))]
    parts.append("</svg>")
    legend = "".join(f'<span><i class="{"val" if n.startswith("val_") else "train"}"></i>{html.escape(n)}</span>'
                     for n in series)
    return f'<figure><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}<div class="legend">{legend}</div></figure>'


def _verdict(view: RunView) -> str:
    t = view.thresholds
    gate = [f"mean IoU ≥ {t['min_mean_iou']:g}" if t["min_mean_iou"] is not None else "no absolute threshold",
            f"no more than {t['max_regression']:g} below the baseline" if t["max_regression"] is not None
            else "no regression check (no baseline model yet)"]
    pushed = view.summary.get("pushed_model")
    where = f"pushed to <code>{html.escape(pushed)}</code>" if pushed else "not pushed to serving"
    reasons = "".join(f"<li>{html.escape(f)}</li>" for f in view.failures)
    word = "BLESSED" if view.blessed else "NOT BLESSED"
    return (f'<div id="verdict" class="verdict {"ok" if view.blessed else "bad"}" data-blessed="{str(view.blessed).lower()}">'
            f'<div class="word">{"✔" if view.blessed else "✘"} {word}</div>'
            f'<div>Gate on the overall slice: {html.escape(" and ".join(gate))}.</div>'
            f'<div>Model {where}.</div>{f"<ul>{reasons}</ul>" if reasons else ""}</div>')


def _headline(view: RunView) -> str:
    overall = (view.metrics or {}).get(evaluation.OVERALL, {})
    base = (view.baseline or {}).get(evaluation.OVERALL, {})
    cards = []
    for key, label in (("mean_iou", "mean IoU"), ("mean_dice", "mean Dice"), ("pixel_accuracy", "pixel accuracy")):
        value, before = overall.get(key), base.get(key)
        delta = ""
        if not _undefined(value) and not _undefined(before):
            delta = f'<div class="delta {"up" if value >= before else "down"}">{value - before:+.3f} vs baseline</div>'
        tint = "" if _undefined(value) else f' style="background:{_tint(value)}"'
        cards.append(f'<div class="card"{tint}><div class="label">{label}</div><div class="big">{_fmt(value, key)}</div>'
                     f'{delta}</div>')
    per_class = " · ".join(f"{c} {_fmt((overall.get('iou') or {}).get(c), 'iou/' + c)}" for c in CLASS_NAMES)
    cards.append(f'<div class="card wide"><div class="label">IoU per class (overall)</div><div class="mid">{per_class}</div>'
                 f'<div class="hint">{_weakest(view)}</div></div>')
    # A lax gate can bless a model that never finds a class; say so next to the verdict.
    lost = [c for c in CLASS_NAMES if not _undefined((overall.get("iou") or {}).get(c))
            and overall["iou"][c] < POOR_CLASS_IOU]
    warning = (f'<div id="quality-warning" class="warning">⚠ {html.escape(", ".join(lost))}: IoU below '
               f'{POOR_CLASS_IOU:g} — the model (almost) never gets {"this class" if len(lost) == 1 else "these classes"} '
               f'right, whatever the verdict.</div>') if lost else ""
    return f'<div class="cards">{"".join(cards)}{warning}</div>'


def _weakest(view: RunView) -> str:
    if not view.metrics:
        return ""
    overall = view.metrics[evaluation.OVERALL]
    classes = [(v, c) for c, v in (overall.get("iou") or {}).items() if not _undefined(v)]
    slices = [(m["mean_iou"], n) for n, m in view.metrics["slices"].items() if not _undefined(m.get("mean_iou"))]
    text = []
    if classes:
        value, name = min(classes)
        text.append(f"weakest class: <b>{html.escape(name)}</b> ({value:.3f})")
    if slices:
        value, name = min(slices)
        text.append(f"weakest slice: <b>{html.escape(name)}</b> (mean IoU {value:.3f})")
    return "; ".join(text)


def _comparison(view: RunView) -> str:
    overall = (view.metrics or {}).get(evaluation.OVERALL, {})
    if not view.baseline:
        return ('<p id="baseline-note">No baseline: no model had been blessed before this one, so only the absolute '
                'threshold applied. The next run is compared against this model once it is blessed.</p>')
    base = view.baseline[evaluation.OVERALL]
    rows = []
    for key, label, _ in COLUMNS[1:]:
        now, before = _column_value(overall, key), _column_value(base, key)
        change = "" if _undefined(now) or _undefined(before) else f"{now - before:+.3f}"
        rule = ""
        if key == evaluation.GATED_METRIC and view.thresholds["max_regression"] is not None:
            rule = f"≥ {view.thresholds['max_regression'] * -1:+g}"
        rows.append(f"<tr><th>{label}</th><td>{_fmt(now, key)}</td><td>{_fmt(before, key)}</td>"
                    f"<td>{change}</td><td>{rule}</td></tr>")
    return ('<table id="comparison"><thead><tr><th>overall</th><th>candidate</th><th>baseline (in service)</th>'
            '<th>change</th><th>allowed change</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def _slice_table(view: RunView) -> str:
    if not view.metrics:
        return "<p>No evaluation found for this run.</p>"
    head = "".join(f'<th data-key="{k}" title="{html.escape(tip)} — click to sort">{html.escape(h)}</th>'
                   for k, h, tip in COLUMNS)
    body = []
    for row in slice_rows(view.metrics):
        kind = row["slice"].split(":")[0] if ":" in row["slice"] else "overall"
        cells = "".join(_cell(k, row[k]) for k, _, _ in COLUMNS)
        body.append(f'<tr data-slice="{html.escape(row["slice"])}" class="{kind}">'
                    f'<th data-v="{html.escape(row["slice"])}">{html.escape(row["slice"])}</th>{cells}</tr>')
    return (f'<table id="slices" class="sortable"><thead><tr><th data-key="slice" title="click to sort">slice</th>'
            f'{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _masks(view: RunView) -> str:
    if not view.images:
        return "<p>No mask images in report/ (eval.report_images = 0?).</p>"
    legend = "".join(f'<span><i style="background:rgb{tuple(int(x) for x in colour)}"></i>{name}</span>'
                     for name, colour in zip(CLASS_NAMES, MASK_COLOURS))
    figures = "".join(
        f'<figure class="mask"><img src="{_image_uri(p)}" alt="{html.escape(pathlib.Path(p).stem)}">'
        f'<figcaption>{html.escape(pathlib.Path(p).stem)}</figcaption></figure>' for p in view.images)
    return (f'<div class="legend">each image: <b>input</b> | <b>true mask</b> | <b>predicted mask</b> &nbsp; '
            f'{legend}</div><div class="masks">{figures}</div>')


def _curves(view: RunView) -> str:
    # Newer Trainers also log the epoch index itself: it is the x axis, not a curve.
    train = [k for k in view.history if not k.startswith("val_") and k != "epoch"]
    charts = [_line_chart(k, {n: view.history[n] for n in (k, "val_" + k) if n in view.history}) for k in train]
    charts = [c for c in charts if c]
    if not charts:
        return "<p>No training history found (history.json or TensorBoard events in the Trainer's model_run).</p>"
    logdir = view.summary.get("model_run")
    return (f'<div class="charts">{"".join(charts)}</div>'
            f'<p class="hint">Solid: training, dashed: validation (the eval split). Full logs: '
            f'<code>tensorboard --logdir {html.escape(str(logdir))}</code></p>')


def _facts(view: RunView) -> str:
    s = view.summary
    data = s.get("dataset") or {}
    examples = data.get("examples") or {}
    skipped = data.get("skipped") or {}
    skipped_text = ", ".join(f"{k}: {v}" for k, v in skipped.items()) or "none"
    facts = [("profile", s.get("profile")),
             ("dataset", f'{data.get("name")} {data.get("version")} ({data.get("source")})'),
             ("examples", f'train {examples.get("train")}, eval {examples.get("eval")}'),
             ("skipped examples", skipped_text),
             ("model", s.get("model")), ("evaluation", view.evaluation_uri),
             ("serving versions", ", ".join(s.get("serving_versions") or []) or "none")]
    fact_rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    components = s.get("components") or {}
    total = sum(c.get("seconds") or 0 for c in components.values())
    comp_rows = "".join(
        f'<tr><th>{html.escape(name)}</th><td>{_seconds(c.get("seconds"))}</td>'
        f'<td>{"cached ✔" if c.get("cached") else "ran"}</td></tr>' for name, c in components.items())
    cached = sum(1 for c in components.values() if c.get("cached"))
    return (f'<div class="facts"><table id="facts">{fact_rows}</table>'
            f'<table id="components"><thead><tr><th>component</th><th>time</th><th>cache</th></tr></thead>'
            f'<tbody>{comp_rows}</tbody><tfoot><tr><th>total</th><td>{total:.1f} s</td>'
            f'<td>{cached} of {len(components)} cached</td></tr></tfoot></table></div>')


def _seconds(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.1f} s"


def render_html(view: RunView) -> str:
    """The whole page; every asset is inline so it opens from disk, a mail or a CI artifact."""
    groups = [(evaluation.OVERALL, view.metrics[evaluation.OVERALL])] if view.metrics else []
    if view.metrics:
        groups += [(n, m) for n, m in sorted(view.metrics["slices"].items()) if n.startswith("species:")]
    if view.baseline:
        groups.append(("baseline overall", view.baseline[evaluation.OVERALL]))
    charts = "" if not groups else (
        _bar_chart("IoU per class", "iou", groups, view.thresholds["min_mean_iou"])
        + _bar_chart("Dice per class", "dice", groups))
    title = f"petseg run · {view.summary.get('profile')} · {'blessed' if view.blessed else 'not blessed'}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{html.escape(title)}</title>
<script>{_ERROR_HOOK}</script>
<style>{_CSS}</style></head>
<body>
<header><h1>Pet segmentation — evaluation of <code>{html.escape(view.run_dir)}</code></h1>
<div class="sub">profile <b>{html.escape(str(view.summary.get('profile')))}</b> · VGG16-FCN8 · classes pet / background / border ·
metrics over all pixels of the eval split (TFMA)</div></header>
<div id="page-errors" hidden></div>
<section class="top">{_verdict(view)}{_headline(view)}</section>
<section><h2>Candidate vs baseline</h2>{_comparison(view)}</section>
<section><h2>Per-class scores</h2><div class="charts">{charts}</div></section>
<section><h2>Slices</h2><p class="hint">Click a column header to sort. Colour: red (0) → green (1).
{NA} marks an undefined score (hover it for why).</p>{_slice_table(view)}</section>
<section><h2>Masks</h2>{_masks(view)}</section>
<section><h2>Training curves</h2>{_curves(view)}</section>
<section><h2>Run facts</h2>{_facts(view)}</section>
<script>{_SORT_JS}</script>
</body></html>
"""


def write_dashboard(run_dir: str, output: Optional[str] = None, pipeline_name: str = PipelineConfig.name) -> str:
    """Writes the dashboard (default `<run>/report/index.html`) and returns its path."""
    view = load_run(run_dir, pipeline_name)
    path = pathlib.Path(output) if output else pathlib.Path(view.run_dir) / "report" / DASHBOARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(view), encoding="utf-8")
    return str(path.resolve())


# Runs first: any script error, console.error or request blocked by the page's CSP is shown on the page
# and recorded on <html data-errors>, so a person sees it and a headless test can assert on it.
_ERROR_HOOK = """
(function () {
  var errors = [];
  function report(text) {
    errors.push(String(text));
    document.documentElement.setAttribute('data-errors', JSON.stringify(errors));
    var box = document.getElementById('page-errors');
    if (box) { box.hidden = false; box.textContent = errors.join('\\n'); }
  }
  window.addEventListener('error', function (e) { report('error: ' + e.message); });
  window.addEventListener('unhandledrejection', function (e) { report('rejection: ' + e.reason); });
  document.addEventListener('securitypolicyviolation', function (e) { report('blocked request: ' + e.blockedURI); });
  var original = console.error;
  console.error = function () { report('console.error: ' + Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); };
})();
"""

# Sortable slice table; `#sort=<key>-<asc|desc>` in the URL sorts on load (and is kept up to date).
_SORT_JS = """
(function () {
  var table = document.getElementById('slices');
  if (table) {
    var state = {key: null, dir: 1};
    function sortBy(key, dir) {
      var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
      var col = headers.findIndex(function (h) { return h.dataset.key === key; });
      if (col < 0) return;
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === '' || y === '') return (x === '') - (y === '');  // undefined scores always last
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return c * dir;
      });
      rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
      headers.forEach(function (h) { h.removeAttribute('aria-sort'); });
      headers[col].setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
      state = {key: key, dir: dir};
      history.replaceState(null, '', '#sort=' + key + '-' + (dir > 0 ? 'asc' : 'desc'));
    }
    table.tHead.addEventListener('click', function (e) {
      var h = e.target.closest('th');
      if (!h) return;
      // Scores start best-first; names start A-Z.
      var first = h.dataset.key === 'slice' ? 1 : -1;
      sortBy(h.dataset.key, state.key === h.dataset.key ? -state.dir : first);
    });
    var m = /#sort=([^-]+)-(asc|desc)/.exec(decodeURIComponent(location.hash));
    if (m) sortBy(m[1], m[2] === 'asc' ? 1 : -1);
  }
  document.documentElement.setAttribute('data-ready', '1');
})();
"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1320px;padding:16px 24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:0 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
header .sub{color:#5b6475;margin-top:2px}code{font-size:12px;background:#eceff3;padding:1px 4px;border-radius:3px;word-break:break-all}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:12px 16px;margin:14px 0}
section.top{display:flex;gap:16px;align-items:stretch;flex-wrap:wrap}
.verdict{flex:0 0 360px;border-radius:8px;padding:12px 16px;color:#fff}.verdict.ok{background:#2e7d4f}.verdict.bad{background:#b3261e}
.verdict .word{font-size:26px;font-weight:700;margin-bottom:4px}.verdict code{background:rgba(255,255,255,.2);color:#fff}
.verdict ul{margin:6px 0 0;padding-left:18px}
.cards{display:flex;gap:12px;flex:1;flex-wrap:wrap}.card{border:1px solid #e2e5ea;border-radius:8px;padding:10px 14px;min-width:130px}
.card.wide{flex:1;min-width:280px}.card .label{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .big{font-size:34px;font-weight:700}.card .mid{font-size:18px;margin-top:8px}.delta.up{color:#2e7d4f}.delta.down{color:#b3261e}
.warning{flex-basis:100%;background:#fff4e5;border:1px solid #e08a2c;color:#7a3e00;border-radius:6px;padding:6px 10px;font-weight:600}
.hint{color:#5b6475;font-size:12px;margin-top:6px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #edf0f3}
th{font-weight:600}tbody th,#facts th,#components th{text-align:left}
#slices thead th{cursor:pointer;user-select:none;background:#f0f2f5;position:sticky;top:0}
#slices thead th:hover{background:#e3e7ec}#slices th[aria-sort=ascending]::after{content:" ▲"}#slices th[aria-sort=descending]::after{content:" ▼"}
#slices tr.overall{font-weight:700}#slices tr.species th{padding-left:14px}#slices tr.label th{padding-left:24px;font-weight:400}
td.na,span.na{color:#8a93a3;cursor:help;text-align:center}
.charts{display:flex;gap:18px;flex-wrap:wrap}figure{margin:0}
/* Size charts by the row, not by their legend's width (a short legend shrank the bars). */
.charts figure{flex:1 1 300px;max-width:440px}.charts figure.bars{flex-basis:480px;max-width:620px}figcaption{font-weight:600;margin-bottom:2px}
svg.chart{width:100%;max-width:600px;height:auto;background:#fff}
svg .grid{stroke:#e6e9ee}svg .tick{font-size:10px;fill:#6b7385}svg .axis{font-size:12px;fill:#1d2330}
svg .value{font-size:8px;fill:#3b4252}svg .gate{stroke:#b3261e;stroke-width:2;stroke-dasharray:5 3}
svg polyline{fill:none;stroke-width:2}svg .train{stroke:#3566c4;fill:#3566c4}svg polyline.train{fill:none}
svg .val{stroke:#e08a2c;fill:#e08a2c}svg polyline.val{fill:none;stroke-dasharray:6 3}
.legend{font-size:12px;color:#3b4252;display:flex;gap:12px;flex-wrap:wrap;align-items:center;margin:4px 0}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px;border:1px solid #bbb}
.legend i.train{background:#3566c4}.legend i.val{background:#e08a2c}.legend i.gate-key{border:0;border-top:2px dashed #b3261e;height:0;width:16px}
.masks{display:flex;flex-wrap:wrap;gap:14px}.mask img{image-rendering:pixelated;width:384px;border:1px solid #ccd}
.mask figcaption{font-weight:400;font-size:12px;color:#5b6475}
.facts{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}#facts td{text-align:left;max-width:620px;word-break:break-all}
#page-errors{white-space:pre-wrap;background:#fde8e6;color:#b3261e;border:1px solid #b3261e;padding:8px;border-radius:6px}
"""

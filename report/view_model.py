"""The dashboard template's context from a RunView: numbers placed and choices made, so templates only lay out."""

from __future__ import annotations

import base64
import pathlib
from typing import Any, Dict, List, Optional, Tuple

from components import drift
from metrics.eval_config import GATED_METRIC
from report import charts, images, metrics
from report.run_view import RunView
from report.scores import undefined
from transform.features import CLASS_NAMES

# Below this overall IoU a class is flagged in the headline: the model barely ever finds it.
POOR_CLASS_IOU = 0.1
# Slice table columns: (key, header, tooltip); per-class keys read m["iou"][class] / m["dice"][class].
COLUMNS: List[Tuple[str, str, str]] = (
    [
        ("examples", "examples", "eval examples in the slice"),
        ("mean_iou", "mean IoU", "mean over classes present of intersection / union (the gated metric)"),
        ("mean_dice", "mean Dice", "mean over classes present of 2·|A∩B| / (|A|+|B|)"),
        ("pixel_accuracy", "pixel acc.", "share of pixels whose predicted class is right"),
    ]
    + [(f"iou/{c}", f"IoU {c}", f"IoU of the {c} class") for c in CLASS_NAMES]
    + [(f"dice/{c}", f"Dice {c}", f"Dice of the {c} class") for c in CLASS_NAMES]
)


def slice_rows(found: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Flat rows (overall, species, breeds) with one key per COLUMNS entry, for tables and DataFrames."""
    named = [(metrics.OVERALL, found[metrics.OVERALL])] + sorted(
        found["slices"].items(), key=lambda kv: (not kv[0].startswith("species:"), kv[0].lower())
    )
    return [{"slice": name, **{key: metrics.metric_value(m, key) for key, _, _ in COLUMNS}} for name, m in named]


def tint(value: float) -> str:
    """Red (0) to green (1), so weak scores stand out."""
    return f"hsl({round(max(0.0, min(1.0, value)) * 120)},70%,88%)"


def _headline(view: RunView) -> Dict[str, Any]:
    overall = (view.metrics or {}).get(metrics.OVERALL, {})
    base = (view.baseline or {}).get(metrics.OVERALL, {})
    cards = []
    for key, label in (("mean_iou", "mean IoU"), ("mean_dice", "mean Dice"), ("pixel_accuracy", "pixel accuracy")):
        value, before = overall.get(key), base.get(key)
        delta = None if undefined(value) or undefined(before) else value - before
        cards.append({"key": key, "label": label, "value": value, "delta": delta})
    ious = overall.get("iou") or {}
    classes = [(v, c) for c, v in ious.items() if not undefined(v)]
    slices = [
        (m["mean_iou"], n)
        for n, m in ((view.metrics or {}).get("slices") or {}).items()
        if not undefined(m.get("mean_iou"))
    ]
    return {
        "cards": cards,
        "per_class": [(c, ious.get(c)) for c in CLASS_NAMES],
        "weakest_class": min(classes) if classes and view.metrics else None,
        "weakest_slice": min(slices) if slices else None,
        # A lax gate can bless a model that never finds a class; say so next to the verdict.
        "lost": [c for c in CLASS_NAMES if not undefined(ious.get(c)) and ious[c] < POOR_CLASS_IOU],
    }


def _comparison(view: RunView) -> List[Dict[str, Any]]:
    if not view.baseline:
        return []
    overall = (view.metrics or {}).get(metrics.OVERALL, {})
    base = view.baseline[metrics.OVERALL]
    rows = []
    for key, label, _ in COLUMNS[1:]:
        now, before = metrics.metric_value(overall, key), metrics.metric_value(base, key)
        rule = ""
        if key == GATED_METRIC and view.thresholds["max_regression"] is not None:
            rule = f"≥ {view.thresholds['max_regression'] * -1:+g}"
        rows.append(
            {
                "key": key,
                "label": label,
                "now": now,
                "before": before,
                "rule": rule,
                "change": "" if undefined(now) or undefined(before) else f"{now - before:+.3f}",
            }
        )
    return rows


def spans_text(dataset: Dict[str, Any]) -> str:
    """The spans a run trained on and their train examples, e.g. "1 (120), 2 (118); evaluated on 2"."""
    window = dataset.get("spans") or []
    if not window:
        return "—"
    return (
        ", ".join(f"{entry['span']} ({entry['train']} train)" for entry in window)
        + f"; evaluated on {window[-1]['span']}"
    )


def _drift(view: RunView) -> Optional[Dict[str, Any]]:
    """The drift gate's verdict and its comparisons, values against thresholds; None for a run without one."""
    block = view.summary.get("drift")
    if not block:
        return None
    rows = [
        dict(row, name=drift.COMPARATOR_NAMES.get(row["comparator"], row["comparator"])) for row in block["features"]
    ]
    return {**block, "rows": rows, "drifted": [row for row in rows if row["drifted"]]}


def history_view(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Runs (report.history rows, oldest first) numbered, and their candidate and baseline mean IoU as a chart."""
    chart = charts.line_chart(
        "mean IoU over runs",
        {
            "candidate": [r["candidate_mean_iou"] for r in runs],
            "baseline (served)": [r["baseline_mean_iou"] for r in runs],
        },
        x_label="run",
        dashed="baseline",
    )
    return {"rows": [dict(r, index=i) for i, r in enumerate(runs, 1)], "chart": chart}


def _facts(view: RunView) -> List[Tuple[str, str]]:
    s = view.summary
    data = s.get("dataset") or {}
    examples = data.get("examples") or {}
    skipped = ", ".join(f"{k}: {v}" for k, v in (data.get("skipped") or {}).items()) or "none"
    return [
        (k, str(v))
        for k, v in (
            ("profile", s.get("profile")),
            ("dataset", f"{data.get('name')} {data.get('version')} ({data.get('source')})"),
            ("examples", f"train {examples.get('train')}, eval {examples.get('eval')} (newest span)"),
            ("spans", spans_text(data)),
            ("skipped examples", skipped),
            ("model", s.get("model")),
            ("evaluation", view.evaluation_uri),
            ("serving versions", ", ".join(s.get("serving_versions") or []) or "none"),
        )
    ]


def _gate_text(thresholds: Dict[str, Optional[float]]) -> str:
    low, regression = thresholds["min_mean_iou"], thresholds["max_regression"]
    return " and ".join(
        [
            f"mean IoU ≥ {low:g}" if low is not None else "no absolute threshold",
            f"no more than {regression:g} below the baseline"
            if regression is not None
            else "no regression check (no baseline model yet)",
        ]
    )


def _image_uri(path: str) -> str:
    # Inline, so the page opens from disk, a mail or a CI artifact without its PNGs beside it.
    return "data:image/png;base64," + base64.b64encode(pathlib.Path(path).read_bytes()).decode()


def view_model(view: RunView) -> Dict[str, Any]:
    """The template's context for one run."""
    groups = [(metrics.OVERALL, view.metrics[metrics.OVERALL])] if view.metrics else []
    if view.metrics:
        groups += [(n, m) for n, m in sorted(view.metrics["slices"].items()) if n.startswith("species:")]
    if view.baseline:
        groups.append(("baseline overall", view.baseline[metrics.OVERALL]))
    bars = (
        [
            charts.bar_chart("IoU per class", "iou", groups, view.thresholds["min_mean_iou"]),
            charts.bar_chart("Dice per class", "dice", groups),
        ]
        if groups
        else []
    )
    # Newer Trainers also log the epoch index itself: it is the x axis, not a curve.
    train = [k for k in view.history if not k.startswith("val_") and k != "epoch"]
    curves = [charts.line_chart(k, {n: view.history[n] for n in (k, "val_" + k) if n in view.history}) for k in train]
    components = view.summary.get("components") or {}
    return {
        "view": view,
        "title": f"petseg run · {view.summary.get('profile')} · "
        f"{'stopped' if view.summary.get('stopped') else 'blessed' if view.blessed else 'not blessed'}",
        "gate": _gate_text(view.thresholds),
        "headline": _headline(view),
        "comparison": _comparison(view),
        "bars": bars,
        "curves": [c for c in curves if c],
        "columns": COLUMNS,
        "rows": [
            dict(row, kind=row["slice"].split(":")[0] if ":" in row["slice"] else "overall")
            for row in slice_rows(view.metrics)
        ]
        if view.metrics
        else [],
        "mask_legend": [
            (name, "rgb(%d, %d, %d)" % tuple(int(x) for x in colour))
            for name, colour in zip(CLASS_NAMES, images.MASK_COLOURS)
        ],
        "masks": [(_image_uri(p), pathlib.Path(p).stem) for p in view.images],
        "facts": _facts(view),
        "components": components,
        "drift": _drift(view),
        "history": history_view(view.runs),
        "stopped": view.summary.get("stopped"),
        "total_seconds": sum(c.get("seconds") or 0 for c in components.values()),
        "cached": sum(1 for c in components.values() if c.get("cached")),
        "poor_class_iou": POOR_CLASS_IOU,
    }

"""The dashboard's SVG charts as geometry: grouped bars per class, per-epoch curves; the template only draws them."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from report.scores import NA, undefined
from transform.features import CLASS_NAMES

BAR_COLOURS = ["#3566c4", "#e08a2c", "#7a4fb0", "#9aa3b2", "#2f9c6b"]


def bar_chart(
    title: str, prefix: str, groups: Sequence[Tuple[str, Dict[str, Any]]], gate: Optional[float] = None
) -> Dict[str, Any]:
    """Grouped bars: one group per class plus the mean, one bar per (series name, metrics); gate line on the mean.

    `prefix` is "iou" or "dice": a class's bar reads metrics[prefix][class], the mean's metrics["mean_" + prefix].
    """
    width, height, left, bottom, top = 560, 230, 36, 36, 14
    plot_h = height - bottom - top
    categories = list(CLASS_NAMES) + ["mean"]
    group_w = (width - left - 10) / len(categories)
    bar_w = (group_w - 16) / max(1, len(groups))
    chart: Dict[str, Any] = {
        "title": title,
        "width": width,
        "height": height,
        "left": left,
        "base": top + plot_h,
        "axis_y": height - bottom + 16,
        "ticks": [(tick, top + plot_h * (1 - tick)) for tick in (0, 0.25, 0.5, 0.75, 1.0)],
        "categories": [],
        "gate": gate,
        "legend": [(name, BAR_COLOURS[i % len(BAR_COLOURS)]) for i, (name, _) in enumerate(groups)],
    }
    for ci, category in enumerate(categories):
        x0 = left + ci * group_w + 8
        bars = []
        for gi, (name, m) in enumerate(groups):
            value = m.get(f"mean_{prefix}") if category == "mean" else (m.get(prefix) or {}).get(category)
            defined = not undefined(value)
            # At least 1.5 px and a printed value, so a score of 0 reads as 0, not as a missing bar.
            h = max(1.5, plot_h * max(0.0, min(1.0, value))) if defined else 0.0
            bars.append(
                {
                    "x": x0 + gi * bar_w,
                    "w": bar_w,
                    "h": h,
                    "value": value if defined else None,
                    "series": name,
                    "colour": BAR_COLOURS[gi % len(BAR_COLOURS)],
                    "label": f"{name} · {category}: " + (f"{value:.3f}" if defined else f"{NA} (undefined)"),
                }
            )
        chart["categories"].append(
            {"name": category, "x0": x0, "centre": x0 + (group_w - 16) / 2, "bars": bars, "gate_x2": x0 + group_w - 12}
        )
    chart["gate_y"] = top + plot_h * (1 - gate) if gate is not None else None
    return chart


def line_chart(
    title: str, series: Dict[str, List[float]], x_label: str = "epoch", dashed: str = "val_"
) -> Optional[Dict[str, Any]]:
    """Per-epoch curves (solid, and dashed for names starting with `dashed`) on a shared y range; None when no
    value is defined.

    Each line's points are (x, y, epoch (or run) from 1, value); an undefined value leaves its epoch out.
    """
    width, height, left, bottom, top, right = 420, 200, 44, 28, 12, 10
    values = [v for vs in series.values() for v in vs if not undefined(v)]
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

    lines = [
        {
            "name": name,
            "kind": "val" if name.startswith(dashed) else "train",
            "points": [(*xy(i, v), i + 1, v) for i, v in enumerate(vs) if not undefined(v)],
        }
        for name, vs in series.items()
    ]
    return {
        "title": title,
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "centre": left + plot_w / 2,
        "epochs": epochs,
        "lines": lines,
        "x_label": x_label,
        "grid": [(lo + (hi - lo) * frac, xy(0, lo + (hi - lo) * frac)[1]) for frac in (0, 0.5, 1)],
    }

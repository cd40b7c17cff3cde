"""Weeks of retraining on synthetic spans, each a real `petseg run` into one output folder: the drift gate's
scenario."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
from typing import Dict, List

from dataset import archive, synthetic
from support import petseg

# 150 images a span, the smallest the drift thresholds are calibrated for; breeds drawn at random.
TRAIN, TEST = 120, 30
RANDOM = synthetic.SpanStyle(random_breeds=True)
DOGS = dataclasses.replace(RANDOM, species=archive.DOG)
# span -> (seed, style): 1 and 2 are alike; 3 holds dogs only; 4 and 5 are dogs only (like 3, the model
# then served) from a brighter camera and with larger photos.
SPANS = {
    1: (11, RANDOM),
    2: (12, RANDOM),
    3: (13, DOGS),
    4: (14, dataclasses.replace(DOGS, brightness=40.0)),
    5: (15, dataclasses.replace(DOGS, scale=1.5)),
}


@dataclasses.dataclass
class Run:
    """One `petseg run`: its arguments, exit code, console (stdout and stderr), summary.json and dashboard."""

    args: List[str]
    returncode: int
    console: str
    summary: dict
    dashboard: pathlib.Path  # a copy: the next run rewrites the output's own


@dataclasses.dataclass
class Scenario:
    raw: pathlib.Path
    output: pathlib.Path
    runs: Dict[str, Run]

    @property
    def pattern(self) -> str:
        return str(self.raw / "span-{SPAN}")


def petseg_run(output: pathlib.Path, pattern: str, name: str, *args: str) -> Run:
    """`petseg run --profile tiny` on the spans with warm start; a failing run is returned, not raised."""
    argv = [
        "--profile",
        "tiny",
        "--oxford-raw-dir",
        pattern,
        "--set",
        "train.warm_start=true",
        "--set",
        "eval.report_images=1",
        *args,
    ]
    proc = subprocess.run(
        petseg.command(output, *argv), capture_output=True, text=True, timeout=petseg.TIMEOUT, cwd=petseg.REPO
    )
    dashboard = output.parent / "dashboards" / f"{name}.html"
    dashboard.parent.mkdir(exist_ok=True)
    shutil.copy(output / "report" / "index.html", dashboard)
    return Run(list(args), proc.returncode, proc.stdout + proc.stderr, petseg.summary(output), dashboard)


def build(root: pathlib.Path) -> Scenario:
    """Span by span, as weeks arrive; named runs:

    - span1, span2: undrifted spans, each trained on, blessed and pushed;
    - span3_stop: dogs only, stopped by the gate; span3_warn: the same span with drift.action=warn;
    - span4_stop, span5_stop: a brighter camera, larger photos (each stopped);
    - window, window_again: spans 1 and 2 as a window (data.span=2, data.span_window=2), then unchanged.
    """
    raw, output = root / "raw", root / "run"
    scenario = Scenario(raw, output, {})
    pattern = scenario.pattern
    for span, (seed, style) in SPANS.items():
        synthetic.write_archive(raw / f"span-{span}", TRAIN, TEST, seed=seed, style=style)
        if span == 3:
            runs = {"span3_stop": (), "span3_warn": ("--set", "drift.action=warn")}
        else:
            runs = {f"span{span}" if span < 3 else f"span{span}_stop": ()}
        for name, args in runs.items():
            scenario.runs[name] = petseg_run(output, pattern, name, *args)
    window = ("--set", "data.span=2", "--set", "data.span_window=2", "--set", "drift.action=warn")
    for name in ("window", "window_again"):
        scenario.runs[name] = petseg_run(output, pattern, name, *window)
    return scenario

"""Drift thresholds: the drift gate's comparisons on pairs of synthetic spans, undrifted and drifted, through the
pipeline's own executors (TfdsExampleGen, StatisticsGen, DistributionValidator); `python -m bench.drift_calibration`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from components import drift, example_gen
from config.settings import DriftConfig
from dataset import archive, synthetic

# Spans of 150-600 images, a fifth of them the test split (the synthetic archive's own share), breeds drawn
# at random. A second week's volume is within a fifth of the first's: real weekly data is never exactly
# the same size, and synthetic spans are only as large as they are asked to be.
MIN_IMAGES, MAX_IMAGES = 150, 600
TEST_SHARE = 0.2
VOLUME_CHANGE = 1.25
RANDOM = synthetic.SpanStyle(random_breeds=True)
# Changes the gate must catch, each on a span otherwise like its baseline.
DRIFTS: Dict[str, synthetic.SpanStyle] = {
    "dogs only": dataclasses.replace(RANDOM, species=archive.DOG),
    "brighter camera (+40)": dataclasses.replace(RANDOM, brightness=40.0),
    "larger photos (x1.5)": dataclasses.replace(RANDOM, scale=1.5),
}
HALF_THE_IMAGES = "half the images"
# Every threshold this close to 0 reports every comparison's value (nothing passes unmeasured).
_MEASURE_ALL = DriftConfig(
    **{key: 1e-9 for _, _, key in drift.COMPARISONS}, min_examples_ratio=1.0, max_examples_ratio=1.0
)


def split_sizes(images: int) -> tuple:
    test = round(images * TEST_SHARE)
    return images - test, test


def span_statistics(raw_dir: pathlib.Path, work: pathlib.Path):
    """StatisticsGen's output for one extracted span, made by TfdsExampleGen's and StatisticsGen's executors."""
    from tfx.components.statistics_gen import executor as statistics_executor
    from tfx.types import standard_artifacts

    from pipeline.pipeline import SCHEMA_FILE

    examples = standard_artifacts.Examples()
    examples.uri = str(work / "examples")
    example_gen.Executor().Do(
        {},
        {example_gen.EXAMPLES_KEY: [examples]},
        {
            "data_dir": str(work / "tfds"),
            "raw_dir": str(raw_dir),
            "source": "raw-dir",
            "version": "4.*.*",
            "strict": 0,
            "synthetic_train_images": 0,
            "synthetic_test_images": 0,
            "synthetic_seed": 0,
        },
    )
    schema = standard_artifacts.Schema()
    schema.uri = str(work / "schema")  # StatisticsGen reads the only file of the artifact's folder
    pathlib.Path(schema.uri).mkdir(parents=True, exist_ok=True)
    shutil.copy(SCHEMA_FILE, schema.uri)
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = str(work / "statistics")
    statistics_executor.Executor().Do(
        {"examples": [examples], "schema": [schema]}, {"statistics": [statistics]}, {"exclude_splits": "[]"}
    )
    statistics.span = examples.span
    return statistics


def measure(current, baseline, work: pathlib.Path, config: DriftConfig = _MEASURE_ALL) -> Dict[str, Any]:
    """The drift gate's report (drift.json) for two spans' statistics under `config`."""
    from tfx.types import standard_artifacts

    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = str(work)
    drift.Executor().Do(
        {"statistics": [current], "baseline_statistics": [baseline]},
        {"anomalies": [anomalies]},
        {
            "distribution_validator_config": drift.validator_config(config),
            "include_split_pairs": json.dumps([list(drift.SPLIT_PAIR)]),
        },
    )
    return drift.load_report(anomalies)


def make_span(
    root: pathlib.Path, images: int, seed: int, style: synthetic.SpanStyle = RANDOM, like_oxford: bool = False
):
    """Writes a synthetic span of `images` pets and returns its statistics."""
    raw = synthetic.write_archive(root / "raw", *split_sizes(images), seed=seed, like_oxford=like_oxford, style=style)
    return span_statistics(raw, root)


def values(report: Dict[str, Any]) -> Dict[str, float]:
    """{"<feature> <comparator>": value} of one report."""
    return {f"{row['feature']} {row['comparator']}": row["value"] for row in report["features"]}


def calibrate(
    work: pathlib.Path, pairs: int, seed: int = 0, like_oxford: bool = False, log=sys.stderr
) -> Dict[str, Any]:
    """Undrifted pairs' values (sizes drawn in [MIN_IMAGES, MAX_IMAGES]) and each drift of DRIFTS on one pair."""
    rng = np.random.default_rng(seed)
    undrifted: List[Dict[str, float]] = []
    sizes = []
    for pair in range(pairs):
        images = int(rng.integers(MIN_IMAGES, MAX_IMAGES + 1))
        second = int(round(images * float(np.exp(rng.uniform(-1, 1) * np.log(VOLUME_CHANGE)))))
        base = make_span(work / f"pair-{pair}-a", images, seed * 1000 + 2 * pair, like_oxford=like_oxford)
        new = make_span(work / f"pair-{pair}-b", second, seed * 1000 + 2 * pair + 1, like_oxford=like_oxford)
        undrifted.append(values(measure(new, base, work / f"pair-{pair}-anomalies")))
        sizes.append((images, second))
        print(
            f"[calibration] pair {pair + 1}/{pairs}: {images} vs {second} images: {undrifted[-1]}", file=log, flush=True
        )
    drifted: Dict[str, Dict[str, float]] = {}
    base = make_span(work / "drift-base", MAX_IMAGES // 2, seed * 1000 + 999, like_oxford=like_oxford)
    for name, style in DRIFTS.items():
        span = make_span(work / f"drift-{len(drifted)}", MAX_IMAGES // 2, seed * 1000 + 998, style, like_oxford)
        drifted[name] = values(measure(span, base, work / f"drift-{len(drifted)}-anomalies"))
    half = make_span(work / "drift-half", MAX_IMAGES // 4, seed * 1000 + 997, like_oxford=like_oxford)
    drifted[HALF_THE_IMAGES] = values(measure(half, base, work / "drift-half-anomalies"))
    return {"pairs": pairs, "sizes": sizes, "like_oxford": like_oxford, "undrifted": undrifted, "drifted": drifted}


def table(result: Dict[str, Any], defaults: Optional[DriftConfig] = None) -> str:
    """Percentiles of the undrifted values per comparison, the default beside them, and the drifted values."""
    defaults = defaults or DriftConfig()
    thresholds = {f"{feature} {comparator}": getattr(defaults, key) for feature, comparator, key in drift.COMPARISONS}
    thresholds[f"{drift.NUM_EXAMPLES} min_fraction_threshold"] = defaults.min_examples_ratio
    thresholds[f"{drift.NUM_EXAMPLES} max_fraction_threshold"] = defaults.max_examples_ratio
    names = list(result["undrifted"][0])
    drifts = list(result["drifted"])
    lines = [
        "| comparison | p50 | p90 | p99 | max | default | " + " | ".join(drifts) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(drifts),
    ]
    for name in names:
        column = np.array([pair[name] for pair in result["undrifted"]], dtype=float)
        low = name.endswith("min_fraction_threshold")
        # For the lower bound of the count ratio the tail that matters is the low one.
        p50, p90, p99 = (np.percentile(column, 100 - q if low else q) for q in (50, 90, 99))
        extreme = column.min() if low else column.max()
        cells = [f"{v:.4f}" for v in (p50, p90, p99, extreme)] + [f"{thresholds[name]:g}"]
        cells += [f"{result['drifted'][d][name]:.4f}" for d in drifts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drift_calibration", description=__doc__)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--like-oxford", action="store_true", help="37 breeds and the real set's photo sizes")
    parser.add_argument("--output", metavar="FILE", help="also write every pair's values as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="petseg-drift-") as work:
        result = calibrate(pathlib.Path(work), args.pairs, args.seed, args.like_oxford)
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drift of the newest span from the served model's training data: TFX's DistributionValidator, and the gate after
it."""

import json
import logging
import os
from typing import Any, Dict, List, Optional

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx import types
from tfx.components import DistributionValidator
from tfx.components.distribution_validator import executor as validator_executor
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import distribution_validator_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import io_utils

from components import internals
from config import names
from config.settings import DriftConfig
from transform import features

log = logging.getLogger(__name__)

# The newest span's train split against the baseline span's: one span against one span, on the larger split.
TRAIN = "train"
SPLIT_PAIR = (TRAIN, TRAIN)
# Beside the validator's SplitPair-*/SchemaDiff.pb: every comparison's value, threshold and verdict.
REPORT_FILE = "drift.json"
PASSED, DRIFTED, NO_BASELINE = "passed", "drifted", "no_baseline"
ACTIONS = ("stop", "warn")

# (feature, TFDV comparator, DriftConfig threshold): categories by their largest change in share, the
# per-image numbers by their histograms' divergence. Both are normalised, so spans of different sizes compare.
# The divergence reads StatisticsGen's quantiles histograms: photo sizes pile up on a few values (most real
# photos are 500 px on their long side), and the equal-width histograms' buckets then move with each span's
# largest photo, which made undrifted pairs of Oxford-like spans diverge as much as photos 1.2x larger
# (bench/README.md, "Drift thresholds").
COMPARISONS = (
    (features.SPECIES_KEY, "infinity_norm", "species_linf"),
    (features.LABEL_KEY, "infinity_norm", "label_linf"),
    (features.IMAGE_HEIGHT_KEY, "jensen_shannon_divergence", "height_jsd"),
    (features.IMAGE_WIDTH_KEY, "jensen_shannon_divergence", "width_jsd"),
    (features.IMAGE_BRIGHTNESS_KEY, "jensen_shannon_divergence", "brightness_jsd"),
)
# The example count compared per span, as a ratio to the baseline span's.
NUM_EXAMPLES = "num_examples"
_Type, _Measurement = anomalies_pb2.AnomalyInfo.Type, anomalies_pb2.DriftSkewInfo.Measurement
# TFDV comparator -> (the measurement it records, the anomaly it raises above its threshold).
_COMPARATOR_KINDS = {
    "infinity_norm": (_Measurement.L_INFTY, _Type.COMPARATOR_L_INFTY_HIGH),
    "jensen_shannon_divergence": (
        _Measurement.JENSEN_SHANNON_DIVERGENCE,
        _Type.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
    ),
    "normalized_abs_difference": (
        _Measurement.NORMALIZED_ABSOLUTE_DIFFERENCE,
        _Type.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH,
    ),
}
# num_examples_comparator field -> the anomaly that says the count is past it.
_COUNT_LIMITS = {
    "min_fraction_threshold": _Type.COMPARATOR_LOW_NUM_EXAMPLES,
    "max_fraction_threshold": _Type.COMPARATOR_HIGH_NUM_EXAMPLES,
}
COMPARATOR_NAMES = {
    "infinity_norm": "L-infinity distance",
    "jensen_shannon_divergence": "Jensen-Shannon divergence",
    "normalized_abs_difference": "normalized absolute difference",
    "min_fraction_threshold": "ratio to the baseline's count, at least",
    "max_fraction_threshold": "ratio to the baseline's count, at most",
}


class DriftFoundError(RuntimeError):
    """The newest span drifted from the served model's training data and drift.action is stop."""


def validator_config(drift: DriftConfig) -> distribution_validator_pb2.DistributionValidatorConfig:
    """The DistributionValidator config for the `drift` settings."""
    config = distribution_validator_pb2.DistributionValidatorConfig()
    for feature, comparator, key in COMPARISONS:
        entry = config.default_slice_config.feature.add()
        entry.path.step.append(feature)
        getattr(entry.distribution_comparator, comparator).threshold = getattr(drift, key)
        if comparator == "jensen_shannon_divergence":
            entry.distribution_comparator.jensen_shannon_divergence.source.type = (
                schema_pb2.HistogramSelection.QUANTILES
            )
    counts = config.default_slice_config.num_examples_comparator
    counts.min_fraction_threshold = drift.min_examples_ratio
    counts.max_fraction_threshold = drift.max_examples_ratio
    return config


def holds_statistics(statistics: types.Artifact) -> bool:
    """Whether an ExampleStatistics artifact has the compared split (LatestBlessedModel's may be empty)."""
    return TRAIN in artifact_utils.decode_split_names(statistics.split_names or "[]") and fileio.exists(
        os.path.join(artifact_utils.get_split_uri([statistics], TRAIN), stats_artifact_utils.BINARY_PB_BASENAME)
    )


def _num_examples(statistics: types.Artifact) -> int:
    return stats_artifact_utils.load_statistics(statistics, TRAIN).proto().datasets[0].num_examples


def compare(
    anomalies: anomalies_pb2.Anomalies,
    config: distribution_validator_pb2.DistributionValidatorConfig,
    num_examples: int,
    baseline_num_examples: int,
) -> List[Dict[str, Any]]:
    """One row per configured comparison: feature, comparator, value, threshold, drifted.

    Values and verdicts are TFDV's (the validator's drift measurements and anomalies); only the example
    count's ratio, which TFDV states in prose, is recomputed here for display.
    """
    measured = {
        ".".join(info.path.step): {m.type: m.value for m in info.drift_measurements}
        for info in anomalies.drift_skew_info
    }
    rows = []
    for entry in config.default_slice_config.feature:
        name = ".".join(entry.path.step)
        reasons = (
            {reason.type for reason in anomalies.anomaly_info[name].reason} if name in anomalies.anomaly_info else set()
        )
        for comparator, (measurement, anomaly) in _COMPARATOR_KINDS.items():
            if not entry.distribution_comparator.HasField(comparator):
                continue
            value = measured.get(name, {}).get(measurement)
            # A comparison TFDV could not make (the feature missing on one side) counts as drift.
            rows.append(
                {
                    "feature": name,
                    "comparator": comparator,
                    "value": value,
                    "threshold": getattr(entry.distribution_comparator, comparator).threshold,
                    "drifted": anomaly in reasons or value is None,
                }
            )
    counts = config.default_slice_config.num_examples_comparator
    dataset_reasons = {reason.type for reason in anomalies.dataset_anomaly_info.reason}
    ratio = num_examples / baseline_num_examples if baseline_num_examples else None
    for limit, anomaly in _COUNT_LIMITS.items():
        if counts.HasField(limit):
            rows.append(
                {
                    "feature": NUM_EXAMPLES,
                    "comparator": limit,
                    "value": ratio,
                    "threshold": getattr(counts, limit),
                    "drifted": anomaly in dataset_reasons,
                }
            )
    return rows


class Executor(validator_executor.Executor):
    """TFX's DistributionValidator executor (see `internals.distribution_validator_fixed`), saying what it found.

    - A baseline without statistics (LatestBlessedModel before the first push, or a version pushed
      without them) is "no baseline": the run goes on, as TFX does for an empty baseline channel.
    - Every comparison's value, threshold and verdict go to `drift.json` in the anomalies artifact,
      which the gate, summary.json and the dashboard read.
    """

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ):
        key = standard_component_specs.BASELINE_STATISTICS_KEY
        statistics = artifact_utils.get_single_instance(input_dict[standard_component_specs.STATISTICS_KEY])
        baseline = next(iter(input_dict.get(key) or []), None)
        if baseline is not None and not holds_statistics(baseline):
            baseline = None
        report: Dict[str, Any] = {
            "verdict": NO_BASELINE,
            "span": statistics.span,
            "baseline_version": None,
            "baseline_span": None,
            "features": [],
        }
        with internals.distribution_validator_fixed(exec_properties) as fixed:
            result = super().Do({**input_dict, key: [baseline] if baseline else []}, output_dict, fixed)
            config = fixed[standard_component_specs.DISTRIBUTION_VALIDATOR_CONFIG_KEY]
        anomalies_artifact = artifact_utils.get_single_instance(output_dict[standard_component_specs.ANOMALIES_KEY])
        if baseline is None:
            log.info("No baseline: no served model with training statistics; the drift gate lets this span pass")
        else:
            anomalies = load_anomalies(anomalies_artifact)
            rows = compare(anomalies, config, _num_examples(statistics), _num_examples(baseline))
            version = (
                baseline.get_int_custom_property(names.PUSHED_VERSION)
                if baseline.has_custom_property(names.PUSHED_VERSION)
                else None
            )
            report.update(
                verdict=DRIFTED if any(row["drifted"] for row in rows) else PASSED,
                features=rows,
                baseline_version=version,
                baseline_span=baseline.span,
            )
        io_utils.write_string_file(
            os.path.join(anomalies_artifact.uri, REPORT_FILE), json.dumps(report, indent=2) + "\n"
        )
        return result


def load_anomalies(anomalies: types.Artifact) -> anomalies_pb2.Anomalies:
    """The validator's Anomalies proto for SPLIT_PAIR."""
    path = os.path.join(anomalies.uri, "SplitPair-%s_%s" % SPLIT_PAIR, validator_executor.DEFAULT_FILE_NAME)
    return anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(path))


def load_report(anomalies: types.Artifact) -> Dict[str, Any]:
    """`drift.json` of a DriftValidator's anomalies: {"verdict", "baseline_version", "features", ...}."""
    path = os.path.join(anomalies.uri, REPORT_FILE)
    if not fileio.exists(path):
        raise FileNotFoundError(f"no {REPORT_FILE} in {anomalies.uri}; is this the output of DriftValidator?")
    return json.loads(io_utils.read_string_file(path))


def _number(value: Optional[float]) -> str:
    return "not comparable" if value is None else f"{value:.4g}"


def describe(report: Dict[str, Any]) -> str:
    """One line per drifted comparison: feature, what was measured, value and threshold; "" when none drifted."""
    return "\n".join(
        f"  {row['feature']}: {COMPARATOR_NAMES.get(row['comparator'], row['comparator'])} {_number(row['value'])}"
        f" (threshold {row['threshold']:g})"
        for row in report["features"]
        if row["drifted"]
    )


class DriftValidator(DistributionValidator):
    """Drop-in for `tfx.components.DistributionValidator` that runs on every orchestrator and writes `drift.json`.

    Wire its `baseline_statistics` to LatestBlessedModel's `statistics`: what the served model's newest
    span looked like, or nothing before the first push.
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, statistics: types.BaseChannel, baseline_statistics: types.BaseChannel, drift: DriftConfig):
        super().__init__(
            statistics=statistics,
            baseline_statistics=baseline_statistics,
            config=validator_config(drift),
            include_split_pairs=[SPLIT_PAIR],
        )


@component
def DriftGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies], action: Parameter[str]) -> None:
    """Stops the run (action "stop") or warns (action "warn") when DriftValidator found drift.

    Wire it as `transform.add_upstream_node(DriftGate(anomalies=..., action=config.drift.action))`.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    report = load_report(anomalies)
    if report["verdict"] != DRIFTED:
        log.info("Drift gate: %s", report["verdict"])
        return
    against = f"the served model's training data (version {report['baseline_version']}, span {report['baseline_span']})"
    found = f"Span {report['span']} drifted from {against}:\n{describe(report)}"
    if action == "stop":
        raise DriftFoundError(
            f"{found}\nStopped before Transform: nothing was trained or pushed. Review the span (summary.json's "
            "`drift`, the dashboard); to train on it anyway, run again with --set drift.action=warn."
        )
    log.warning("%s\ndrift.action=warn: training on it anyway.", found)

"""The Evaluator's TFMA output as plain python: metrics per slice, the baseline's, the gate and its verdict."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers import eval_config_writer

from metrics import segmentation as sm
from metrics.eval_config import GATED_METRIC
from transform.features import CLASS_NAMES, LABEL_KEY, SPECIES_KEY, SPECIES_NAMES

OVERALL = "overall"
EXAMPLE_COUNT = "example_count"  # key of TFMA's ExampleCount metric


def load_breed_names(data_dir: str) -> List[str]:
    """The 37 breed names TFDS ships with the prepared dataset: `label` slice ids index this list."""
    import tensorflow_datasets as tfds  # a second or two of imports, only once a run is read

    return tfds.builder("oxford_iiit_pet", data_dir=data_dir).info.features["label"].names


def load_metrics(evaluation_uri: str, breed_names: Sequence[str] = (), baseline: bool = False) -> Dict[str, Any]:
    """Evaluator output as {"overall": {...}, "slices": {"species:cat": {...}, ...}}.

    Each slice maps to `mean_iou`, `mean_dice`, `pixel_accuracy`, `iou`/`dice` ({class: value}),
    `pixels` and `examples`. Absent classes are NaN (see metrics.segmentation).
    `breed_names` names `label` slices (TFDS label names); unknown ids stay numeric.
    `baseline=True` reads the baseline model's metrics; it needs an evaluation with a baseline.
    """
    result = tfma.load_eval_result(evaluation_uri, model_name=model_name(evaluation_uri, baseline))
    loaded: Dict[str, Any] = {OVERALL: {}, "slices": {}}
    for slice_key, metrics_by_output in result.slicing_metrics:
        values = _plain_metrics(metrics_by_output.get("", {}).get("", {}))
        if slice_key == ():
            loaded[OVERALL] = values
        else:
            loaded["slices"][_slice_name(slice_key, breed_names)] = values
    return loaded


def load_baseline_metrics(evaluation_uri: str, breed_names: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """The baseline model's metrics in `load_metrics` form, or None without a baseline."""
    if _baseline_spec_name(evaluation_uri) is None:
        return None
    return load_metrics(evaluation_uri, breed_names, baseline=True)


def metric_value(m: Mapping[str, Any], key: str) -> Any:
    """One slice's score by key: "mean_iou", "pixel_accuracy", ... or "<iou|dice>/<class>" (None if absent)."""
    if "/" in key:
        prefix, cls = key.split("/")
        return (m.get(prefix) or {}).get(cls)
    return m.get(key)


def is_blessed(evaluation_uri: str) -> bool:
    """Whether TFMA's validation passed (the Evaluator blesses on exactly this)."""
    return tfma.load_validation_result(evaluation_uri).validation_ok


def model_name(evaluation_uri: str, baseline: bool = False) -> Optional[str]:
    """The name TFMA stored the candidate's (or the baseline's) results under; None for a lone model."""
    specs = _specs(evaluation_uri)
    if baseline:
        name = _baseline_spec_name(evaluation_uri)
        if name is None:
            raise ValueError(f"{evaluation_uri}: evaluation has no baseline model")
        return name
    return next((s.name for s in specs if not s.is_baseline), None) if len(specs) > 1 else None


def gate_thresholds(evaluation_uri: str) -> Dict[str, Optional[float]]:
    """The mean-IoU bounds the Evaluator applied, read from the eval config stored with its output.

    TFX drops the change threshold when there is no baseline, so `max_regression` is then None.
    """
    config, *_ = eval_config_writer.load_eval_run(evaluation_uri)
    gated = {m.__name__ for m in sm.METRICS if m.DEFAULT_NAME == GATED_METRIC}
    found: Dict[str, Optional[float]] = {"min_mean_iou": None, "max_regression": None}
    for spec in config.metrics_specs if config else ():
        for metric in spec.metrics:
            if metric.class_name not in gated:
                continue
            thresholds = [t.threshold for t in metric.per_slice_thresholds] + (
                [metric.threshold] if metric.HasField("threshold") else []
            )
            for threshold in thresholds:
                if threshold.value_threshold.HasField("lower_bound"):
                    found["min_mean_iou"] = threshold.value_threshold.lower_bound.value
                if threshold.change_threshold.HasField("absolute"):
                    found["max_regression"] = -threshold.change_threshold.absolute.value
    return found


def validation_failures(evaluation_uri: str) -> List[str]:
    """TFMA's reasons for not blessing, one readable line each."""
    result = tfma.load_validation_result(evaluation_uri)
    lines = [
        f"{failure.metric_key.name or 'metric'}: {failure.message}".strip()
        for per_slice in result.metric_validations_per_slice
        for failure in per_slice.failures
    ]
    lines += [f"slice not found: {s}" for s in result.missing_slices]
    if result.missing_thresholds:
        lines.append(f"{len(result.missing_thresholds)} threshold(s) name a metric that was not computed")
    return lines


def _specs(evaluation_uri: str) -> List[tfma.ModelSpec]:
    config, *_ = eval_config_writer.load_eval_run(evaluation_uri)
    return list(config.model_specs) if config else []


def _baseline_spec_name(evaluation_uri: str) -> Optional[str]:
    return next((s.name for s in _specs(evaluation_uri) if s.is_baseline), None)


def _plain_metrics(raw: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """TFMA's {name: {"doubleValue": v}} as the summary's nested floats."""
    values = {
        name: float(value["doubleValue"])
        for name, value in raw.items()
        if isinstance(value, Mapping) and "doubleValue" in value
    }
    plain: Dict[str, Any] = {name: values.get(name) for name in (sm.MEAN_IOU, sm.MEAN_DICE, sm.PIXEL_ACCURACY)}
    for prefix in (sm.IOU_PREFIX, sm.DICE_PREFIX):
        plain[prefix] = {c: values.get(sm.class_key(prefix, c)) for c in CLASS_NAMES}
    plain["pixels"] = _maybe_int(values.get(sm.PIXEL_COUNT))
    plain["examples"] = _maybe_int(values.get(EXAMPLE_COUNT))
    return plain


def _maybe_int(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(value)


def _slice_name(slice_key: Tuple[Tuple[str, Any], ...], breed_names: Sequence[str]) -> str:
    return ",".join(f"{column}:{_value_name(column, value, breed_names)}" for column, value in slice_key)


def _value_name(column: str, value: Any, breed_names: Sequence[str]) -> str:
    names = {SPECIES_KEY: SPECIES_NAMES, LABEL_KEY: breed_names}.get(column, ())
    if isinstance(value, bytes):
        value = value.decode()
    try:
        index = int(value)
    except (TypeError, ValueError):
        return str(value)
    return names[index] if 0 <= index < len(names) else str(value)

"""TFMA EvalConfig for the Evaluator's blessing gate, and its results as plain python.

Decisions:
- The Evaluator reads raw TFDS examples; `transform_features` turns them into the transformed
  `mask` that serves as the label (TFMA looks label keys up in transformed features first), and
  `serving_examples` runs transform + model, so candidate and baseline are judged on exactly
  the preprocessing they serve with.
- No example weight key: pixels are the unit, and TFMA's segmentation preprocessors drop data
  when example weights are configured (DESIGN §4).
- The gate (`mean_iou` >= min_mean_iou, and no more than max_regression below the baseline)
  applies to the overall slice only. A threshold without a slice spec applies to every slice,
  and one breed's few dozen images would then veto a model on noise. Slices are for reading.
- Default metrics are off: the model's compiled Keras loss/metrics expect training-time
  tensors, not the `serving_examples` outputs.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers import eval_config_writer

from components import segmentation_metrics as sm
from pipeline.config import EvalConfig
from transform.features import CLASS_NAMES, LABEL_KEY, MASK_KEY, SPECIES_KEY, SPECIES_NAMES

SIGNATURE_NAME = "serving_examples"
PREPROCESSING_FUNCTION = "transform_features"
GATED_METRIC = sm.MEAN_IOU
EXAMPLE_COUNT = "example_count"  # key of TFMA's ExampleCount metric
EXAMPLE_COUNT_CLASS = "ExampleCount"
OVERALL = "overall"


def build_eval_config(eval_config: EvalConfig) -> tfma.EvalConfig:
    """The Evaluator's config: segmentation metrics per slice and the mean-IoU gate."""
    overall = tfma.SlicingSpec()
    gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": eval_config.min_mean_iou}),
        # TFX's Evaluator drops change thresholds when there is no baseline yet (first model).
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -eval_config.max_regression}))
    metrics = [tfma.MetricConfig(class_name=EXAMPLE_COUNT_CLASS)]
    for metric in sm.METRICS:
        config = tfma.MetricConfig(class_name=metric.__name__, module=sm.__name__)
        if metric.DEFAULT_NAME == GATED_METRIC:
            config.per_slice_thresholds.add(slicing_specs=[overall], threshold=gate)
        metrics.append(config)
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=SIGNATURE_NAME,
            preprocessing_function_names=[PREPROCESSING_FUNCTION],
            label_key=MASK_KEY,
            prediction_key=MASK_KEY)],
        slicing_specs=[overall, tfma.SlicingSpec(feature_keys=[SPECIES_KEY]),
                       tfma.SlicingSpec(feature_keys=[LABEL_KEY])],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        options=tfma.Options(include_default_metrics={"value": False}))


def load_metrics(evaluation_uri: str, breed_names: Sequence[str] = (),
                 baseline: bool = False) -> Dict[str, Any]:
    """Evaluator output as {"overall": {...}, "slices": {"species:cat": {...}, ...}}.

    Each slice maps to `mean_iou`, `mean_dice`, `pixel_accuracy`, `iou`/`dice` ({class: value}),
    `pixels` and `examples`. Absent classes are NaN (see components.segmentation_metrics).
    `breed_names` names `label` slices (TFDS label names); unknown ids stay numeric.
    `baseline=True` reads the baseline model's metrics; it needs an evaluation with a baseline.
    """
    model_name = _model_name(evaluation_uri, baseline)
    result = tfma.load_eval_result(evaluation_uri, model_name=model_name)
    loaded: Dict[str, Any] = {OVERALL: {}, "slices": {}}
    for slice_key, metrics_by_output in result.slicing_metrics:
        values = _plain_metrics(metrics_by_output.get("", {}).get("", {}))
        if slice_key == ():
            loaded[OVERALL] = values
        else:
            loaded["slices"][_slice_name(slice_key, breed_names)] = values
    return loaded


def load_baseline_metrics(evaluation_uri: str,
                          breed_names: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """The baseline model's metrics in `load_metrics` form, or None without a baseline."""
    if _baseline_spec_name(evaluation_uri) is None:
        return None
    return load_metrics(evaluation_uri, breed_names, baseline=True)


def is_blessed(evaluation_uri: str) -> bool:
    """Whether TFMA's validation passed (the Evaluator blesses on exactly this)."""
    return tfma.load_validation_result(evaluation_uri).validation_ok


def _model_name(evaluation_uri: str, baseline: bool) -> Optional[str]:
    specs = _specs(evaluation_uri)
    if baseline:
        name = _baseline_spec_name(evaluation_uri)
        if name is None:
            raise ValueError(f"{evaluation_uri}: evaluation has no baseline model")
        return name
    # A single model is stored without a name; with a baseline, pick the candidate's.
    return next((s.name for s in specs if not s.is_baseline), None) if len(specs) > 1 else None


def _specs(evaluation_uri: str) -> List[tfma.ModelSpec]:
    config, *_ = eval_config_writer.load_eval_run(evaluation_uri)
    return list(config.model_specs) if config else []


def _baseline_spec_name(evaluation_uri: str) -> Optional[str]:
    return next((s.name for s in _specs(evaluation_uri) if s.is_baseline), None)


def _plain_metrics(raw: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """TFMA's {name: {"doubleValue": v}} as the summary's nested floats."""
    values = {name: float(value["doubleValue"]) for name, value in raw.items()
              if isinstance(value, Mapping) and "doubleValue" in value}
    plain: Dict[str, Any] = {name: values.get(name) for name in
                             (sm.MEAN_IOU, sm.MEAN_DICE, sm.PIXEL_ACCURACY)}
    for prefix in (sm.IOU_PREFIX, sm.DICE_PREFIX):
        plain[prefix] = {c: values.get(sm.class_key(prefix, c)) for c in CLASS_NAMES}
    plain["pixels"] = _maybe_int(values.get(sm.PIXEL_COUNT))
    plain["examples"] = _maybe_int(values.get(EXAMPLE_COUNT))
    return plain


def _maybe_int(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(value)


def _slice_name(slice_key: Tuple[Tuple[str, Any], ...], breed_names: Sequence[str]) -> str:
    return ",".join(f"{column}:{_value_name(column, value, breed_names)}"
                    for column, value in slice_key)


def _value_name(column: str, value: Any, breed_names: Sequence[str]) -> str:
    names = {SPECIES_KEY: SPECIES_NAMES, LABEL_KEY: breed_names}.get(column, ())
    if isinstance(value, bytes):
        value = value.decode()
    try:
        index = int(value)
    except (TypeError, ValueError):
        return str(value)
    return names[index] if 0 <= index < len(names) else str(value)

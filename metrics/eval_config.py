"""The TFMA EvalConfig of the Evaluator's blessing gate (report.metrics reads its results)."""

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants

from config import names
from config.settings import EvalConfig
from metrics import segmentation as sm
from transform.features import LABEL_KEY, MASK_KEY, SPECIES_KEY

SIGNATURE_NAME = names.EXAMPLES_SIGNATURE
PREPROCESSING_FUNCTION = names.TRANSFORM_SIGNATURE
# The model's signatures are all TFMA calls, so it loads as a plain SavedModel. Without a type, TFMA
# loads each model as a Keras model once just to learn its type, then again to use it.
MODEL_TYPE = constants.TF_GENERIC
GATED_METRIC = sm.MEAN_IOU
EXAMPLE_COUNT_CLASS = "ExampleCount"

# Why the config looks as it does:
# - The Evaluator reads raw TFDS examples; `transform_features` turns them into the transformed
#   `mask` that serves as the label (TFMA looks label keys up in transformed features first), and
#   `serving_examples` runs transform + model, so candidate and baseline are judged on exactly
#   the preprocessing they serve with.
# - No example weight key: pixels are the unit, and TFMA's segmentation preprocessors drop data
#   when example weights are configured.
# - The gate (`mean_iou` >= min_mean_iou, and no more than max_regression below the baseline)
#   applies to the overall slice only. A threshold without a slice spec applies to every slice,
#   and one breed's few dozen images would then veto a model on noise. Slices are for reading.
# - Default metrics are off: the model's compiled Keras loss/metrics expect training-time
#   tensors, not the `serving_examples` outputs.


def build_eval_config(eval_config: EvalConfig) -> tfma.EvalConfig:
    """The Evaluator's config: segmentation metrics per slice and the mean-IoU gate."""
    overall = tfma.SlicingSpec()
    gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": eval_config.min_mean_iou}),
        # TFX's Evaluator drops change thresholds when there is no baseline yet (first model).
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -eval_config.max_regression}
        ),
    )
    metrics = [tfma.MetricConfig(class_name=EXAMPLE_COUNT_CLASS)]
    for metric in sm.METRICS:
        config = tfma.MetricConfig(class_name=metric.__name__, module=sm.__name__)
        if metric.DEFAULT_NAME == GATED_METRIC:
            config.per_slice_thresholds.add(slicing_specs=[overall], threshold=gate)
        metrics.append(config)
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                model_type=MODEL_TYPE,
                signature_name=SIGNATURE_NAME,
                preprocessing_function_names=[PREPROCESSING_FUNCTION],
                label_key=MASK_KEY,
                prediction_key=MASK_KEY,
                # components.evaluator batches the examples at this size (TFX's source does not).
                inference_batch_size=eval_config.batch_size,
            )
        ],
        slicing_specs=[
            overall,
            tfma.SlicingSpec(feature_keys=[SPECIES_KEY]),
            tfma.SlicingSpec(feature_keys=[LABEL_KEY]),
        ],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        options=tfma.Options(include_default_metrics={"value": False}),
    )

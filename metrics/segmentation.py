"""TFMA metrics for semantic segmentation, all derived from one pixel confusion matrix.

Every metric here shares one private computation, `_pixel_confusion_matrix`: a C x (C + 1) count
matrix (rows = true class, columns = predicted class, then "no class") summed over every pixel of
every example in a slice. TFMA de-duplicates identical computations, so configuring all metrics
below still reads each example once. Scores come from the summed matrix, not from per-image
averages: a slice's IoU is its total intersection over its total union, so large and small
pets weigh by their pixels, which is what the pipeline's blessing gate means by "mean IoU".

Absent classes: a class with no pixels in either the truth or the prediction of a slice has
no IoU or Dice (0/0). It scores NaN and is left out of `mean_iou` / `mean_dice` (NaN-mean),
the convention of tf.keras.metrics.MeanIoU. The seed's smoothing scored it 1.0, which inflates
the mean of every slice that lacks a class (e.g. a close-up with no background), and scoring
it 0.0 would punish a model for a question it was never asked. A class that is predicted
but absent from the truth is a real error and scores 0.0. Over a whole eval split every class
is present, so the NaN case only shows on small slices; `mean_iou` is NaN for a slice without
pixels, and a NaN fails any TFMA value or change threshold.

Invalid predictions: the serving signatures mark a pixel whose logits are not finite with
`INVALID_CLASS` (255). Such a pixel is wrong for its true class (a miss in that class's IoU, Dice
and in pixel accuracy) and a hit for none. A model that emits non-finite logits anywhere is broken
(diverged weights, overflow), so `mean_iou` and `mean_dice` are then NaN: the blessing gate fails
whatever its threshold, even a lower bound of 0 that an all-wrong model would meet.
`invalid_pixel_count` reports how many pixels had no class.

Reading inputs: the label is `ModelSpec.label_key` (the transformed `mask`, [H, W] class ids);
the prediction is the model output named by `ModelSpec.prediction_key`, else this metric's
`prediction_key` (default `mask`, [H, W] class ids). The fallback matters: TFMA's own lookup
picks `probabilities` from a dict output when no prediction key is set. Example weights are
ignored; pixels are the unit.
"""

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.proto import config_pb2

from transform.features import CLASS_NAMES, INVALID_CLASS, MASK_KEY

CONFUSION_MATRIX_NAME = "_pixel_confusion_matrix"
MEAN_IOU = "mean_iou"
MEAN_DICE = "mean_dice"
PIXEL_ACCURACY = "pixel_accuracy"
PIXEL_COUNT = "pixel_count"
INVALID_PIXEL_COUNT = "invalid_pixel_count"
IOU_PREFIX = "iou"
DICE_PREFIX = "dice"


def class_key(prefix: str, class_name: str) -> str:
    """Per-class metric name as TFMA reports it, e.g. `iou/pet`."""
    return f"{prefix}/{class_name}"


def scores_from_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> Dict[str, float]:
    """Every score of this module, keyed by metric name, from a truth x prediction matrix.

    [C, C + 1]: the last column counts pixels predicted as no class; a [C, C] matrix has none.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    invalid = matrix[:, len(class_names) :].sum()
    true_positive = np.diag(matrix[:, : len(class_names)])
    truth_pixels = matrix.sum(axis=1)  # includes pixels predicted as no class: they are misses
    predicted_pixels = matrix[:, : len(class_names)].sum(axis=0)
    union = truth_pixels + predicted_pixels - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0/0 -> NaN for absent classes, by design (module docstring).
        iou = true_positive / union
        dice = 2 * true_positive / (truth_pixels + predicted_pixels)
        total = matrix.sum()
        scores = {
            PIXEL_ACCURACY: float(true_positive.sum() / total) if total else float("nan"),
            PIXEL_COUNT: float(total),
            INVALID_PIXEL_COUNT: float(invalid),
            # Any pixel without a class means a broken model: NaN fails every threshold (docstring).
            MEAN_IOU: float("nan") if invalid else _nanmean(iou),
            MEAN_DICE: float("nan") if invalid else _nanmean(dice),
        }
    for index, name in enumerate(class_names):
        scores[class_key(IOU_PREFIX, name)] = float(iou[index])
        scores[class_key(DICE_PREFIX, name)] = float(dice[index])
    return scores


def _nanmean(values: np.ndarray) -> float:
    # np.nanmean warns on all-NaN input; an empty slice is simply NaN.
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


class _ConfusionMatrixCombiner(beam.CombineFn):
    """Sums label x prediction pixel counts into a [C, C + 1] int64 matrix (last column: no class)."""

    def __init__(self, key: metric_types.MetricKey, num_classes: int, prediction_key: str):
        self._key = key
        self._num_classes = num_classes
        self._prediction_key = prediction_key

    def create_accumulator(self) -> np.ndarray:
        return np.zeros((self._num_classes, self._num_classes + 1), dtype=np.int64)

    def add_input(self, accumulator: np.ndarray, element: metric_types.StandardMetricInputs) -> np.ndarray:
        # '' means "not keyed"; get_by_key would look for a literal '' key.
        model_name = self._key.model_name or None
        output_name = self._key.output_name or None
        label = element.get_labels(model_name, output_name)
        prediction = element.get_predictions(model_name, output_name)
        if isinstance(prediction, Mapping):
            if self._prediction_key not in prediction:
                raise ValueError(
                    f"prediction output {self._prediction_key!r} not in model outputs "
                    f"{sorted(prediction)}; set ModelSpec.prediction_key"
                )
            prediction = prediction[self._prediction_key]
        if label is None or prediction is None:
            raise ValueError(
                "segmentation metrics need a label mask (ModelSpec.label_key) and a "
                f"predicted mask; got label={label is not None}, "
                f"prediction={prediction is not None}"
            )
        label, prediction = np.asarray(label), np.asarray(prediction)
        if label.size != prediction.size:
            raise ValueError(f"label mask shape {label.shape} does not match predicted mask shape {prediction.shape}")
        label = label.reshape(-1).astype(np.int64)
        prediction = prediction.reshape(-1).astype(np.int64)
        classes = self._num_classes
        if label.size and (label.min() < 0 or label.max() >= classes):
            raise ValueError(f"label class ids must be in [0, {classes}), got [{label.min()}, {label.max()}]")
        no_class = prediction == INVALID_CLASS
        bad = (prediction < 0) | ((prediction >= classes) & ~no_class)
        if bad.any():
            raise ValueError(
                f"prediction class ids must be in [0, {classes}) or {INVALID_CLASS} (no class), "
                f"got {sorted(set(prediction[bad].tolist()))[:5]}"
            )
        prediction = np.where(no_class, classes, prediction)
        counts = np.bincount(label * (classes + 1) + prediction, minlength=classes * (classes + 1))
        accumulator += counts.reshape(classes, classes + 1)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result = result + accumulator
        return result

    def extract_output(self, accumulator: np.ndarray) -> Dict[metric_types.MetricKey, np.ndarray]:
        return {self._key: accumulator}


class _SegmentationMetric(metric_types.Metric):
    """Base: scores named by `_score_names` derived from the shared confusion matrix."""

    DEFAULT_NAME = ""

    def __init__(
        self, name: Optional[str] = None, class_names: Sequence[str] = CLASS_NAMES, prediction_key: str = MASK_KEY
    ):
        super().__init__(
            metric_util.merge_per_key_computations(self._computations),
            name=name or self.DEFAULT_NAME,
            class_names=list(class_names),
            prediction_key=prediction_key,
        )

    def _reported_scores(self, name: str, class_names: Sequence[str]) -> Dict[str, str]:
        """Reported metric name -> name in `scores_from_confusion_matrix`."""
        return {name: self.DEFAULT_NAME}

    def _computations(
        self,
        name: str,
        class_names: List[str],
        prediction_key: str,
        eval_config: Optional[config_pb2.EvalConfig] = None,
        model_name: str = "",
        output_name: str = "",
        example_weighted: bool = False,
    ) -> metric_types.MetricComputations:
        prediction_key = _model_prediction_key(eval_config, model_name) or prediction_key
        # The matrix name encodes its arguments so differently configured metrics never share it.
        matrix_key = metric_types.MetricKey(
            name=metric_util.generate_private_name_from_arguments(
                CONFUSION_MATRIX_NAME, class_names=class_names, prediction_key=prediction_key
            ),
            model_name=model_name,
            output_name=output_name,
            example_weighted=example_weighted,
        )
        sources = self._reported_scores(name, class_names)
        keys = {
            reported: metric_types.MetricKey(
                name=reported, model_name=model_name, output_name=output_name, example_weighted=example_weighted
            )
            for reported in sources
        }

        def result(metrics: Dict[metric_types.MetricKey, Any]) -> Dict[metric_types.MetricKey, float]:
            scores = scores_from_confusion_matrix(metrics[matrix_key], class_names)
            return {key: scores[sources[reported]] for reported, key in keys.items()}

        return [
            metric_types.MetricComputation(
                keys=[matrix_key],
                preprocessors=None,
                combiner=_ConfusionMatrixCombiner(matrix_key, len(class_names), prediction_key),
            ),
            metric_types.DerivedMetricComputation(keys=list(keys.values()), result=result),
        ]


def _model_prediction_key(eval_config: Optional[config_pb2.EvalConfig], model_name: str) -> str:
    specs = list(eval_config.model_specs) if eval_config else []
    for spec in specs:
        # A single model is always addressed as '' in metric keys, whatever its spec name.
        if len(specs) == 1 or spec.name == model_name:
            return spec.prediction_key
    return ""


class MeanIoU(_SegmentationMetric):
    """`mean_iou`: NaN-mean over classes of the pixel IoU."""

    DEFAULT_NAME = MEAN_IOU


class MeanDice(_SegmentationMetric):
    """`mean_dice`: NaN-mean over classes of the pixel Dice (F1)."""

    DEFAULT_NAME = MEAN_DICE


class PixelAccuracy(_SegmentationMetric):
    """`pixel_accuracy`: fraction of pixels whose predicted class is the true class."""

    DEFAULT_NAME = PIXEL_ACCURACY


class PixelCount(_SegmentationMetric):
    """`pixel_count`: pixels evaluated in the slice."""

    DEFAULT_NAME = PIXEL_COUNT


class InvalidPixelCount(_SegmentationMetric):
    """`invalid_pixel_count`: pixels the model gave no class (non-finite logits)."""

    DEFAULT_NAME = INVALID_PIXEL_COUNT


class ClassIoU(_SegmentationMetric):
    """`iou/<class>` for every class; the metric's own name is the prefix."""

    DEFAULT_NAME = IOU_PREFIX

    def _reported_scores(self, name: str, class_names: Sequence[str]) -> Dict[str, str]:
        return {class_key(name, c): class_key(self.DEFAULT_NAME, c) for c in class_names}


class ClassDice(ClassIoU):
    """`dice/<class>` for every class."""

    DEFAULT_NAME = DICE_PREFIX


# In the order a report lists them; the Evaluator loads each by module path and class name.
METRICS = (MeanIoU, MeanDice, PixelAccuracy, PixelCount, InvalidPixelCount, ClassIoU, ClassDice)

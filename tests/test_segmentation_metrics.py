"""Segmentation metrics checked against an independent numpy computation, through real TFMA."""

import math
import pickle

import apache_beam as beam
import numpy as np
import pytest
import tensorflow_model_analysis as tfma
from apache_beam.testing import util as beam_util

from metrics import segmentation as sm
from support.evaluation import assert_scores_equal, reference_scores
from transform.features import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)


def eval_config() -> tfma.EvalConfig:
    # Model-agnostic: labels and predicted masks are read from the features.
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="truth", prediction_key="pred")],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=["species"])],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[tfma.MetricConfig(class_name=metric.__name__, module=sm.__name__) for metric in sm.METRICS]
            )
        ],
    )


def run_tfma(truth: np.ndarray, prediction: np.ndarray, species: np.ndarray, out_dir) -> dict:
    """Runs TFMA's default extractors and evaluators; returns {slice key: {name: value}}."""
    # Batches of two examples exercise TFMA's unbatching as in a real run.
    extracts = [
        {"features": {"truth": truth[i : i + 2], "pred": prediction[i : i + 2], "species": species[i : i + 2, None]}}
        for i in range(0, len(truth), 2)
    ]
    config = eval_config()
    # Beam runs the check on a pickled copy of it, so results travel through a file.
    out_file = str(out_dir / "metrics.pkl")

    def collect(results):
        with open(out_file, "wb") as f:
            pickle.dump(
                {slice_key: {key.name: value for key, value in metrics.items()} for slice_key, metrics in results}, f
            )

    with beam.Pipeline() as pipeline:
        result = (
            pipeline
            | beam.Create(extracts)
            | tfma.ExtractAndEvaluate(
                extractors=tfma.default_extractors(eval_config=config),
                evaluators=tfma.default_evaluators(eval_config=config),
            )
        )
        beam_util.assert_that(result["metrics"], collect)
    with open(out_file, "rb") as f:
        return pickle.load(f)


def test_tfma_matches_numpy_overall_and_per_slice(tmp_path):
    rng = np.random.default_rng(7)
    # Unequal class frequencies: mostly background, a little border.
    truth = rng.choice(NUM_CLASSES, size=(6, 12, 10), p=[0.3, 0.6, 0.1])
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, NUM_CLASSES, truth.shape))
    # One slice without any border pixels in truth or prediction: border is absent there.
    species = np.array([0, 0, 0, 1, 1, 1])
    cats = species == 0
    truth[cats] = np.where(truth[cats] == 2, 1, truth[cats])
    prediction[cats] = np.where(prediction[cats] == 2, 0, prediction[cats])

    got = run_tfma(truth, prediction.astype(np.uint8), species, tmp_path)

    assert set(got) == {(), (("species", 0),), (("species", 1),)}
    assert_scores_equal(got[()], reference_scores(truth, prediction))
    for value in (0, 1):
        mask = species == value
        assert_scores_equal(got[(("species", value),)], reference_scores(truth[mask], prediction[mask]))
    cat_scores = got[(("species", 0),)]
    assert math.isnan(cat_scores["iou/border"]) and math.isnan(cat_scores["dice/border"])
    assert cat_scores["mean_iou"] == pytest.approx((cat_scores["iou/pet"] + cat_scores["iou/background"]) / 2)


def test_confusion_matrix_is_one_matrix_over_the_split_not_a_mean_of_images():
    # Image 1 is perfect on a tiny pet, image 2 misses a large pet: per-image means would say 0.5.
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES))
    matrix[0, 0] = 1  # image 1: one pet pixel right
    matrix[0, 1] = 99  # image 2: 99 pet pixels called background
    scores = sm.scores_from_confusion_matrix(matrix)
    assert scores["iou/pet"] == pytest.approx(0.01)


def test_absent_class_is_nan_and_left_out_of_means_while_false_positive_class_scores_zero():
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES))
    matrix[0, 0], matrix[1, 1] = 5, 5  # border: no truth, no prediction
    scores = sm.scores_from_confusion_matrix(matrix)
    assert math.isnan(scores["iou/border"]) and math.isnan(scores["dice/border"])
    assert scores["mean_iou"] == 1.0 and scores["mean_dice"] == 1.0

    matrix[1, 2] = 5  # border predicted where the truth is background
    scores = sm.scores_from_confusion_matrix(matrix)
    assert scores["iou/border"] == 0.0 and scores["dice/border"] == 0.0
    assert scores["mean_iou"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_empty_slice_has_nan_means():
    scores = sm.scores_from_confusion_matrix(np.zeros((NUM_CLASSES, NUM_CLASSES)))
    assert math.isnan(scores["mean_iou"]) and math.isnan(scores["pixel_accuracy"])
    assert scores["pixel_count"] == 0


def test_dict_prediction_uses_metric_prediction_key_and_rejects_bad_masks():
    (matrix_computation, _) = sm.MeanIoU().computations(eval_config=tfma.EvalConfig())
    combiner = matrix_computation.combiner
    truth = np.array([[0, 1], [2, 2]])
    element = tfma.metrics.StandardMetricInputs(
        labels=truth, predictions={"mask": truth.astype(np.uint8), "probabilities": np.zeros((2, 2, 3))}
    )
    matrix = combiner.add_input(combiner.create_accumulator(), element)
    np.testing.assert_array_equal(matrix, np.diag([1, 1, 2, 0])[:3])  # last column: no-class pixels

    with pytest.raises(ValueError, match="does not match"):
        combiner.add_input(
            combiner.create_accumulator(),
            tfma.metrics.StandardMetricInputs(labels=truth, predictions={"mask": np.zeros((2, 3))}),
        )
    with pytest.raises(ValueError, match="class ids"):
        combiner.add_input(
            combiner.create_accumulator(),
            tfma.metrics.StandardMetricInputs(labels=truth + 1, predictions={"mask": truth}),
        )

"""End-to-end TFMA runs of the Evaluator config on tiny exported models and raw examples."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from report import metrics
from pipeline.config import EvalConfig
from support.evaluation import BETTER, LABELS, SPECIES, WORSE, export_model, raw_examples, run_tfma
from transform.features import CLASS_NAMES, NUM_CLASSES

BREEDS = ["abyssinian", "beagle", "boxer"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    truths, images, records = raw_examples()
    data = str(root / "examples.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    models = {}
    for name, class_channels in (("better", BETTER), ("worse", WORSE)):
        models[name] = str(root / name)
        export_model(models[name], class_channels)
    return root, data, models, truths, images


def _reference(truth: np.ndarray, prediction: np.ndarray) -> dict:
    counts = np.bincount(truth.ravel() * NUM_CLASSES + prediction.ravel(),
                         minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    tp = np.diag(counts)
    iou = tp / (counts.sum(0) + counts.sum(1) - tp)
    dice = 2 * tp / (counts.sum(0) + counts.sum(1))
    return {"mean_iou": iou.mean(), "mean_dice": dice.mean(), "pixel_accuracy": tp.sum() / counts.sum(),
            "iou": dict(zip(CLASS_NAMES, iou)), "dice": dict(zip(CLASS_NAMES, dice)),
            "pixels": int(counts.sum()), "examples": len(truth)}


def _assert_close(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_close(got[key], value)
        else:
            assert got[key] == pytest.approx(value, rel=1e-9), key


def test_metrics_per_slice_match_numpy_and_gate_passes(setup):
    root, data, models, truths, images = setup
    output = run_tfma(root, data, models["worse"], EvalConfig(min_mean_iou=0.0))
    got = metrics.load_metrics(output, BREEDS)

    # The "worse" model's prediction from the pixels; argmax breaks ties on the lowest class as TF does.
    predictions = np.argmax(images[..., WORSE], axis=-1)
    species, labels = np.array(SPECIES), np.array(LABELS)
    _assert_close(got["overall"], _reference(truths, predictions))
    expected_slices = {f"species:{name}": species == i for i, name in enumerate(["cat", "dog"])}
    expected_slices.update({f"label:{name}": labels == i for i, name in enumerate(BREEDS)})
    assert set(got["slices"]) == set(expected_slices)
    for name, mask in expected_slices.items():
        _assert_close(got["slices"][name], _reference(truths[mask], predictions[mask]))
    assert metrics.load_baseline_metrics(output, BREEDS) is None
    assert metrics.is_blessed(output)


def test_value_threshold_fails_below_min_mean_iou(setup):
    root, data, models, _, _ = setup
    output = run_tfma(root, data, models["better"], EvalConfig(min_mean_iou=0.999))
    assert not metrics.is_blessed(output)
    failures = tfma.load_validation_result(output).metric_validations_per_slice
    assert [f.metric_key.name for s in failures for f in s.failures] == ["mean_iou"]


def test_regression_against_better_baseline_is_not_blessed(setup):
    root, data, models, _, _ = setup
    output = run_tfma(root, data, models["worse"], EvalConfig(min_mean_iou=0.0, max_regression=0.01),
                  baseline=models["better"])
    candidate = metrics.load_metrics(output, BREEDS)
    baseline = metrics.load_baseline_metrics(output, BREEDS)
    assert baseline["overall"]["mean_iou"] > candidate["overall"]["mean_iou"] + 0.01
    assert set(baseline["slices"]) == set(candidate["slices"])
    assert not metrics.is_blessed(output)
    failures = [f for s in tfma.load_validation_result(output).metric_validations_per_slice
                for f in s.failures]
    assert [(f.metric_key.name, f.metric_key.is_diff) for f in failures] == [("mean_iou", True)]

    # The same pair the other way round passes: the change threshold is what blocked it.
    output = run_tfma(root, data, models["better"], EvalConfig(min_mean_iou=0.0, max_regression=0.01),
                  baseline=models["worse"])
    assert metrics.is_blessed(output)

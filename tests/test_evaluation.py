"""End-to-end TFMA runs of the Evaluator config on tiny exported models and raw examples."""

import contextlib
import os
import shutil

import apache_beam as beam
from apache_beam.testing import util as beam_util
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import artifact_utils, standard_artifacts

from components import evaluator, internals
from metrics import eval_config as evaluation
from config.settings import EvalConfig
from report import metrics
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
    counts = np.bincount(truth.ravel() * NUM_CLASSES + prediction.ravel(), minlength=NUM_CLASSES**2).reshape(
        NUM_CLASSES, NUM_CLASSES
    )
    tp = np.diag(counts)
    iou = tp / (counts.sum(0) + counts.sum(1) - tp)
    dice = 2 * tp / (counts.sum(0) + counts.sum(1))
    return {
        "mean_iou": iou.mean(),
        "mean_dice": dice.mean(),
        "pixel_accuracy": tp.sum() / counts.sum(),
        "iou": dict(zip(CLASS_NAMES, iou)),
        "dice": dict(zip(CLASS_NAMES, dice)),
        "pixels": int(counts.sum()),
        "examples": len(truth),
    }


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
    output = run_tfma(
        root, data, models["worse"], EvalConfig(min_mean_iou=0.0, max_regression=0.01), baseline=models["better"]
    )
    candidate = metrics.load_metrics(output, BREEDS)
    baseline = metrics.load_baseline_metrics(output, BREEDS)
    assert baseline["overall"]["mean_iou"] > candidate["overall"]["mean_iou"] + 0.01
    assert set(baseline["slices"]) == set(candidate["slices"])
    assert not metrics.is_blessed(output)
    failures = [f for s in tfma.load_validation_result(output).metric_validations_per_slice for f in s.failures]
    assert [(f.metric_key.name, f.metric_key.is_diff) for f in failures] == [("mean_iou", True)]

    # The same pair the other way round passes: the change threshold is what blocked it.
    output = run_tfma(
        root, data, models["better"], EvalConfig(min_mean_iou=0.0, max_regression=0.01), baseline=models["worse"]
    )
    assert metrics.is_blessed(output)


def _check_source_batch_sizes(data: str, batch_size, check) -> None:
    """Runs `check` on the row counts of the record batches TFX's Evaluator would hand TFMA for `data`,
    read by real tfx_bsl and Beam (`check` runs inside the pipeline, as Beam's `assert_that` does)."""
    split = os.path.join(os.path.dirname(data), "artifact", "Split-eval")
    os.makedirs(split, exist_ok=True)
    shutil.copy(data, os.path.join(split, "data.tfrecord"))
    examples = standard_artifacts.Examples()
    examples.uri = os.path.dirname(split)
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    # The name TFX's Evaluator `Do` reads, as the Evaluator's executor sets it (TFX's own without a size).
    with internals.evaluator_reads_batches_of(batch_size) if batch_size else contextlib.nullcontext():
        factory = evaluator_executor.tfxio_utils.get_tfxio_factory_from_artifact(
            examples=[examples],
            telemetry_descriptors=["test"],
            schema=None,
            raw_record_column_name=tfma.constants.ARROW_INPUT_COLUMN,
        )
    with beam.Pipeline() as pipeline:
        sizes = pipeline | factory(os.path.join(split, "*")).BeamSource() | beam.Map(lambda batch: batch.num_rows)
        beam_util.assert_that(sizes, check)


def _smallest_is_one(sizes):
    if min(sizes) != 1:
        raise beam_util.BeamAssertException(f"adaptive batches {sorted(sizes)} did not start at 1")


def test_evaluator_reads_batches_of_the_configured_size(setup):
    _, data, _, _, _ = setup
    # Without a size, Beam's adaptive batching starts at one example (the cost the fix removes).
    _check_source_batch_sizes(data, None, _smallest_is_one)
    _check_source_batch_sizes(data, 4, beam_util.equal_to([4, len(LABELS) - 4]))


def test_evaluator_batch_size_comes_from_the_pipeline_config():
    config = evaluation.build_eval_config(EvalConfig(batch_size=5))
    assert evaluator.inference_batch_size(json_format.MessageToJson(config)) == 5
    assert evaluator.inference_batch_size(None) is None
    config.model_specs.add(name="baseline", is_baseline=True, inference_batch_size=7)
    with pytest.raises(ValueError, match=r"different inference_batch_size values \[5, 7\]"):
        evaluator.inference_batch_size(json_format.MessageToJson(config))

"""Bad models and bad records: a NaN-emitting model is never blessed; Transform fails loudly on undecodable records."""

import functools

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tensorflow_transform.beam as tft_beam
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.public import tfxio

from metrics import segmentation as sm
from config.settings import EvalConfig
from pipeline.pipeline import SCHEMA_FILE
from report import metrics
from support.evaluation import BETTER, assert_scores_equal, export_model, raw_examples, reference_scores, run_tfma
from support.images import png, raw_example
from trainer import signatures
from transform import preprocessing
from transform.features import CLASS_NAMES, NUM_CLASSES


def test_no_class_pixels_are_misses_and_void_the_means():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, NUM_CLASSES, (4, 16, 16))
    prediction = np.where(rng.random(truth.shape) < 0.1, sm.INVALID_CLASS, truth)
    combiner = sm._ConfusionMatrixCombiner(tfma.metrics.MetricKey("m"), NUM_CLASSES, "mask")
    matrix = combiner.add_input(
        combiner.create_accumulator(),
        tfma.metrics.StandardMetricInputs(labels=truth, predictions={"mask": prediction.astype(np.uint8)}),
    )
    scores = sm.scores_from_confusion_matrix(matrix)
    assert scores[sm.INVALID_PIXEL_COUNT] == np.sum(prediction == sm.INVALID_CLASS) > 0
    assert_scores_equal(scores, reference_scores(truth, prediction))
    with pytest.raises(ValueError, match=r"prediction class ids must be in \[0, 3\) or 255 \(no class\), got \[7\]"):
        combiner.add_input(
            combiner.create_accumulator(),
            tfma.metrics.StandardMetricInputs(
                labels=truth[:1, :1, :1], predictions={"mask": np.array([[[7]]], np.uint8)}
            ),
        )


def _export_nan_model(source: str, path: str) -> None:
    """Wraps a working exported model so its logits are NaN everywhere, as a diverged training would.

    The mask comes from the production `signatures._outputs`, so the Evaluator sees exactly what a
    NaN model would serve (255 = no class).
    """
    module = tf.Module()
    module.base = tf.saved_model.load(source)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        probabilities = module.base.signatures["serving_examples"](examples=examples)["probabilities"]
        return signatures._outputs(probabilities * np.nan)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        return module.base.signatures["transform_features"](examples=examples)

    tf.saved_model.save(
        module,
        path,
        signatures={signatures.EXAMPLES_SIGNATURE: serve_examples, signatures.TRANSFORM_SIGNATURE: transform_features},
    )


def test_nan_model_is_never_blessed_even_with_a_zero_bound(tmp_path):
    _, _, records = raw_examples()
    data = str(tmp_path / "examples.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    export_model(str(tmp_path / "good"), BETTER)
    _export_nan_model(str(tmp_path / "good"), str(tmp_path / "nan"))

    output = run_tfma(tmp_path, data, str(tmp_path / "nan"), EvalConfig(min_mean_iou=0.0))
    assert not metrics.is_blessed(output)
    failures = tfma.load_validation_result(output).metric_validations_per_slice
    assert [f.metric_key.name for s in failures for f in s.failures] == [sm.MEAN_IOU]
    overall = metrics.load_metrics(output)["overall"]
    assert np.isnan(overall["mean_iou"]) and overall["pixel_accuracy"] == 0.0
    assert all(overall["iou"][c] == 0.0 for c in CLASS_NAMES)


# --------------------------------------------------------------- Transform on records that bypassed staging


GOOD_IMAGE = np.full((8, 8, 3), 120, np.uint8)
GOOD_TRIMAP = np.full((8, 8), 2, np.uint8)
BAD_RECORDS = {
    "garbage image bytes": (b"<html>404</html>", GOOD_TRIMAP, "Unknown image file format"),
    "trimap value 0": (png(GOOD_IMAGE), np.zeros((8, 8), np.uint8), "trimap has values below 1"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_transform_fails_on_a_bad_record_saying_what_is_wrong(tmp_path, case):
    """Transform fails rather than drop the record: ExampleGen is where broken samples are skipped and
    counted; a silent drop here would make the trained data differ from the validated statistics."""
    image, trimap, message = BAD_RECORDS[case]
    path = str(tmp_path / "data.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(raw_example(image=png(GOOD_IMAGE), mask=png(GOOD_TRIMAP)))
        writer.write(raw_example(image=image, mask=png(trimap)))
    schema = text_format.Parse(open(SCHEMA_FILE).read(), schema_pb2.Schema())
    source = tfxio.TFExampleRecord(path, schema=schema)
    preprocessing_fn = functools.partial(preprocessing.preprocessing_fn, custom_config={"image_size": 32})
    with pytest.raises(Exception, match=message):
        with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(tmp_path / "tft")):
            _ = (p | source.BeamSource(), source.TensorAdapterConfig()) | tft_beam.AnalyzeAndTransformDataset(
                preprocessing_fn, output_record_batches=True
            )

"""End-to-end TFMA runs of the Evaluator config on tiny exported models and raw examples."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from pipeline import evaluation
from report import metrics
from pipeline.config import EvalConfig
from transform.features import CLASS_NAMES, NUM_CLASSES

SIZE = 32
BREEDS = ["abyssinian", "beagle", "boxer"]
SPECIES = [0, 1, 1, 0, 1, 0]
LABELS = [0, 1, 2, 0, 1, 0]
BETTER, WORSE = [0, 1, 2], [0, 2, 1]  # class k of each model reads image channel map[k]


def _png(array: np.ndarray) -> bytes:
    return tf.io.encode_png(array).numpy()


def _raw_examples():
    """TFDS-style records; image channel c is bright where the trimap says class c (+ noise)."""
    rng = np.random.default_rng(3)
    truths, images, records = [], [], []
    for species, label in zip(SPECIES, LABELS):
        truth = rng.choice(NUM_CLASSES, size=(SIZE, SIZE), p=[0.35, 0.5, 0.15])
        image = (np.eye(3)[truth] * 150 + rng.integers(0, 120, (SIZE, SIZE, 3))).astype(np.uint8)
        features = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(image)])),
            "segmentation_mask": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[_png((truth + 1).astype(np.uint8)[..., None])])),
            "species": tf.train.Feature(int64_list=tf.train.Int64List(value=[species])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        records.append(tf.train.Example(features=tf.train.Features(feature=features)))
        truths.append(truth)
        images.append(image)
    return np.stack(truths), np.stack(images), records


def _export_model(path: str, class_channels) -> None:
    """A 1x1-conv Keras model with the production signatures; the transform is a plain parser."""
    conv = tf.keras.layers.Conv2D(NUM_CLASSES, 1, use_bias=False)
    model = tf.keras.Sequential([tf.keras.Input((SIZE, SIZE, 3)), conv])
    conv.set_weights([np.eye(3)[:, class_channels][None, None] * 10.0])
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "segmentation_mask": tf.io.FixedLenFeature([], tf.string),
            "species": tf.io.FixedLenFeature([], tf.int64),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def decode_image(image_bytes):
        image = tf.io.decode_png(image_bytes, channels=3)
        return tf.reshape(tf.cast(image, tf.float32) / 255.0, [SIZE, SIZE, 3])

    def outputs(images):
        probabilities = tf.nn.softmax(model(images), axis=-1)
        return {"mask": tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8),
                "probabilities": probabilities}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        parsed = tf.io.parse_example(examples, spec)
        masks = tf.map_fn(lambda m: tf.io.decode_png(m, channels=1)[..., 0], parsed["segmentation_mask"],
                          fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
        return {"image": tf.map_fn(decode_image, parsed["image"],
                                   fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32)),
                "mask": tf.reshape(tf.cast(masks, tf.int64) - 1, [-1, SIZE, SIZE]),
                "species": parsed["species"], "label": parsed["label"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return outputs(transform_features(examples)["image"])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_images(image_bytes):
        return outputs(tf.map_fn(decode_image, image_bytes,
                                 fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32)))

    tf.saved_model.save(model, path, signatures={
        "serving_default": serve_images, "serving_examples": serve_examples,
        "transform_features": transform_features})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    truths, images, records = _raw_examples()
    data = str(root / "examples.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    models = {}
    for name, class_channels in (("better", BETTER), ("worse", WORSE)):
        models[name] = str(root / name)
        _export_model(models[name], class_channels)
    return root, data, models, truths, images


def _run(root, data, candidate: str, eval_config: EvalConfig, baseline: str = None) -> str:
    config = evaluation.build_eval_config(eval_config)
    # What TFX's Evaluator executor does before running TFMA.
    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=baseline is not None,
                                                          rubber_stamp=True)
    paths = {spec.name: (baseline if spec.is_baseline else candidate) for spec in config.model_specs}
    shared = [tfma.default_eval_shared_model(path, model_name=name, eval_config=config)
              for name, path in paths.items()]
    output = str(root / f"out_{len(list(root.iterdir()))}")
    tfma.run_model_analysis(eval_shared_model=shared if baseline else shared[0], eval_config=config,
                            data_location=data, output_path=output)
    return output


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
    output = _run(root, data, models["worse"], EvalConfig(min_mean_iou=0.0))
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
    output = _run(root, data, models["better"], EvalConfig(min_mean_iou=0.999))
    assert not metrics.is_blessed(output)
    failures = tfma.load_validation_result(output).metric_validations_per_slice
    assert [f.metric_key.name for s in failures for f in s.failures] == ["mean_iou"]


def test_regression_against_better_baseline_is_not_blessed(setup):
    root, data, models, _, _ = setup
    output = _run(root, data, models["worse"], EvalConfig(min_mean_iou=0.0, max_regression=0.01),
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
    output = _run(root, data, models["better"], EvalConfig(min_mean_iou=0.0, max_regression=0.01),
                  baseline=models["worse"])
    assert metrics.is_blessed(output)

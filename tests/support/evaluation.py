"""TFMA runs of the Evaluator's config on tiny exported models, and metrics computed independently in numpy."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from metrics import eval_config as evaluation
from config.settings import EvalConfig
from support.images import png
from transform.features import CLASS_NAMES, NUM_CLASSES

SIZE = 32
SPECIES = [0, 1, 1, 0, 1, 0]
LABELS = [0, 1, 2, 0, 1, 0]
BETTER, WORSE = [0, 1, 2], [0, 2, 1]  # class k of each model reads image channel map[k]


def raw_examples():
    """TFDS-style records; image channel c is bright where the trimap says class c (+ noise)."""
    rng = np.random.default_rng(3)
    truths, images, records = [], [], []
    for species, label in zip(SPECIES, LABELS):
        truth = rng.choice(NUM_CLASSES, size=(SIZE, SIZE), p=[0.35, 0.5, 0.15])
        image = (np.eye(3)[truth] * 150 + rng.integers(0, 120, (SIZE, SIZE, 3))).astype(np.uint8)
        features = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png(image)])),
            "segmentation_mask": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[png((truth + 1).astype(np.uint8)[..., None])])
            ),
            "species": tf.train.Feature(int64_list=tf.train.Int64List(value=[species])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        records.append(tf.train.Example(features=tf.train.Features(feature=features)))
        truths.append(truth)
        images.append(image)
    return np.stack(truths), np.stack(images), records


def export_model(path: str, class_channels) -> None:
    """A 1x1-conv Keras model with the production signatures; the transform is a plain parser."""
    conv = tf.keras.layers.Conv2D(NUM_CLASSES, 1, use_bias=False)
    model = tf.keras.Sequential([tf.keras.Input((SIZE, SIZE, 3)), conv])
    conv.set_weights([np.eye(3)[:, class_channels][None, None] * 10.0])
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "segmentation_mask": tf.io.FixedLenFeature([], tf.string),
        "species": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def decode_image(image_bytes):
        image = tf.io.decode_png(image_bytes, channels=3)
        return tf.reshape(tf.cast(image, tf.float32) / 255.0, [SIZE, SIZE, 3])

    def outputs(images):
        probabilities = tf.nn.softmax(model(images), axis=-1)
        return {"mask": tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8), "probabilities": probabilities}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        parsed = tf.io.parse_example(examples, spec)
        masks = tf.map_fn(
            lambda m: tf.io.decode_png(m, channels=1)[..., 0],
            parsed["segmentation_mask"],
            fn_output_signature=tf.TensorSpec([None, None], tf.uint8),
        )
        return {
            "image": tf.map_fn(
                decode_image, parsed["image"], fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32)
            ),
            "mask": tf.reshape(tf.cast(masks, tf.int64) - 1, [-1, SIZE, SIZE]),
            "species": parsed["species"],
            "label": parsed["label"],
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return outputs(transform_features(examples)["image"])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_images(image_bytes):
        return outputs(
            tf.map_fn(decode_image, image_bytes, fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
        )

    tf.saved_model.save(
        model,
        path,
        signatures={
            "serving_default": serve_images,
            "serving_examples": serve_examples,
            "transform_features": transform_features,
        },
    )


def run_tfma(root, data, candidate: str, eval_config: EvalConfig, baseline: str = None) -> str:
    config = evaluation.build_eval_config(eval_config)
    # What TFX's Evaluator executor does before running TFMA.
    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=baseline is not None, rubber_stamp=True)
    paths = {spec.name: (baseline if spec.is_baseline else candidate) for spec in config.model_specs}
    shared = [tfma.default_eval_shared_model(path, model_name=name, eval_config=config) for name, path in paths.items()]
    output = str(root / f"out_{len(list(root.iterdir()))}")
    tfma.run_model_analysis(
        eval_shared_model=shared if baseline else shared[0], eval_config=config, data_location=data, output_path=output
    )
    return output


def reference_scores(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Per-class IoU/Dice from set counts, written without the module's matrix algebra."""
    truth, prediction = truth.ravel(), prediction.ravel()
    invalid = int(np.sum(prediction == 255))  # "no class": counts as a miss, never as a hit
    scores = {"pixel_accuracy": np.mean(truth == prediction), "pixel_count": truth.size, "invalid_pixel_count": invalid}
    ious, dices = [], []
    for class_id, name in enumerate(CLASS_NAMES):
        in_truth, in_pred = truth == class_id, prediction == class_id
        intersection = np.sum(in_truth & in_pred)
        union = np.sum(in_truth | in_pred)
        sizes = np.sum(in_truth) + np.sum(in_pred)
        iou = intersection / union if union else math.nan
        dice = 2 * intersection / sizes if sizes else math.nan
        scores[f"iou/{name}"], scores[f"dice/{name}"] = iou, dice
        ious.append(iou)
        dices.append(dice)
    scores["mean_iou"] = math.nan if invalid else np.mean([v for v in ious if not math.isnan(v)])
    scores["mean_dice"] = math.nan if invalid else np.mean([v for v in dices if not math.isnan(v)])
    return scores


def assert_scores_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, abs=1e-12), name

"""Input | true mask | predicted mask PNGs of the first eval images, drawn with the trained model."""

from __future__ import annotations

import pathlib
from typing import List

import numpy as np
import tensorflow as tf

from config import names
from report.example_records import tfrecords
from transform import features, preprocessing

# Colours of pet / background / border in the report's mask images.
MASK_COLOURS = np.array([[230, 120, 40], [40, 40, 60], [250, 250, 250]], np.uint8)


def _colour_mask(mask: np.ndarray) -> np.ndarray:
    return MASK_COLOURS[np.clip(mask, 0, len(MASK_COLOURS) - 1)]


def write_report_images(model_dir: str, eval_examples_dir: str, report_dir: str, count: int) -> List[str]:
    """Input | true mask | predicted mask PNGs for the first `count` eval images, at twice the model's size."""
    from PIL import Image

    out = pathlib.Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    if count <= 0:
        return []
    serve = tf.saved_model.load(model_dir).signatures[names.SERVING_SIGNATURE]
    dataset = tfrecords(sorted(str(p) for p in pathlib.Path(eval_examples_dir).iterdir()))
    written = []
    for i, record in enumerate(dataset.take(count)):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        image_bytes = feature[features.RAW_IMAGE_KEY].bytes_list.value[0]
        predicted = serve(image_bytes=tf.constant([image_bytes]))["mask"][0].numpy()
        size = predicted.shape[0]
        image = preprocessing.decode_image(tf.constant(image_bytes), size).numpy()
        truth = preprocessing.decode_mask(tf.constant(feature[features.RAW_MASK_KEY].bytes_list.value[0]), size).numpy()
        panel = np.concatenate([image, _colour_mask(truth), _colour_mask(predicted)], axis=1)
        name = feature[features.FILE_NAME_KEY].bytes_list.value[0].decode().rsplit(".", 1)[0]
        path = out / f"{i:02d}_{name}.png"
        Image.fromarray(panel).resize((panel.shape[1] * 2, panel.shape[0] * 2), Image.NEAREST).save(path)
        written.append(str(path))
    return written

"""VGG16 encoder + FCN-8s decoder returning per-pixel logits and its compile recipe."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import tensorflow as tf

from config.settings import ModelConfig, TrainConfig
from transform.features import IMAGE_KEY, NUM_CLASSES

log = logging.getLogger(__name__)


IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + IMAGENET_WEIGHTS_FILE
IMAGENET_WEIGHTS_MD5 = "6d6bbae143d832006294945121d1f1fc"

# (block, convs, channels) of tf.keras.applications.VGG16; layer names must match it so weights load by name.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
# He init keeps activations from fading through 15 ReLU convs when VGG16 trains from scratch.
RELU_INIT = "he_normal"
ENCODER_CONV_NAMES = tuple(f"block{b}_conv{i}" for b, n, _ in VGG16_BLOCKS for i in range(1, n + 1))


def build_model(
    model_config: ModelConfig, policy: str, dropout: Optional[float] = None, load_weights: bool = True
) -> tf.keras.Model:
    """FCN-8s on VGG16: input `image` uint8 [B, S, S, 3] -> float32 logits [B, S, S, NUM_CLASSES].

    S must be a multiple of 32. Layers compute in the Keras `policy` ("float32", "mixed_float16",
    "mixed_bfloat16"; `trainer.precision` turns `model.mixed_precision` into one); the logits are always
    float32 so the loss and metrics stay exact. `dropout` follows fc6/fc7 as in the FCN paper (0
    disables it, e.g. for bit-comparable tests). `load_weights=False` leaves a pretrained encoder at
    random values, frozen as configured: a step then costs what the Trainer's does, without reading or
    downloading the weights. Build it inside `strategy.scope()`.
    """
    size = model_config.image_size
    dropout = model_config.dropout if dropout is None else dropout
    if size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (five 2x poolings), got {size}")
    pretrained = model_config.encoder_weights != "none"
    if pretrained and model_config.width_multiplier != 1:
        raise ValueError("pretrained VGG16 weights need width_multiplier=1")

    # uint8 pixels in, as Transform stores them: scaling happens here, in the graph that is served.
    image = tf.keras.Input((size, size, 3), name=IMAGE_KEY, dtype=tf.uint8)
    # ImageNet weights expect caffe-style input (BGR, 0-255, mean-subtracted); a random encoder trains on [0, 1].
    if pretrained:
        x = VGGPreprocess(name="vgg_preprocess", dtype="float32")(image)
    else:
        x = tf.keras.layers.Rescaling(1 / 255, name="scale", dtype="float32")(image)
    pools = {}
    for block, convs, channels in VGG16_BLOCKS:
        width = max(1, round(channels * model_config.width_multiplier))
        for i in range(1, convs + 1):
            x = tf.keras.layers.Conv2D(
                width,
                3,
                padding="same",
                activation="relu",
                kernel_initializer=RELU_INIT,
                name=f"block{block}_conv{i}",
                dtype=policy,
            )(x)
        x = pools[block] = tf.keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool", dtype=policy)(x)

    x = tf.keras.layers.Conv2D(
        model_config.head_width,
        7,
        padding="same",
        activation="relu",
        kernel_initializer=RELU_INIT,
        name="fc6",
        dtype=policy,
    )(pools[5])
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="drop6", dtype=policy)(x)
    x = tf.keras.layers.Conv2D(
        model_config.head_width, 1, activation="relu", kernel_initializer=RELU_INIT, name="fc7", dtype=policy
    )(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout, name="drop7", dtype=policy)(x)
    # Score layers are linear: they produce logits, and a ReLU here would clip every negative class score.
    x = _score(x, "score_fr", policy)
    x = _upsample(x, 2, "upscore2", policy)
    x = tf.keras.layers.Add(name="fuse_pool4", dtype=policy)([x, _score(pools[4], "score_pool4", policy)])
    x = _upsample(x, 2, "upscore_pool4", policy)
    x = tf.keras.layers.Add(name="fuse_pool3", dtype=policy)([x, _score(pools[3], "score_pool3", policy)])
    x = _upsample(x, 8, "upscore8", policy)
    # float32 logits under any policy; softmax belongs to the loss (from_logits=True), not the model.
    logits = tf.keras.layers.Activation("linear", name="logits", dtype="float32")(x)
    model = tf.keras.Model(image, logits, name="vgg16_fcn8")

    if pretrained:
        frozen = not model_config.fine_tune_encoder
        for name in ENCODER_CONV_NAMES:
            model.get_layer(name).trainable = not frozen
        if load_weights:
            _load_encoder_weights(model, _weights_path(model_config.encoder_weights))
            log.info("Encoder weights from %s, %s", model_config.encoder_weights, "frozen" if frozen else "fine-tuned")
    return model


def compile_model(model: tf.keras.Model, train_config: TrainConfig) -> tf.keras.Model:
    """Adam + sparse cross-entropy on logits, with pixel accuracy and mean IoU; call inside `strategy.scope()`."""
    optimizer = tf.keras.optimizers.Adam(train_config.learning_rate)
    # Keras only wraps automatically when the *global* policy is float16; our layers carry their own.
    if any(layer.compute_dtype == "float16" for layer in model.layers):
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            tf.keras.metrics.MeanIoU(NUM_CLASSES, name="mean_iou", sparse_y_pred=False),
        ],
        jit_compile=train_config.jit_compile,
    )
    _run_steps_unconverted(model)
    return model


def _run_steps_unconverted(model: tf.keras.Model) -> None:
    """Keeps AutoGraph out of Keras' train/test/predict steps.

    TF exempts the `keras` package from AutoGraph but not its Keras 2 copy `tf_keras`, so the first
    fit, evaluate or predict would convert the loss, metric and optimizer code behind each step (about
    2,800 functions) before tracing it. That code is written for graph mode and always ran unconverted
    as `keras`; a step run under `do_not_convert` also turns conversion off for every layer it calls.
    """
    for name in ("train_step", "test_step", "predict_step"):
        setattr(model, name, tf.autograph.experimental.do_not_convert(getattr(model, name)))


@tf.keras.utils.register_keras_serializable(package="petseg")
class VGGPreprocess(tf.keras.layers.Layer):
    """uint8 RGB -> the caffe-style input the ImageNet VGG16 weights were trained on."""

    def call(self, inputs):
        return tf.keras.applications.vgg16.preprocess_input(tf.cast(inputs, tf.float32))


@tf.keras.utils.register_keras_serializable(package="petseg")
class BilinearUpsampling(tf.keras.initializers.Initializer):
    """Transposed-conv kernel that starts as per-class bilinear interpolation, as in the FCN paper."""

    def __call__(self, shape, dtype=None, **kwargs):
        kh, kw, out_ch, in_ch = shape
        factor = (kh + 1) // 2
        center = factor - 1 if kh % 2 else factor - 0.5
        og = np.ogrid[:kh, :kw]
        filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
        kernel = np.zeros(shape, np.float32)
        for c in range(min(out_ch, in_ch)):
            kernel[:, :, c, c] = filt
        return tf.constant(kernel, dtype=dtype or tf.float32)


def _score(x, name: str, policy: str):
    return tf.keras.layers.Conv2D(NUM_CLASSES, 1, name=name, dtype=policy)(x)


def _upsample(x, factor: int, name: str, policy: str):
    # 'same' padding with stride == factor makes the output exactly factor x the input for any size,
    # unlike the seed's valid padding + Cropping2D.
    return tf.keras.layers.Conv2DTranspose(
        NUM_CLASSES,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        name=name,
        dtype=policy,
    )(x)


def _weights_path(encoder_weights: str) -> str:
    if encoder_weights == "imagenet":
        return tf.keras.utils.get_file(
            IMAGENET_WEIGHTS_FILE, IMAGENET_WEIGHTS_URL, cache_subdir="models", file_hash=IMAGENET_WEIGHTS_MD5
        )
    return encoder_weights


def _load_encoder_weights(model: tf.keras.Model, path: str) -> None:
    """Loads VGG16 conv weights by layer name; fails if the file lacks any encoder conv."""
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f  # whole-model save vs save_weights
        names = {n.decode() if isinstance(n, bytes) else n for n in root.attrs["layer_names"]}
    missing = [n for n in ENCODER_CONV_NAMES if n not in names]
    if missing:
        raise ValueError(f"{path} is not a VGG16 weights file: no weights for {missing}")
    # by_name skips our decoder layers; shape mismatches still raise.
    model.load_weights(path, by_name=True)

"""VGG16-FCN8 model: shapes, logits and loss, pretrained encoder loading, mixed precision, parameter counts."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from config.settings import ModelConfig, TrainConfig
from trainer import model as model_lib
from transform.features import NUM_CLASSES

TINY = ModelConfig(image_size=32, width_multiplier=0.125, head_width=16)


@pytest.fixture(autouse=True)
def _fresh_keras():
    yield
    tf.keras.backend.clear_session()


@pytest.mark.parametrize("size", [32, 64, 96, 160, 224])
def test_output_matches_input_size(size):
    model = model_lib.build_model(dataclasses.replace(TINY, image_size=size), "float32")
    out = model(tf.zeros([1, size, size, 3], tf.uint8))
    assert out.shape == (1, size, size, NUM_CLASSES)
    assert out.dtype == tf.float32


def test_rejects_size_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        model_lib.build_model(dataclasses.replace(TINY, image_size=48), "float32")


def test_outputs_are_logits_and_loss_is_cross_entropy_on_them():
    model = model_lib.compile_model(model_lib.build_model(TINY, "float32", dropout=0), TrainConfig())
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    logits = model.predict(images, verbose=0)
    # A softmax head (the seed defect) would make every pixel sum to 1 and lie in [0, 1].
    assert not np.allclose(logits.sum(-1), 1.0, atol=1e-3)

    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, size=(2, 32, 32))
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_softmax, labels[..., None], -1).mean()
    loss = model.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_loss_on_confident_correct_logits_is_zero():
    # Large one-hot logits are a perfect prediction only if the loss applies softmax itself.
    labels = np.random.default_rng(0).integers(0, NUM_CLASSES, size=(2, 8, 8))
    logits = 50.0 * tf.one_hot(labels, NUM_CLASSES)
    model = model_lib.compile_model(model_lib.build_model(TINY, "float32"), TrainConfig())
    assert float(model.loss(labels, logits)) < 1e-6
    # The seed's softmax-then-from_logits loss stays far from 0 on a perfect prediction.
    assert float(model.loss(labels, tf.nn.softmax(logits))) > 0.5


def test_pretrained_encoder_loads_by_name_and_is_frozen(tmp_path):
    path = str(tmp_path / "vgg16_notop.h5")
    # Input size doesn't change VGG16 no-top weights; 32x32 keeps it fast.
    vgg = tf.keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    vgg.save_weights(path)
    expected = {name: vgg.get_layer(name).get_weights() for name in ("block1_conv1", "block5_conv3")}

    config = ModelConfig(image_size=32, width_multiplier=1.0, head_width=8, encoder_weights=path)
    model = model_lib.build_model(config, "float32")
    for name, (kernel, bias) in expected.items():
        np.testing.assert_array_equal(model.get_layer(name).kernel.numpy(), kernel)
        np.testing.assert_array_equal(model.get_layer(name).bias.numpy(), bias)
    trainable = {v.name.split("/")[0] for v in model.trainable_variables}
    assert not trainable & set(model_lib.ENCODER_CONV_NAMES)
    assert {"fc6", "fc7", "score_fr", "upscore8"} <= trainable

    tuned = model_lib.build_model(dataclasses.replace(config, fine_tune_encoder=True), "float32")
    assert all(tuned.get_layer(n).trainable for n in model_lib.ENCODER_CONV_NAMES)


def test_without_loading_weights_a_pretrained_encoder_is_frozen_as_configured(tmp_path):
    """What the precision probe and the bench time: the Trainer's trainable set, no weights file read."""
    config = ModelConfig(image_size=32, width_multiplier=1.0, head_width=8, encoder_weights=str(tmp_path / "absent.h5"))
    model = model_lib.build_model(config, "float32", load_weights=False)
    trainable = {v.name.split("/")[0] for v in model.trainable_variables}
    assert not trainable & set(model_lib.ENCODER_CONV_NAMES)
    assert {"fc6", "fc7", "score_fr", "upscore8"} <= trainable
    with pytest.raises(OSError):
        model_lib.build_model(config, "float32")


def test_pretrained_file_without_vgg_layers_is_refused(tmp_path):
    path = str(tmp_path / "other.h5")
    tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, name="dense")]).save_weights(path)
    with pytest.raises(ValueError, match="not a VGG16 weights file"):
        model_lib.build_model(
            ModelConfig(image_size=32, width_multiplier=1.0, head_width=8, encoder_weights=path), "float32"
        )


def test_mixed_bfloat16_computes_in_bf16_but_returns_float32_logits():
    model = model_lib.build_model(TINY, "mixed_bfloat16")
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("block1_conv1").kernel.dtype == tf.float32  # variables stay float32
    assert model(tf.zeros([1, 32, 32, 3], tf.uint8)).dtype == tf.float32


def test_mixed_float16_gets_loss_scaling():
    model = model_lib.build_model(TINY, "mixed_float16")
    model_lib.compile_model(model, TrainConfig())
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)


def test_seed_profile_parameter_counts():
    model = model_lib.build_model(
        ModelConfig(image_size=224, width_multiplier=1.0, head_width=4096, encoder_weights="none"), "float32"
    )
    assert model.get_layer("fc6").count_params() == 7 * 7 * 512 * 4096 + 4096  # 102.8 M: the seed's 7x7 head conv
    assert 134.0e6 < model.count_params() < 134.5e6


def test_tiny_model_learns_a_constant_mask():
    tf.keras.utils.set_random_seed(0)
    model = model_lib.compile_model(model_lib.build_model(TINY, "float32", dropout=0), TrainConfig(learning_rate=1e-2))
    images = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    labels = np.ones((8, 32, 32), np.uint8)
    history = model.fit(images, labels, batch_size=8, epochs=15, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]

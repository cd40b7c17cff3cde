"""Mixed precision: what "auto" stands for, both CPU branches forced with the model's real step timed."""

import pytest
import tensorflow as tf

from config.settings import ModelConfig, TrainConfig
from trainer import model as model_lib, precision

TINY = ModelConfig(image_size=32, width_multiplier=0.125, head_width=16)
TRAIN = TrainConfig(batch_size=2)


@pytest.fixture(autouse=True)
def _fresh_keras():
    yield
    tf.keras.backend.clear_session()


@pytest.fixture
def timings(monkeypatch):
    """Each real timing of the model's step, as `decide_auto` receives it."""
    seen = []
    real = precision.model_step_seconds
    monkeypatch.setattr(precision, "model_step_seconds", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    return seen


def test_cpu_bf16_flags_come_from_cpuinfo(tmp_path):
    for flag in ("avx512_bf16", "amx_bf16"):
        (tmp_path / flag).write_text(f"processor\t: 0\nflags\t\t: fpu sse avx512f {flag}\n")
        assert precision.cpu_supports_bf16(str(tmp_path / flag))
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not precision.cpu_supports_bf16(str(plain))
    assert not precision.cpu_supports_bf16(str(tmp_path / "missing"))


FASTER_BF16 = {"float32": 3.411, "bfloat16": 1.70}
SLOWER_BF16 = {"float32": 0.14, "bfloat16": 4.9}
# The full model's step on an AVX512_BF16 CPU: bf16 instructions, no speed-up.
EVEN = {"float32": 3.411, "bfloat16": 3.414}
BARELY_FASTER = {"float32": 1.05, "bfloat16": 1.0}


@pytest.mark.parametrize(
    "gpu, cpu_bf16, seconds, policy",
    [
        ((8, 0), False, None, "mixed_float16"),
        ((7, 0), False, None, "mixed_float16"),
        ((7, 5), True, None, "mixed_float16"),  # a GPU decides, whatever the host CPU has
        ((6, 1), False, None, "float32"),  # no tensor cores
        ((0, 0), False, None, "float32"),  # a GPU that reports no capability
        (None, True, FASTER_BF16, "mixed_bfloat16"),
        (None, True, SLOWER_BF16, "float32"),
        (None, True, EVEN, "float32"),
        (None, True, BARELY_FASTER, "float32"),  # within the margin: not worth the precision
        (None, False, FASTER_BF16, "float32"),  # without the instructions bf16 is emulated
        (None, False, None, "float32"),
    ],
    ids=[
        "ampere",
        "volta",
        "gpu-over-cpu",
        "pascal",
        "unknown-gpu",
        "cpu-bf16-faster",
        "cpu-bf16-slower",
        "cpu-bf16-even",
        "cpu-bf16-within-margin",
        "cpu-no-bf16-flags",
        "plain-cpu",
    ],
)
def test_auto_policy(gpu, cpu_bf16, seconds, policy):
    assert precision.auto_policy(gpu, cpu_bf16, seconds) == policy


def test_auto_policy_on_a_bf16_cpu_needs_the_timing():
    with pytest.raises(ValueError, match="model_step_seconds"):
        precision.auto_policy(None, True, None)


@pytest.mark.parametrize(
    "name, policy", [("none", "float32"), ("mixed_bfloat16", "mixed_bfloat16"), ("mixed_float16", "mixed_float16")]
)
def test_named_policies_pass_through_untimed(name, policy, timings):
    assert precision.training_policy(name, TINY, TRAIN, tf.distribute.get_strategy()) == policy
    assert timings == []


def test_auto_is_not_a_keras_policy():
    with pytest.raises(ValueError, match="training_policy"):
        precision.policy_name("auto")


def test_forced_bf16_cpu_times_the_configured_model_and_picks_bf16_when_faster(monkeypatch, timings):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *_: True)
    monkeypatch.setattr(precision, "BF16_MIN_SPEEDUP", 0.0)
    assert precision.decide_auto(TINY, TRAIN) == "mixed_bfloat16"
    assert [sorted(t) for t in timings] == [["bfloat16", "float32"]]


def test_forced_bf16_cpu_keeps_float32_when_bf16_does_not_pay(monkeypatch, timings):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *_: True)
    monkeypatch.setattr(precision, "BF16_MIN_SPEEDUP", 1e9)
    assert precision.decide_auto(TINY, TRAIN) == "float32"
    assert len(timings) == 1


def test_a_cpu_without_bf16_instructions_trains_in_float32_untimed(monkeypatch, timings):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *_: False)
    assert precision.decide_auto(TINY, TRAIN) == "float32"
    assert timings == []


def test_the_timed_step_is_the_configured_models(monkeypatch):
    """The configured widths, image size and frozen encoder, in each dtype: not a fixed stand-in."""
    config = ModelConfig(image_size=64, width_multiplier=1.0, head_width=8, encoder_weights="/absent/vgg16.h5")
    built = []
    real_build = model_lib.build_model
    monkeypatch.setattr(model_lib, "build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    seconds = precision.model_step_seconds(config, TRAIN, repeats=1)
    assert set(seconds) == {"float32", "bfloat16"}

    reference = real_build(config, "float32", load_weights=False)
    assert [m.get_layer("block1_conv1").compute_dtype for m in built] == ["float32", "bfloat16"]
    for model in built:
        assert model.input_shape == reference.input_shape == (None, 64, 64, 3)
        assert model.count_params() == reference.count_params()
        assert len(model.trainable_weights) == len(reference.trainable_weights) < len(reference.weights)


def test_the_timed_models_are_plain_whatever_scope_the_caller_is_in(monkeypatch):
    """Inside a strategy's scope the step still times one device's model, and joins no collective."""
    built = []
    real_build = model_lib.build_model
    monkeypatch.setattr(model_lib, "build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        precision.model_step_seconds(TINY, TRAIN, repeats=1)
        assert isinstance(tf.Variable(1.0), tf.distribute.DistributedValues)  # the caller's scope is intact
    assert len(built) == 2
    assert not [v.name for m in built for v in m.weights if isinstance(v, tf.distribute.DistributedValues)]

"""bench helpers on trivial sizes: analytic FLOP counts, the timing loops and the tf.data decode limit run."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from bench import measure, stages, training
from config.profiles import load_config
from support.images import png, random_rgb, raw_example, trimap
from transform import preprocessing

TINY = dataclasses.replace(load_config("tiny"), train=dataclasses.replace(load_config("tiny").train, batch_size=2))


@pytest.fixture(autouse=True)
def _fresh_keras():
    yield
    tf.keras.backend.clear_session()


def test_conv_macs_by_hand():
    x = tf.keras.Input((8, 8, 3))
    y = tf.keras.layers.Conv2D(4, 3, padding="same", name="c")(x)
    y = tf.keras.layers.Conv2DTranspose(2, 4, strides=2, padding="same", name="t")(y)
    model = tf.keras.Model(x, y)
    assert measure.conv_macs(model) == {"c": 8 * 8 * 9 * 3 * 4, "t": 8 * 8 * 16 * 4 * 2}
    total = 8 * 8 * 9 * 3 * 4 + 8 * 8 * 16 * 4 * 2
    assert measure.training_flops_per_image(model) == 6 * total
    model.get_layer("c").trainable = False
    assert measure.training_flops_per_image(model) == 2 * 8 * 8 * 9 * 3 * 4 + 6 * 8 * 8 * 16 * 4 * 2
    assert measure.inference_flops_per_image(model) == 2 * total


@pytest.fixture
def clock(monkeypatch):
    """perf_counter reads these instants in turn: each timed call lasts exactly as long as the test says."""

    def set_instants(*instants):
        readings = iter(instants)
        monkeypatch.setattr(measure.time, "perf_counter", lambda: next(readings))

    return set_instants


def test_the_best_of_the_repeats_divides_the_work(clock):
    # Three fits of 2 steps of batch 2 lasting 2 s, 1 s and 4 s: 4 images in the best second.
    model = training.build(TINY, "float32")
    batches = training.synthetic_batches(TINY.model.image_size, 2, 2)
    fits = []
    model.fit = lambda *a, **k: fits.append(k["steps_per_epoch"])  # the model's real fit is timed elsewhere
    clock(0.0, 2.0, 10.0, 11.0, 20.0, 24.0)
    assert training.images_per_second(model, lambda: training.in_memory(batches), 2, 2, repeats=3) == 4.0
    assert fits == [2, 2, 2]
    # A chain of 4 matmuls of 64² (2·64³ FLOP each) in its best run of 0.5 s; the first call traces.
    clock(0.0, 1.0, 3.0, 3.5)
    assert measure.matmul_flops_per_second(tf.float32, size=64, repeats=2, chain=4) == 2 * 64**3 * 4 / 0.5


def test_decoded_matches_preprocessing(tmp_path):
    path = tmp_path / "Split-eval" / "data.tfrecord"
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(raw_example(png(random_rgb()), png(trimap())))
    files = stages.record_files(str(tmp_path), ("eval",))
    [(image, mask)] = list(stages.decoded(files, 32))
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
    np.testing.assert_array_equal(mask.numpy(), preprocessing.decode_mask(tf.constant(png(trimap())), 32).numpy())


def test_transformed_bytes_per_example(tmp_path):
    path = tmp_path / "Split-train" / "data"
    path.parent.mkdir()
    records = [b"x" * 100, b"y" * 300]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    (tmp_path / "Split-eval").mkdir()
    # TFRecord framing adds 16 bytes per record (length, two CRCs).
    assert stages.transformed_bytes_per_example(str(tmp_path), len(records)) == (400 + 2 * 16) / 2


@pytest.mark.parametrize("cpu_bf16, picks", [(False, "float32"), (True, "mixed_bfloat16")])
def test_float32_and_bfloat16_training_are_both_timed(monkeypatch, cpu_bf16, picks):
    from trainer import precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *_: cpu_bf16)
    monkeypatch.setattr(precision, "BF16_MIN_SPEEDUP", 0.0)  # bf16 wins wherever it is timed
    batches = training.synthetic_batches(TINY.model.image_size, 2, 2)
    figures = training.precision_figures(TINY, batches, 2, 2)
    speeds = figures["train_images_per_second_by_precision"]
    assert set(speeds) == {"float32", "bfloat16"}
    assert figures["bf16_speedup"] == pytest.approx(speeds["bfloat16"] / speeds["float32"], rel=0.05)
    assert figures["mixed_precision_auto_picks"] == picks


def _saved_model(path):
    """A real (small) SavedModel: saved_model.pb, variables/ and a fingerprint."""
    module = tf.Module()
    module.weights = tf.Variable(tf.zeros([1000]))
    tf.saved_model.save(module, str(path))
    return path


def test_model_copies_count_each_inode_once(tmp_path):
    import shutil

    from bench import model_bytes
    from components import serving_dir

    trainer = _saved_model(tmp_path / "pipeline_root" / "Trainer" / "model" / "7" / "Format-Serving")
    one_model = sum(p.stat().st_size for p in trainer.rglob("*") if p.is_file())
    serving_dir.place(str(trainer), str(tmp_path / "serving" / "100"))  # hard links on one filesystem
    first = model_bytes.model_files(str(tmp_path))
    shutil.copytree(
        tmp_path / "serving" / "100",
        tmp_path / "pipeline_root" / "LatestBlessedModel" / "model" / "9" / "Format-Serving",
    )
    second = model_bytes.model_files(str(tmp_path))

    figures = model_bytes.model_copies_figures([first, second], one_model, ["first", "second"])
    run1, run2 = figures["model_bytes_by_place"]["first"], figures["model_bytes_by_place"]["second"]
    assert run1["Trainer"]["bytes_written"] == one_model
    assert run1["serving"]["bytes_named"] == one_model and run1["serving"]["bytes_written"] == 0
    assert run2["Trainer"]["bytes_written"] == 0 and run2["serving"]["bytes_written"] == 0
    assert run2["LatestBlessedModel"]["bytes_written"] == one_model  # a copy is written anew
    assert figures["model_copies_per_run"] == 2.0 and figures["trainer_exports"] == 1


def test_served_model_bytes_ratio_sees_optimizer_slots(tmp_path):
    from bench import model_bytes

    model = training.build(TINY)
    batches = training.synthetic_batches(TINY.model.image_size, 2, 1)
    model.fit(training.in_memory(batches), epochs=1, steps_per_epoch=1, verbose=0)  # creates Adam's two slots
    weights = model.count_params() * 4  # float32
    model.save(str(tmp_path / "1"), save_format="tf", save_traces=False)
    with_slots = model_bytes.served_model_figures(str(tmp_path))
    assert with_slots["served_model"]["version"] == 1 and with_slots["served_model"]["weight_bytes"] == weights
    assert with_slots["served_model_bytes_ratio"] > 2.9
    assert with_slots["served_model"]["stored_values"]["optimizer"]["values"] >= 2 * model.count_params()

    model.save(str(tmp_path / "2"), save_format="tf", save_traces=False, include_optimizer=False)
    weights_only = model_bytes.served_model_figures(str(tmp_path))
    assert weights_only["served_model"]["version"] == 2
    assert 1.0 <= weights_only["served_model_bytes_ratio"] <= 1.05
    assert weights_only["served_model"]["stored_values"]["optimizer"]["values"] == 0


def test_scale_runs_at_tiny_sizes(tmp_path):
    """`--scale` end to end at 40 and 80 images: every key and its structure, no timing goals."""
    import json

    from bench import run, scale

    output = tmp_path / "scale.json"
    assert (
        run.main(
            [
                "--scale",
                "--scale-profile",
                "tiny",
                "--validation-profile",
                "tiny",
                "--scale-sizes",
                "40,80",
                "--scale-evaluator-model",
                "profile",
                "--scale-train-batch",
                "2",
                "--scale-train-steps",
                "1",
                "--matmul-size",
                "256",
                "--work",
                str(tmp_path / "work"),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    results = json.loads(output.read_text())
    assert all(isinstance(results[key], float) for key in run.SCALE_HEADLINE)
    assert 1.0 <= results["served_model_bytes_ratio"] <= 1.05  # the weights alone
    assert results["scale_images"] == {"40": {"train": 20, "eval": 20}, "80": {"train": 40, "eval": 40}}
    for key in ("scale_time_per_image_ratio_by_stage", "scale_peak_rss_ratio_by_stage"):
        assert set(results[key]) == set(scale.STAGES)
    assert results["scale_time_per_image_ratio"] == max(results["scale_time_per_image_ratio_by_stage"].values())
    for stage, rows in results["scale_stages"].items():
        assert set(rows) == {"40", "80"}
        assert rows["80"]["images"] == (40 if stage == "Evaluator" else 80)
        # Each stage runs in a child that imports TensorFlow (hundreds of MB), on a 24 GiB machine.
        assert all(200 < row["peak_rss_mb"] < 24 * 1024 for row in rows.values()), rows
    served = results["served_model"]
    assert served["stored_values"]["model"]["values"] == served["parameters"] == results["full_model_parameters"]
    assert set(results["full_model_train_step"]) == {"float32", "bfloat16"}
    assert results["full_model_train_step"]["bfloat16"]["compute_dtype"] == "bfloat16"
    # Below the measured matmul peak, which bounds what any step can use.
    assert all(0 < step["mfu"] < 1 for step in results["full_model_train_step"].values())
    assert results["validation"]["validation_images"] == load_config("tiny").train.validation_images
    assert results["machine_at_start"]["cpu_flags"].keys() >= {"avx512f", "avx512_bf16", "amx_bf16"}

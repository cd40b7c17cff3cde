"""Retraining on new data: `{SPAN}` patterns; run 2 reads span 2, warm-starts from and is compared with run 1's
pushed model."""

import pytest
from config import names
from dataset import spans, synthetic
from config.settings import ConfigError
from config.profiles import load_config
from support import petseg
from report import metrics
from report.artifacts import RunArtifacts


def test_find_and_resolve_spans(tmp_path):
    for name in ("span-1", "span-12", "span-x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "span-3").write_text("a file, not a span")
    pattern = str(tmp_path / "span-{SPAN}")
    assert spans.find_spans(pattern) == {1: str(tmp_path / "span-1"), 12: str(tmp_path / "span-12")}
    assert spans.resolve_span(pattern) == (12, str(tmp_path / "span-12"))
    assert spans.resolve_span(pattern, 1) == (1, str(tmp_path / "span-1"))
    with pytest.raises(FileNotFoundError, match=r"span 2 .* found \[1, 12\]"):
        spans.resolve_span(pattern, 2)
    (tmp_path / "span-01").mkdir()
    with pytest.raises(ValueError, match="matches both"):
        spans.find_spans(pattern)
    with pytest.raises(FileNotFoundError, match="no folder matches"):
        spans.resolve_span(str(tmp_path / "missing" / "span-{SPAN}"))
    with pytest.raises(ValueError, match="last path component"):
        spans.find_spans(str(tmp_path / "span-{SPAN}" / "raw"))


def test_spans_on_another_filesystem_and_the_window_of_the_newest(tmp_path):
    import tensorflow as tf

    root = f"ram://{tmp_path.name}/pets"  # any tf.io.gfile filesystem, as gs:// is
    for name in ("span-2", "span-5", "span-9", "other"):
        tf.io.gfile.makedirs(f"{root}/{name}/images")
    tf.io.gfile.GFile(f"{root}/span-7", "w").write("a file, not a span")
    pattern = f"{root}/span-{{SPAN}}"
    assert spans.find_spans(pattern) == {2: f"{root}/span-2", 5: f"{root}/span-5", 9: f"{root}/span-9"}
    assert spans.span_window(pattern) == [(9, f"{root}/span-9")]
    assert [s for s, _ in spans.span_window(pattern, size=2)] == [5, 9]
    assert [s for s, _ in spans.span_window(pattern, span=5, size=3)] == [2, 5]  # fewer when fewer exist
    with pytest.raises(ValueError, match="at least one span"):
        spans.span_window(pattern, size=0)


def test_span_window_needs_a_span_pattern_given_by_any_means():
    from cli.config_args import config_from_args
    from cli.main import build_parser

    with pytest.raises(ConfigError, match="data.span_window: needs a data.oxford_raw_dir with {SPAN}"):
        load_config("tiny", None, ["data.span_window=2"])
    with pytest.raises(ConfigError, match="data.span_window: must be >= 1"):
        load_config("tiny", None, ["data.span_window=0"])
    # The flag sets the pattern after --set: the settings are checked once both apply.
    args = build_parser().parse_args(
        ["run", "--profile", "tiny", "--oxford-raw-dir", "/d/span-{SPAN}", "--set", "data.span_window=3"]
    )
    assert config_from_args(args).data.span_window == 3


def test_span_setting_needs_a_span_pattern():
    with pytest.raises(ConfigError, match="data.span"):
        load_config("tiny", None, ["data.span=2"])
    with pytest.raises(ConfigError, match="data.span"):
        load_config(
            "tiny", None, ["data.dataset=oxford_iiit_pet", "data.oxford_raw_dir=/d/span-{SPAN}", "data.span=-1"]
        )
    config = load_config(
        "tiny", None, ["data.dataset=oxford_iiit_pet", "data.oxford_raw_dir=/d/span-{SPAN}", "data.span=2"]
    )
    assert config.data.span == 2


# ---------------------------------------------------------------- two runs, two spans


def petseg_run(output, raw_pattern):
    return petseg.run(
        output,
        "--profile",
        "tiny",
        "--oxford-raw-dir",
        raw_pattern,
        "--set",
        "train.warm_start=true",
        "--set",
        "eval.report_images=0",
    )


@pytest.fixture(scope="module")
def two_spans(tmp_path_factory):
    raw, output = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("run")
    pattern = str(raw / "span-{SPAN}")
    synthetic.write_archive(raw / "span-1", 48, 16, seed=1)
    first = petseg_run(output, pattern)
    # New data arrives; the same command (e.g. from cron) picks it up.
    synthetic.write_archive(raw / "span-2", 48, 16, seed=2)
    second = petseg_run(output, pattern)
    return raw, output, first, second


@pytest.mark.slow
def test_each_run_reads_the_latest_span(two_spans):
    raw, output, first, second = two_spans
    store = RunArtifacts(str(output / "metadata.sqlite"))
    runs = store.executions(names.EXAMPLE_GEN_ID)
    assert len(runs) == 2  # the second was not served from cache
    for execution, span in zip(runs, (1, 2)):
        [examples] = store.outputs_of(execution, "examples")
        assert examples.get_int_custom_property("span") == span
        assert examples.get_string_custom_property("raw_dir") == str(raw / f"span-{span}")
        assert examples.get_string_custom_property("tfds_data_dir").endswith(f"span-{span}")
    assert second["dataset"]["data_dir"].endswith("span-2")


@pytest.mark.slow
def test_second_run_warm_starts_from_and_is_compared_with_the_first_blessed_model(two_spans):
    _, output, first, second = two_spans
    store = RunArtifacts(str(output / "metadata.sqlite"))
    trainer_runs = store.executions(names.TRAINER_ID)
    assert len(trainer_runs) == 2
    assert first["blessed"] is True and first["baseline"] is None
    [empty] = store.inputs_of(trainer_runs[0], "base_model")
    assert empty.get_int_custom_property("found") == 0  # nothing served yet: trained from scratch
    [base_model] = store.inputs_of(trainer_runs[1], "base_model")
    # The first run's pushed version, copied: the model the Trainer starts from and the Evaluator beats.
    assert base_model.get_int_custom_property("found") == 1
    assert base_model.get_string_custom_property("pushed_destination") == first["pushed_model"]
    evaluator_runs = store.executions(names.EVALUATOR_ID)
    [baseline] = store.inputs_of(evaluator_runs[1], "baseline_model")
    assert baseline.id == base_model.id
    # The baseline is scored on span 2's eval data, so its number is not run 1's own (on span 1).
    [examples] = store.inputs_of(evaluator_runs[1], "examples")
    assert examples.get_int_custom_property("span") == 2
    assert 0 <= second["baseline"]["mean_iou"] <= 1
    assert second["baseline"]["mean_iou"] != first["metrics"][metrics.OVERALL]["mean_iou"]
    logs = "\n".join(p.read_text() for p in (output / "logs").glob("*.log"))
    assert f"Warm-started from {base_model.uri}/Format-Serving" in logs

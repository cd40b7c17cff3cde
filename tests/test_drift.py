"""The drift gate on real statistics of synthetic spans: TFX's DistributionValidator (fixed), its report, the gate,
the calibrated defaults at 150 and 600 images, and the validator task compiled for Kubeflow."""

import dataclasses
import json
import logging
import pathlib
import shutil

import pytest
from google.protobuf import json_format
from tfx.components.distribution_validator import executor as stock_executor
from tfx.proto import distribution_validator_pb2
from tfx.types import standard_artifacts

from bench import drift_calibration as calibration
from cli import main as cli
from components import blessed_model, drift
from config import names
from config.settings import DriftConfig
from kubeflow import runner
from support import kfp_launcher
from support.petseg import compile_argv

pytestmark = pytest.mark.slow  # synthetic spans of up to 600 images, each built by TFDS and StatisticsGen

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG_KEY = "distribution_validator_config"
DEFAULTS = DriftConfig()
DRIFTED_FEATURES = {
    "dogs only": {"species"},
    "brighter camera (+40)": {"image_brightness"},
    "larger photos (x1.5)": {"image_height", "image_width"},
}


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    """ExampleStatistics of synthetic spans: undrifted pairs at 150 and 600 images, and drifted ones at 150."""
    work = tmp_path_factory.mktemp("spans")
    made = {}
    for name, images, seed, style in (
        ("base150", 150, 1, calibration.RANDOM),
        ("new150", 150, 2, calibration.RANDOM),
        ("base600", 600, 3, calibration.RANDOM),
        ("new600", 600, 4, calibration.RANDOM),
        ("half600", 300, 5, calibration.RANDOM),
        *((drift_name, 150, 6 + i, style) for i, (drift_name, style) in enumerate(calibration.DRIFTS.items())),
    ):
        made[name] = calibration.make_span(work / name.replace(" ", "_"), images, seed, style)
    return made


def validate(current, baseline, tmp_path, config=DEFAULTS, executor=drift.Executor, as_json=False):
    """Runs a DistributionValidator executor as the pipeline wires it; returns the anomalies artifact."""
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = str(tmp_path / "anomalies")
    proto = drift.validator_config(config) if isinstance(config, DriftConfig) else config
    executor().Do(
        {"statistics": [current], "baseline_statistics": [baseline] if baseline else []},
        {"anomalies": [anomalies]},
        {
            CONFIG_KEY: json_format.MessageToJson(proto) if as_json else proto,
            "include_split_pairs": json.dumps([list(drift.SPLIT_PAIR)]),
        },
    )
    return anomalies


def drifted(report):
    return {row["feature"] for row in report["features"] if row["drifted"]}


def test_undrifted_spans_pass_with_every_value_below_its_threshold(spans, tmp_path):
    report = drift.load_report(validate(spans["new150"], spans["base150"], tmp_path))
    assert report["verdict"] == drift.PASSED and drifted(report) == set()
    rows = {(row["feature"], row["comparator"]): row for row in report["features"]}
    assert set(rows) == {(f, c) for f, c, _ in drift.COMPARISONS} | {
        (drift.NUM_EXAMPLES, "min_fraction_threshold"),
        (drift.NUM_EXAMPLES, "max_fraction_threshold"),
    }
    for feature, comparator, key in drift.COMPARISONS:
        row = rows[feature, comparator]
        assert row["threshold"] == pytest.approx(getattr(DEFAULTS, key)) and 0 <= row["value"] < row["threshold"]
    assert rows[drift.NUM_EXAMPLES, "min_fraction_threshold"]["value"] == pytest.approx(1.0)


def test_a_drifted_span_names_each_drifted_feature_with_value_and_threshold(spans, tmp_path):
    report = drift.load_report(validate(spans["dogs only"], spans["base150"], tmp_path))
    assert report["verdict"] == drift.DRIFTED
    [species] = [row for row in report["features"] if row["feature"] == "species"]
    # Half the base span's pets are cats (3 of its 6 breeds), none of these: the cat share moves by about 0.5.
    assert species["drifted"] and 0.35 < species["value"] <= 0.65 and species["threshold"] == DEFAULTS.species_linf
    assert {"image_height", "image_width", "image_brightness"}.isdisjoint(drifted(report))
    text = drift.describe(report)
    assert f"species: L-infinity distance {species['value']:.4g} (threshold {DEFAULTS.species_linf:g})" in text


def test_a_json_string_config_as_kubeflow_hands_it_over_works(spans, tmp_path):
    report = drift.load_report(validate(spans["dogs only"], spans["base150"], tmp_path, as_json=True))
    assert "species" in drifted(report)
    # TFX's own executor fails on the same input: the defect the fix is for.
    with pytest.raises(AttributeError, match="'str' object has no attribute 'default_slice_config'"):
        validate(
            spans["dogs only"], spans["base150"], tmp_path / "stock", executor=stock_executor.Executor, as_json=True
        )


def test_a_normalized_abs_difference_over_its_threshold_is_drift(spans, tmp_path):
    config = distribution_validator_pb2.DistributionValidatorConfig()
    entry = config.default_slice_config.feature.add()
    entry.path.step.append("species")
    entry.distribution_comparator.normalized_abs_difference.threshold = 0.01
    report = drift.load_report(validate(spans["dogs only"], spans["base150"], tmp_path, config=config))
    [row] = report["features"]
    assert row["comparator"] == "normalized_abs_difference" and row["value"] > 0.1 and row["drifted"]
    assert report["verdict"] == drift.DRIFTED
    # TFX's executor measures the same value and blesses it anyway (its kept anomaly types leave this one out).
    stock = validate(
        spans["dogs only"], spans["base150"], tmp_path / "stock", config=config, executor=stock_executor.Executor
    )
    assert stock.get_json_value_custom_property("blessed") == {"train_train": 1}


def test_no_served_statistics_is_no_baseline_and_the_gate_lets_the_run_go_on(spans, tmp_path):
    # What LatestBlessedModel hands on before the first push: an artifact without statistics.
    model, statistics = standard_artifacts.Model(), standard_artifacts.ExampleStatistics()
    model.uri, statistics.uri = str(tmp_path / "model"), str(tmp_path / "baseline")
    blessed_model.Executor().Do(
        {},
        {"model": [model], "statistics": [statistics]},
        {"serving_dir": str(tmp_path / "serving"), "version": blessed_model.NEWEST},
    )
    anomalies = validate(spans["new150"], statistics, tmp_path)
    report = drift.load_report(anomalies)
    assert report == {
        "verdict": drift.NO_BASELINE,
        "span": 0,
        "baseline_version": None,
        "baseline_span": None,
        "features": [],
    }
    drift.DriftGate.test_call(anomalies=anomalies, action="stop")
    # TFX's executor never reaches its own empty-baseline path with such an artifact.
    with pytest.raises(ValueError, match="No split pairs"):
        validate(spans["new150"], statistics, tmp_path / "stock", executor=stock_executor.Executor)


def test_the_gate_stops_with_what_to_do_or_warns(spans, tmp_path, caplog):
    anomalies = validate(spans["dogs only"], spans["base150"], tmp_path)
    with pytest.raises(drift.DriftFoundError) as stopped:
        drift.DriftGate.test_call(anomalies=anomalies, action="stop")
    message = str(stopped.value)
    assert message.startswith("Span 0 drifted from the served model's training data")
    assert "species: L-infinity distance" in message and f"(threshold {DEFAULTS.species_linf:g})" in message
    assert "nothing was trained or pushed" in message and "--set drift.action=warn" in message
    with caplog.at_level(logging.WARNING, logger="components.drift"):
        drift.DriftGate.test_call(anomalies=anomalies, action="warn")
    assert "species: L-infinity distance" in caplog.text and "training on it anyway" in caplog.text
    with pytest.raises(ValueError, match="action must be one of"):
        drift.DriftGate.test_call(anomalies=anomalies, action="ignore")


@pytest.mark.parametrize("pair", [("new150", "base150"), ("new600", "base600")])
def test_the_defaults_pass_undrifted_spans_of_150_and_600_images(spans, tmp_path, pair):
    report = drift.load_report(validate(spans[pair[0]], spans[pair[1]], tmp_path))
    assert report["verdict"] == drift.PASSED, drift.describe(report)


@pytest.mark.parametrize("name", sorted(DRIFTED_FEATURES))
def test_the_defaults_catch_each_drift_on_its_own_features(spans, tmp_path, name):
    report = drift.load_report(validate(spans[name], spans["base150"], tmp_path))
    assert report["verdict"] == drift.DRIFTED and DRIFTED_FEATURES[name] <= drifted(report), report
    if name != "dogs only":  # the camera changed, not the pets
        assert drifted(report) == DRIFTED_FEATURES[name], drift.describe(report)


def test_the_defaults_catch_half_the_images_missing(spans, tmp_path):
    report = drift.load_report(validate(spans["half600"], spans["base600"], tmp_path))
    [low] = [r for r in report["features"] if r["comparator"] == "min_fraction_threshold"]
    assert low["value"] == pytest.approx(0.5) and low["drifted"]
    assert drifted(report) == {drift.NUM_EXAMPLES}


# ---------------------------------------------------------------- compiled for Kubeflow


def test_the_compiled_validator_task_reaches_the_executor_with_its_config_as_a_proto(spans, tmp_path):
    package = tmp_path / "pipeline.yaml"
    assert cli.main(compile_argv(package, image="local", serving_dir=str(tmp_path / "serving"), app_dir=str(REPO))) == 0
    spec = runner.load_spec(str(package))
    parameters = spec["root"]["dag"]["tasks"][names.DRIFT_VALIDATOR_ID]["inputs"]["parameters"]
    assert isinstance(parameters[CONFIG_KEY]["runtimeValue"]["constant"], str)  # JSON, as the compiler writes it

    def run_validator(run_id, executor_class=None):
        task_spec = json.loads(json.dumps(spec))
        if executor_class:
            component = task_spec["root"]["dag"]["tasks"][names.DRIFT_VALIDATOR_ID]["componentRef"]["name"]
            label = task_spec["components"][component]["executorLabel"]
            args = task_spec["deploymentSpec"]["executors"][label]["container"]["args"]
            args[args.index("--executor_class_path") + 1] = executor_class
        run = kfp_launcher.Run(task_spec, tmp_path, run_id)
        # The upstream outputs as open-source KFP's launcher records them: minio:// URIs, properties as metadata.
        for task, statistics, extra in (
            (names.STATISTICS_GEN_ID, spans["dogs only"], {}),
            (names.LATEST_BLESSED_MODEL_ID, spans["base150"], {"pushed_version": 7}),
        ):
            uri = f"{kfp_launcher.DEFAULT_ROOT}/{run.pipeline_name}/{run_id}-upstream/{task}/statistics"
            shutil.copytree(statistics.uri, run.store.path(uri))
            metadata = {"split_names": statistics.split_names, "span": statistics.span, **extra}
            run.outputs[task] = {"statistics": [run.metadata.record("statistics", {"uri": uri, "metadata": metadata})]}
        return run, run.run_task(names.DRIFT_VALIDATOR_ID)

    run, result = run_validator("ours")
    [anomalies] = result.outputs["anomalies"]
    report = json.loads((run.store.path(anomalies["uri"]) / drift.REPORT_FILE).read_text())
    assert report["verdict"] == drift.DRIFTED and "species" in drifted(report)
    assert report["baseline_version"] == 7
    # The thresholds the executor applied are the compiled config's, so it read the message whole.
    assert {r["feature"]: r["threshold"] for r in report["features"]}["image_brightness"] == DEFAULTS.brightness_jsd
    with pytest.raises(kfp_launcher.TaskFailed, match="'str' object has no attribute 'default_slice_config'"):
        run_validator("stock", "tfx.components.distribution_validator.executor.Executor")


def test_calibration_table_lists_every_comparison(spans, tmp_path):
    result = {
        "undrifted": [
            calibration.values(
                drift.load_report(
                    validate(spans["new150"], spans["base150"], tmp_path, config=calibration._MEASURE_ALL)
                )
            )
        ],
        "drifted": {
            "dogs only": calibration.values(
                drift.load_report(
                    validate(spans["dogs only"], spans["base150"], tmp_path / "d", config=calibration._MEASURE_ALL)
                )
            )
        },
    }
    lines = calibration.table(result).splitlines()
    assert len(lines) == 2 + len(drift.COMPARISONS) + 2
    assert lines[2].startswith("| species infinity_norm |") and lines[2].endswith(" |")
    assert dataclasses.asdict(DEFAULTS)["species_linf"] == float(lines[2].split("|")[6])

"""Retraining on spans with real `petseg run`s (LocalDagRunner): the drift gate stops a drifted span before Transform,
warn trains on it, the image statistics catch a new camera, and a window of spans trains on all of them."""

import json
import pathlib
import re

import tensorflow as tf
import tensorflow_data_validation as tfdv
from ml_metadata.proto import metadata_store_pb2

from config import names
from config.settings import DriftConfig
from report.artifacts import RunArtifacts
from support import drift_scenario

DEFAULTS = DriftConfig()


def store(scenario) -> RunArtifacts:
    return RunArtifacts(str(scenario.output / "metadata.sqlite"))


def drifted(summary) -> set:
    return {row["feature"] for row in summary["drift"]["features"] if row["drifted"]}


def version(run) -> int:
    """The served version a run pushed."""
    return int(pathlib.Path(run.summary["pushed_model"]).name)


def test_span_1_is_pushed_with_its_statistics_beside_the_model(spans_scenario):
    run = spans_scenario.runs["span1"]
    assert run.returncode == 0, run.console[-3000:]
    assert run.summary["drift"]["verdict"] == "no_baseline" and run.summary["blessed"]
    assert "drift: no baseline" in run.console
    statistics = pathlib.Path(run.summary["pushed_model"]) / "assets.extra" / "statistics"
    train = tfdv.load_stats_binary(str(statistics / "Split-train" / "FeatureStats.pb"))
    assert train.datasets[0].num_examples == drift_scenario.TRAIN
    assert {f.path.step[0] for f in train.datasets[0].features} >= {"species", "label", "image_brightness"}
    assert json.loads((statistics / "properties.json").read_text()) == {"span": 1, "split_names": ["train", "eval"]}


def test_span_2_passes_drift_and_trains_warm_started(spans_scenario):
    first, run = spans_scenario.runs["span1"], spans_scenario.runs["span2"]
    assert run.returncode == 0, run.console[-3000:]
    block = run.summary["drift"]
    assert (block["verdict"], block["span"], block["baseline_span"]) == ("passed", 2, 1)
    assert block["baseline_version"] == version(first) and block["action"] == "stop"
    assert all(
        row["value"] < row["threshold"] for row in block["features"] if row["comparator"] != "min_fraction_threshold"
    )
    assert run.summary["blessed"] and version(run) > version(first)
    with store(spans_scenario) as mlmd:
        [_, second] = mlmd.executions(names.TRAINER_ID)[:2]
        [base_model] = mlmd.inputs_of(second, "base_model")
    assert base_model.get_int_custom_property("pushed_version") == version(first)
    logs = "\n".join(p.read_text() for p in (spans_scenario.output / "logs").glob("*.log"))
    assert f"Warm-started from {base_model.uri}/Format-Serving" in logs


def test_a_span_of_dogs_only_stops_before_transform_naming_the_feature(spans_scenario):
    run, served = spans_scenario.runs["span3_stop"], spans_scenario.runs["span2"]
    assert run.returncode == 1
    [species] = [row for row in run.summary["drift"]["features"] if row["feature"] == "species"]
    assert species["drifted"] and species["threshold"] == DEFAULTS.species_linf
    # The console names the feature, its value and its threshold, and how to go on.
    assert (
        "petseg: DriftGate failed: Span 3 drifted from the served model's training data "
        f"(version {version(served)}, span 2):" in run.console
    )
    assert f"species: L-infinity distance {species['value']:.4g} (threshold {DEFAULTS.species_linf:g})" in run.console
    assert "--set drift.action=warn" in run.console
    # Its summary and dashboard are written all the same, and say why.
    assert run.summary["stopped"] == names.DRIFT_GATE_ID and run.summary["drift"]["verdict"] == "drifted"
    assert run.summary["metrics"] is None and run.summary["pushed_model"] is None and run.summary["model"] is None
    assert 'data-stopped="DriftGate"' in run.dashboard.read_text()
    assert run.summary["serving_versions"] == served.summary["serving_versions"]
    with store(spans_scenario) as mlmd:
        run_id = next(r for r in _pipeline_runs(mlmd) if _spans_of(mlmd, r) == [3])
        # Nothing after the gate ran in that pipeline run: no Transform, no Trainer.
        assert mlmd.executions(names.TRANSFORM_ID, run_id) == []
        assert mlmd.executions(names.TRAINER_ID, run_id) == []
        assert [e.last_known_state for e in mlmd.executions(names.DRIFT_GATE_ID, run_id)] == [
            metadata_store_pb2.Execution.FAILED
        ]


def test_the_same_span_with_warn_trains_and_shows_the_drift(spans_scenario):
    run = spans_scenario.runs["span3_warn"]
    assert run.returncode == 0, run.console[-3000:]
    assert run.summary["drift"]["verdict"] == "drifted" and run.summary["drift"]["action"] == "warn"
    assert "species" in drifted(run.summary) and run.summary["stopped"] is None
    assert re.search(
        r"\[petseg\] WARNING components.drift: Span 3 drifted .*\n  species: L-infinity distance", run.console
    )
    assert run.summary["components"][names.TRAINER_ID]["cached"] is False and run.summary["blessed"]
    # The data stages of the stopped run are reused.
    assert run.summary["components"][names.STATISTICS_GEN_ID]["cached"]


def test_a_brighter_camera_and_larger_photos_are_caught_by_the_image_statistics(spans_scenario):
    # Dogs only, like span 3 (what the served model learned from): only the camera changed.
    brighter, larger = spans_scenario.runs["span4_stop"], spans_scenario.runs["span5_stop"]
    assert brighter.returncode == larger.returncode == 1
    assert drifted(brighter.summary) == {"image_brightness"}
    assert drifted(larger.summary) == {"image_height", "image_width"}
    assert "image_brightness: Jensen-Shannon divergence" in brighter.console
    for run in (brighter, larger):
        assert run.summary["drift"]["baseline_span"] == 3


def test_a_window_of_two_spans_trains_on_both_train_splits(spans_scenario):
    run = spans_scenario.runs["window"]
    assert run.returncode == 0, run.console[-3000:]
    dataset = run.summary["dataset"]
    assert dataset["spans"] == [{"span": 1, "train": drift_scenario.TRAIN}, {"span": 2, "train": drift_scenario.TRAIN}]
    assert dataset["span"] == 2 and dataset["examples"] == {"train": drift_scenario.TRAIN, "eval": drift_scenario.TEST}
    # Drift and evaluation look at the newest span alone.
    assert run.summary["drift"]["span"] == 2
    with store(spans_scenario) as mlmd:
        trainer = mlmd.executions(names.TRAINER_ID)[-1]
        [transformed] = mlmd.inputs_of(trainer, "examples")
        [evaluated] = mlmd.inputs_of(mlmd.executions(names.EVALUATOR_ID)[-1], "examples")
    counts = {
        split: sum(
            1 for path in tf.io.gfile.glob(f"{transformed.uri}/Split-{split}/*") for _ in tf.data.TFRecordDataset(path)
        )
        for split in json.loads(transformed.split_names)
    }
    assert counts == {"train": 2 * drift_scenario.TRAIN, "eval": drift_scenario.TEST}
    assert evaluated.get_int_custom_property("span") == 2 and json.loads(evaluated.split_names) == [
        "train",
        "eval",
        "train_span_1",
    ]
    # The same window again: its data stages come from cache (the spans were built once); what depends on
    # the served model, which the first window run replaced, runs again.
    again = spans_scenario.runs["window_again"]
    components = again.summary["components"]
    assert again.returncode == 0 and all(
        components[node]["cached"]
        for node in (names.EXAMPLE_GEN_ID, names.STATISTICS_GEN_ID, names.EXAMPLE_VALIDATOR_ID, names.TRANSFORM_ID)
    ), components
    assert "Building oxford_iiit_pet" not in "\n".join(
        p.read_text() for p in sorted((spans_scenario.output / "logs").glob("*.log"))[-2:]
    )


def _pipeline_runs(mlmd):
    runs = {}
    for node in mlmd.node_ids():
        for execution in mlmd.executions(node):
            for context in mlmd.store.get_contexts_by_execution(execution.id):
                if context.type_id == mlmd.store.get_context_type("pipeline_run").id:
                    runs.setdefault(context.name, execution.id)
    return sorted(runs, key=runs.get)


def _spans_of(mlmd, run_id):
    [examples] = [a for e in mlmd.executions(names.EXAMPLE_GEN_ID, run_id) for a in mlmd.outputs_of(e, "examples")]
    return [entry["span"] for entry in json.loads(examples.get_string_custom_property("spans"))]

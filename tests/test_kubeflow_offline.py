"""The compiled KFP spec runs: every task's own container command, task by task, on tiny data (no cluster)."""

import json
import pathlib
import sys

import pytest
import tensorflow as tf

from kubeflow import offline, runner
from pipeline import cli

REPO = pathlib.Path(__file__).resolve().parent.parent
BLESSING_RESOLVER = "latest_blessed_model_resolver-model-blessing-resolver"
MODEL_RESOLVER = "latest_blessed_model_resolver-model-resolver"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline")
    package = tmp / "pipeline.yaml"
    # The local checkout plays the image: the project is at --app-dir, the venv is its python.
    assert cli.main(["kubeflow", "compile", "--output", str(package), "--profile", "tiny", "--image", "local",
                     "--pipeline-root", str(tmp / "root"), "--data-dir", str(tmp / "tfds"),
                     "--serving-dir", str(tmp / "serving"), "--app-dir", str(REPO),
                     "--set", "train.warm_start=true", "--set", "train.epochs=1"]) == 0
    spec = runner.load_spec(str(package))
    run = offline.OfflineRun(spec, str(tmp / "root"), "run-1", python=sys.executable)
    # Up to the Trainer: each task is a fresh TF/TFX process (~20 s of imports on 2 cores), and the
    # Evaluator/Pusher path is covered by the local e2e tests.
    results = run.run(stop_after="Trainer")
    print("\n".join(f"offline {r.name:<55} {r.kind:<9} {r.seconds:6.1f} s" for r in results))
    return spec, run, {r.name: r for r in results}


def test_tasks_run_in_dependency_order_with_their_own_commands(first_run):
    spec, _, results = first_run
    order = list(results)
    assert order.index("TfdsExampleGen") < order.index("StatisticsGen") < order.index("ExampleValidator") \
        < order.index("ValidationGate") < order.index("Transform") < order.index("Trainer")
    assert order.index("ImportSchemaGen") < order.index("StatisticsGen")
    assert order.index(MODEL_RESOLVER) < order.index("Trainer")
    assert {r.kind for n, r in results.items() if "resolver" not in n} == {"container"}
    assert offline.task_order(spec)[-2:] == ["Evaluator", "Pusher"]


def test_example_gen_and_transform_outputs_are_real_artifacts(first_run):
    _, _, results = first_run
    [examples] = results["TfdsExampleGen"].outputs["examples"]
    meta = examples["metadata"]
    assert json.loads(meta["split_names"]) == ["train", "eval"]
    assert (meta["num_train"], meta["num_eval"], meta["source"]) == (48, 16, "synthetic")
    assert meta["custom:span"] == 0
    for split in ("train", "eval"):
        assert list(pathlib.Path(examples["uri"], f"Split-{split}").glob("*.tfrecord*"))
    [graph] = results["Transform"].outputs["transform_graph"]
    assert (pathlib.Path(graph["uri"]) / "transform_fn" / "saved_model.pb").is_file()
    [anomalies] = results["ExampleValidator"].outputs["anomalies"]
    assert (pathlib.Path(anomalies["uri"]) / "Split-train" / "SchemaDiff.pb").is_file()


def test_first_run_resolves_no_blessed_model_and_trains_a_servable_model(first_run):
    _, _, results = first_run
    assert results[BLESSING_RESOLVER].outputs == {"model_blessing": []}
    assert results[MODEL_RESOLVER].outputs == {"model": []}
    [model] = results["Trainer"].outputs["model"]
    serving = pathlib.Path(model["uri"]) / "Format-Serving"
    assert (serving / "saved_model.pb").is_file()
    assert "serving_default" in tf.saved_model.load(str(serving)).signatures


def test_resolvers_query_what_earlier_runs_recorded(first_run, tmp_path):
    spec, run, results = first_run
    [model] = results["Trainer"].outputs["model"]
    registry = offline.ArtifactRegistry(tmp_path / "artifacts.json")
    for artifact in run.registry.artifacts:
        registry.add(artifact)
    # What the Evaluator's executor writes for a blessed candidate (ids refactored to artifact names).
    registry.add({"name": "run-1/Evaluator/blessing", "uri": "/x", "schemaTitle": "tfx.ModelBlessing",
                  "metadata": {"blessed": 1.0, "current_model_id": model["name"]}})
    registry.add({"name": "run-0/Evaluator/blessing", "uri": "/y", "schemaTitle": "tfx.ModelBlessing",
                  "metadata": {"blessed": 0.0, "current_model_id": "someone-else"}})
    second = offline.OfflineRun(spec, str(tmp_path), "run-2")
    [blessing] = second.run_task(BLESSING_RESOLVER).outputs["model_blessing"]
    assert blessing["name"] == "run-1/Evaluator/blessing"
    assert second.run_task(MODEL_RESOLVER).outputs["model"] == [model]

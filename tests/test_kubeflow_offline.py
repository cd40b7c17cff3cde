"""The compiled spec runs task by task under open-source KFP's launcher contract (twice) and Vertex's, on tiny data."""

import json
import pathlib

import pytest
import tensorflow as tf

from config import names
from kubeflow import runner
from cli import main as cli
from support import kfp_launcher
from support.petseg import compile_argv

pytestmark = pytest.mark.slow  # whole pipeline runs

REPO = pathlib.Path(__file__).resolve().parent.parent
TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
# What KFP's cache serves on the second run: everything upstream of the model (same data, same code).
UPSTREAM = ["ImportSchemaGen", "TfdsExampleGen", "StatisticsGen", "ExampleValidator", "ValidationGate", "Transform"]


def compile_spec(tmp: pathlib.Path, name: str, *extra: str):
    package = tmp / name
    # The local checkout plays the image: the project is at --app-dir, this venv is its python.
    assert (
        cli.main(
            compile_argv(
                package,
                "--set",
                "train.warm_start=true",
                "--set",
                "train.epochs=1",
                *extra,
                image="local",
                data_dir=str(tmp / "tfds"),
                serving_dir=str(tmp / "serving"),
                app_dir=str(REPO),
            )
        )
        == 0
    )
    return runner.load_spec(str(package))


def timings(results):
    return "\n".join(f"  {r.name:<22} {r.kind:<9} {r.seconds:6.1f} s" for r in results)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two open-source-shaped runs of the same spec (no pipeline root: the cluster's default applies)."""
    tmp = tmp_path_factory.mktemp("kfp")
    spec = compile_spec(tmp, "pipeline.yaml")
    metadata = kfp_launcher.Metadata()
    first = kfp_launcher.Run(spec, tmp, "run-1", metadata=metadata)
    first.run()
    second = kfp_launcher.Run(spec, tmp, "run-2", metadata=metadata)
    second.run(cached={task: first.outputs[task] for task in UPSTREAM})
    print(f"\nrun 1 (open-source launcher):\n{timings(first.results)}\nrun 2:\n{timings(second.results)}")
    return tmp, spec, first, second


def single(run, task, key):
    [artifact] = run.outputs[task][key]
    return artifact


def task_log(tmp, run, task):
    return (tmp / run / task / "task.log").read_text()


def test_spec_has_no_default_root_and_every_task_uses_our_entrypoint(runs):
    _, spec, _, _ = runs
    assert "defaultPipelineRoot" not in spec
    for label, executor in spec["deploymentSpec"]["executors"].items():
        assert set(executor) == {"container"}, label
        assert executor["container"]["command"][-2:] == ["-m", runner.ENTRYPOINT], label


def test_first_run_has_no_baseline_trains_blesses_and_pushes(runs):
    tmp, _, first, _ = runs
    assert [r.kind for r in first.results] == ["container"] * len(first.results)
    assert kfp_launcher.task_order(first.spec)[-2:] == ["Evaluator", "Pusher"]
    assert single(first, names.LATEST_BLESSED_MODEL_ID, "model")["metadata"]["found"] == 0
    model = single(first, names.TRAINER_ID, "model")
    assert model["uri"].startswith("minio://mlpipeline/v2/artifacts/petseg/run-1/Trainer/")
    serving = first.store.path(model["uri"]) / "Format-Serving"
    assert "serving_default" in tf.saved_model.load(str(serving)).signatures
    blessing = single(first, names.EVALUATOR_ID, "blessing")["metadata"]
    assert blessing["blessed"] == 1 and "baseline_model" not in blessing
    # URIs the executor saw as local mirror paths go back to the launcher as the original ones, and
    # ids as the launcher's artifact names.
    assert (blessing["current_model"], blessing["current_model_id"]) == (model["uri"], model["name"])
    pushed = single(first, names.PUSHER_ID, "pushed_model")["metadata"]
    assert pushed["pushed"] == 1
    assert (tmp / "serving" / str(int(pushed["pushed_version"])) / "saved_model.pb").is_file()
    assert "No blessed baseline yet" in task_log(tmp, "run-1", names.EVALUATOR_ID)


def test_every_output_is_uploaded_and_recorded_under_its_original_uri(runs):
    _, _, first, _ = runs
    for task, outputs in first.outputs.items():
        for key, [artifact] in outputs.items():
            assert artifact["uri"].startswith("minio://"), (task, key)
            assert first.store.path(artifact["uri"]).exists(), (task, key)
            assert artifact["name"].isdigit() and artifact["metadata"]["display_name"] == key
    examples = single(first, names.EXAMPLE_GEN_ID, "examples")
    assert json.loads(examples["metadata"]["split_names"]) == ["train", "eval"]
    assert (examples["metadata"]["num_train"], examples["metadata"]["num_eval"]) == (48, 16)
    log = first.store.path(single(first, names.TRAINER_ID, kfp_launcher.LOG_OUTPUT)["uri"]).read_text()
    assert "val_mean_iou" in log  # Keras' epoch line, captured by the launcher


def test_second_run_warm_starts_from_and_is_judged_against_the_first_runs_pushed_model(runs):
    tmp, _, first, second = runs
    assert {r.name for r in second.results if r.kind == "cached"} == set(UPSTREAM)
    version = int(single(first, names.PUSHER_ID, "pushed_model")["metadata"]["pushed_version"])
    baseline = single(second, names.LATEST_BLESSED_MODEL_ID, "model")
    assert baseline["metadata"]["found"] == 1
    assert baseline["metadata"]["pushed_version"] == version
    assert baseline["metadata"]["pushed_destination"] == str(tmp / "serving" / str(version))
    assert "Warm-started from" in task_log(tmp, "run-2", names.TRAINER_ID)
    blessing = single(second, names.EVALUATOR_ID, "blessing")["metadata"]
    assert (blessing["baseline_model"], blessing["baseline_model_id"]) == (baseline["uri"], baseline["name"])
    assert blessing["current_model"] == single(second, names.TRAINER_ID, "model")["uri"]


def test_drift_is_measured_against_the_first_runs_published_statistics(runs):
    tmp, _, first, second = runs
    version = int(single(first, names.PUSHER_ID, "pushed_model")["metadata"]["pushed_version"])
    statistics = tmp / "serving" / str(version) / "assets.extra" / "statistics" / "Split-train" / "FeatureStats.pb"
    assert statistics.is_file()
    reports = [
        json.loads(
            (run.store.path(single(run, names.DRIFT_VALIDATOR_ID, "anomalies")["uri"]) / "drift.json").read_text()
        )
        for run in (first, second)
    ]
    assert reports[0]["verdict"] == "no_baseline"
    assert (reports[1]["verdict"], reports[1]["baseline_version"]) == ("passed", version)


def test_history_from_the_run_folders_under_the_pipeline_root(runs, tmp_path):
    from report import dashboard, history, metrics

    _, _, first, second = runs
    runs_dir = first.store.path(f"{kfp_launcher.DEFAULT_ROOT}/{first.pipeline_name}")
    rows = history.folder_history(str(runs_dir))
    assert [row["run"] for row in rows] == ["run-1", "run-2"]
    assert [row["drift"] for row in rows] == ["no_baseline", "passed"]
    assert [row["status"] for row in rows] == ["completed", "completed"]
    for row, run in zip(rows, (first, second)):
        evaluation = run.store.path(single(run, names.EVALUATOR_ID, "evaluation")["uri"])
        assert row["candidate_mean_iou"] == metrics.load_metrics(str(evaluation))["overall"]["mean_iou"]
        pushed = single(run, names.PUSHER_ID, "pushed_model")["metadata"]
        assert row["blessed"] is True and row["pushed_version"] == str(int(pushed["pushed_version"]))
    assert rows[0]["baseline_mean_iou"] is None and rows[1]["baseline_mean_iou"] is not None
    assert rows[0]["spans"] == rows[1]["spans"] == [0]  # no {SPAN} pattern: span 0
    page = pathlib.Path(dashboard.write_history_page(str(runs_dir), str(tmp_path / "history.html"))).read_text()
    assert 'data-run="run-1"' in page and 'data-run="run-2"' in page and "mean IoU over runs" in page


def test_vertex_shaped_input_runs_the_same_spec_unchanged(runs, tmp_path):
    tmp, _, _, second = runs
    spec = compile_spec(tmp, "vertex.json", "--target", "vertex", "--pipeline-root", "gs://bucket/petseg")
    assert spec["defaultPipelineRoot"] == "gs://bucket/petseg"
    # The newest version before this run; the run's own Pusher adds another.
    latest = max(int(p.name) for p in (tmp / "serving").iterdir() if p.name.isdigit())
    run = kfp_launcher.Run(spec, tmp_path, "vertex-1", shape="vertex")
    run.run()
    print(f"\nVertex-shaped run:\n{timings(run.results)}")
    baseline = single(run, names.LATEST_BLESSED_MODEL_ID, "model")
    assert baseline["metadata"]["found"] == 1 and baseline["metadata"]["pushed_version"] == latest
    assert single(run, names.EVALUATOR_ID, "blessing")["metadata"]["baseline_model"] == baseline["uri"]
    assert "Warm-started from" in (tmp_path / "vertex-1" / names.TRAINER_ID / "task.log").read_text()


def test_tfx_entrypoint_alone_fails_on_open_source_input(runs, tmp_path):
    tmp, spec, first, _ = runs
    stock = kfp_launcher.Run(spec, tmp_path, "stock", entrypoint=TFX_ENTRYPOINT)
    stock.outputs.update({task: first.outputs[task] for task in UPSTREAM})
    # Upstream artifacts arrive without a schema: TFX reads its title from yaml.safe_load("") (None).
    with pytest.raises(kfp_launcher.TaskFailed, match="'NoneType' object has no attribute 'get'"):
        stock.run_task(names.STATISTICS_GEN_ID)
    # A task without inputs still meets the launcher's own `system.Artifact` log output.
    with pytest.raises(kfp_launcher.TaskFailed, match="No module named 'system'"):
        stock.run_task(names.SCHEMA_GEN_ID)

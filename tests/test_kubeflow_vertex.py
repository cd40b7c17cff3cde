"""`petseg kubeflow compile --target vertex` with train.workers > 1: the Trainer task starts a CustomJob through
TFX's extension."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from cli import main as cli
from kubeflow import runner
from support import kfp_backend, vertex_api
from support.petseg import compile_argv

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE = "europe-docker.pkg.dev/demo-project/petseg/petseg:1.2.3"
ROOT = "gs://petseg-bucket/pipeline_root"
PROJECT, REGION = "demo-project", "europe-west4"
EXTENSION = "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor"
TRAINER = "tfx.components.trainer.executor.GenericExecutor"
TASK_COMMAND = ["python", "-m", "kubeflow.entrypoint"]
REPLICA_COMMAND = ["python", "-m", "tfx.scripts.run_executor"]
# What a replica asks for: the flags below on an N1 machine (8 vCPUs, 30 GB) with one T4.
MACHINE = {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}
# Per run: imports of TF, TFX and the Vertex SDK on a busy 2-core machine.
TIMEOUT = 600


def compile_args(output, *extra):
    return compile_argv(
        output,
        "--set",
        "train.workers=3",
        *extra,
        image=IMAGE,
        pipeline_root=ROOT,
        gpus=1,
        gpu_type="NVIDIA_TESLA_T4",
        cpu=8,
        memory=30,
    )


def vertex_args(output, *extra):
    return compile_args(output, "--target", "vertex", "--project", PROJECT, "--region", REGION, *extra)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    path = tmp_path_factory.mktemp("vertex") / "pipeline.json"
    assert cli.main(vertex_args(path)) == 0
    return json.loads(path.read_text())


def trainer(spec):
    task = spec["root"]["dag"]["tasks"]["Trainer"]
    component = spec["components"][task["componentRef"]["name"]]
    return task, component, spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]


def custom_config(spec):
    task, _, _ = trainer(spec)
    return json.loads(task["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constant"])


# ---------------------------------------------------------------- what the compiled PipelineJob carries


def test_the_trainer_task_runs_tfx_extension_executor_and_asks_for_nothing(job):
    json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())  # unknown fields fail
    spec = job["pipelineSpec"]
    _, _, container = trainer(spec)
    assert container["command"] == TASK_COMMAND
    assert container["args"][:2] == ["--executor_class_path", EXTENSION]
    assert container["args"][container["args"].index("--json_serialized_invocation_args") + 1] == "{{$}}"
    # The replicas get the machine; the task only waits for them.
    assert "resources" not in container
    others = {
        label: e["container"]
        for label, e in spec["deploymentSpec"]["executors"].items()
        if e["container"] is not container
    }
    # Every other task of the DAG, whatever the pipeline grows to, runs through the plain entrypoint.
    tasks = spec["root"]["dag"]["tasks"]
    labels = {
        spec["components"][t["componentRef"]["name"]]["executorLabel"] for n, t in tasks.items() if n != "Trainer"
    }
    assert set(others) == labels and {"Transform", "Evaluator", "Pusher"} < set(tasks)
    for label, other in others.items():
        assert other["command"] == TASK_COMMAND, label
        assert EXTENSION not in other["args"], label


def test_custom_config_holds_the_worker_pools_for_the_extension_and_the_settings_for_run_fn(job):
    config = custom_config(job["pipelineSpec"])
    assert config["ai_platform_enable_vertex"] is True
    assert config["ai_platform_vertex_region"] == REGION
    pool = {
        "machine_spec": MACHINE,
        "container_spec": {"image_uri": IMAGE, "env": [{"name": "TF_USE_LEGACY_KERAS", "value": "1"}]},
    }
    assert config["ai_platform_training_args"] == {
        "project": PROJECT,
        "display_name": "petseg-trainer",
        "job_spec": {"worker_pool_specs": [{"replica_count": 1, **pool}, {"replica_count": 2, **pool}]},
    }
    # run_fn still finds its own settings, train.workers among them.
    assert config["train"]["workers"] == 3 and config["model"]["image_size"] == 64


def test_kfpcheck_reads_only_the_pipeline_spec_inside_and_accepts_both_targets(job, tmp_path):
    # The PipelineJob (.json) is Vertex's own wrapper: the KFP API server takes only a PipelineSpec.
    job_file = tmp_path / "pipeline.json"
    job_file.write_text(json.dumps(job))
    with pytest.raises(kfp_backend.BackendRejected, match="no pipeline spec is provided"):
        kfp_backend.check(job_file, pipeline_root=ROOT)
    inner = tmp_path / "vertex-spec.yaml"
    inner.write_text(yaml.safe_dump(runner.load_spec(str(job_file))))
    tasks = {t["name"]: t for t in kfp_backend.check(inner, pipeline_root=ROOT)["tasks"]}
    assert tasks["Trainer"]["command"] == TASK_COMMAND and tasks["Trainer"]["images"] == [IMAGE]
    assert not tasks["Trainer"].get("limits")
    # The same flags for open-source KFP: the TFJob executor in the same entrypoint, accepted as well.
    kfp = tmp_path / "kfp.yaml"
    assert cli.main(compile_args(kfp)) == 0
    tasks = {t["name"]: t for t in kfp_backend.check(kfp, pipeline_root=ROOT)["tasks"]}
    assert tasks["Trainer"]["command"] == ["python", "-m", "kubeflow.entrypoint"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "vertex"], "--project: required for --target vertex with train.workers=3"),
        (["--target", "vertex", "--project", PROJECT], "--region: required for --target vertex with train.workers=3"),
        (
            ["--target", "vertex", "--project", PROJECT, "--region", REGION, "--gpu-type", "nvidia.com/gpu"],
            "--gpu-type: Vertex names GPUs by type",
        ),
        (
            ["--target", "vertex", "--project", PROJECT, "--region", REGION, "--gpu-type", "NVIDIA_L4"],
            "--machine-type: NVIDIA_L4 GPUs come with their own machine types",
        ),
        (
            ["--target", "vertex", "--project", PROJECT, "--region", REGION, "--machine-type", "g2-standard-8"],
            "give either --machine-type ('g2-standard-8') or --cpu/--memory, not both",
        ),
        (["--project", PROJECT], "--project: only used by --target vertex with train.workers > 1"),
    ],
)
def test_settings_vertex_worker_pools_cannot_use_are_clear_errors(tmp_path, extra, message):
    with pytest.raises(SystemExit) as refused:
        cli.main(compile_args(tmp_path / "p.yaml", *extra))
    assert message in str(refused.value)
    assert not (tmp_path / "p.yaml").exists()


def test_machine_type_defaults_and_choices(tmp_path):
    def pools(*extra):
        path = tmp_path / "p.json"
        assert (
            cli.main(
                compile_argv(
                    path,
                    "--set",
                    "train.workers=2",
                    *extra,
                    target="vertex",
                    pipeline_root=ROOT,
                    project=PROJECT,
                    region=REGION,
                )
            )
            == 0
        )
        return custom_config(json.loads(path.read_text())["pipelineSpec"])["ai_platform_training_args"]["job_spec"][
            "worker_pool_specs"
        ]

    [chief, workers] = pools()
    assert (chief["replica_count"], workers["replica_count"]) == (1, 1)
    assert chief["machine_spec"] == {"machine_type": "n1-standard-4"}  # the Vertex SDK's default
    assert pools("--memory", "40")[0]["machine_spec"] == {"machine_type": "n1-highmem-8"}
    assert pools("--machine-type", "a2-highgpu-1g", "--gpus", "1", "--gpu-type", "NVIDIA_TESLA_A100")[0][
        "machine_spec"
    ] == {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1}


# ---------------------------------------------------------------- the task, against a loopback Vertex


def trainer_input(spec, output_file):
    """The Trainer task's ExecutorInput as Vertex passes it: typed gs:// artifacts, the compiled parameters."""
    task, component, _ = trainer(spec)
    run = f"{ROOT}/123456789/petseg-20261204"
    producers = {key: ref["taskOutputArtifact"]["producerTask"] for key, ref in task["inputs"]["artifacts"].items()}
    artifacts = {
        key: {
            "artifacts": [
                {
                    "name": f"projects/{PROJECT}/locations/{REGION}/metadataStores/default/artifacts/{i}",
                    "uri": f"{run}/{producers[key]}_{i}/{key}",
                    "type": definition["artifactType"],
                    "metadata": {"split_names": '["train", "eval"]'} if key == "examples" else {},
                }
            ]
        }
        for i, (key, definition) in enumerate(sorted(component["inputDefinitions"]["artifacts"].items()))
    }
    outputs = {
        key: {"artifacts": [{"uri": f"{run}/Trainer_99/{key}", "type": definition["artifactType"]}]}
        for key, definition in component["outputDefinitions"]["artifacts"].items()
    }
    return {
        "inputs": {
            "parameterValues": {
                key: ref["runtimeValue"]["constant"] for key, ref in task["inputs"]["parameters"].items()
            },
            "artifacts": artifacts,
        },
        "outputs": {"artifacts": outputs, "outputFile": str(output_file)},
    }


def run_task(spec, service, tmp_path):
    """Runs the compiled Trainer command, its endpoint mapped to `service`; returns (exit code, log, input)."""
    _, _, container = trainer(spec)
    executor_input = trainer_input(spec, tmp_path / "executor_output.json")
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in container["args"]]
    assert container["command"][:2] == ["python", "-m"]
    command = [
        sys.executable,
        str(REPO / "tests" / "support" / "vertex_api.py"),
        "--host",
        f"{REGION}-aiplatform.googleapis.com={service.address}",
        container["command"][2],
        *args,
    ]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    (tmp_path / "task.log").write_text(proc.stdout + proc.stderr)
    return proc.returncode, proc.stdout + proc.stderr, executor_input


@pytest.fixture(scope="module")
def succeeded(job, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("task")
    with vertex_api.JobService(["JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]) as service:
        code, log, executor_input = run_task(job["pipelineSpec"], service, tmp_path)
    assert code == 0, log[-5000:]
    return service, log, executor_input, tmp_path


def test_the_task_creates_one_custom_job_in_the_project_and_region(succeeded):
    service, log, _, _ = succeeded
    assert f"vertex_api: {REGION}-aiplatform.googleapis.com -> " in log
    [create] = service.calls("CreateCustomJob")
    assert create.request.parent == f"projects/{PROJECT}/locations/{REGION}"
    assert create.metadata["x-goog-request-params"] == f"parent=projects/{PROJECT}/locations/{REGION}"
    assert create.request.custom_job.display_name == "petseg-trainer"


def test_the_custom_job_has_a_chief_and_two_workers_on_our_image_running_tfx_trainer_executor(succeeded):
    service, _, executor_input, _ = succeeded
    [create] = service.calls("CreateCustomJob")
    pools = vertex_api.as_dict(create.request.custom_job)["jobSpec"]["workerPoolSpecs"]
    assert [p["replicaCount"] for p in pools] == ["1", "2"]  # int64: a string in JSON
    for pool in pools:
        assert pool["machineSpec"] == {
            "machineType": "n1-standard-8",
            "acceleratorType": "NVIDIA_TESLA_T4",
            "acceleratorCount": 1,
        }
        container = pool["containerSpec"]
        assert container["imageUri"] == IMAGE
        assert container["env"] == [{"name": "TF_USE_LEGACY_KERAS", "value": "1"}]
        command = container["command"]
        assert command[:5] == REPLICA_COMMAND + ["--executor_class_path", TRAINER]
        flags = dict(zip(command[3::2], command[4::2]))
        assert set(flags) == {"--executor_class_path", "--inputs", "--outputs", "--exec-properties"}
        # The task's own artifacts, which every replica reads and writes on gs:// itself.
        for flag, side in (("--inputs", "inputs"), ("--outputs", "outputs")):
            uris = {
                key: [a["artifact"]["uri"] for a in artifacts] for key, artifacts in json.loads(flags[flag]).items()
            }
            assert uris == {
                key: [a["uri"] for a in listed["artifacts"]]
                for key, listed in executor_input[side]["artifacts"].items()
            }, flag
        properties = json.loads(flags["--exec-properties"])
        assert properties["run_fn"] == "trainer.run.run_fn"
        assert json.loads(properties["custom_config"])["train"]["workers"] == 3
    assert pools[0]["containerSpec"] == pools[1]["containerSpec"]


def test_the_task_polls_until_the_job_succeeded_then_stops_and_reports_the_outputs(succeeded):
    service, _, executor_input, tmp_path = succeeded
    job_name = f"projects/{PROJECT}/locations/{REGION}/customJobs/1234567890"
    gets = service.calls("GetCustomJob")
    # RUNNING, RUNNING, SUCCEEDED: three polls and none after; nothing cancelled.
    assert [g.request.name for g in gets] == [job_name] * 3
    assert not service.calls("CancelCustomJob")
    written = json.loads((tmp_path / "executor_output.json").read_text())["artifacts"]
    assert {key: [a["uri"] for a in listed["artifacts"]] for key, listed in written.items()} == {
        key: [a["uri"] for a in listed["artifacts"]] for key, listed in executor_input["outputs"]["artifacts"].items()
    }


def test_a_failed_job_fails_the_task_with_vertex_message(job, tmp_path):
    message = "The replica workerpool1-0 exited with a non-zero status of 1."
    with vertex_api.JobService(["JOB_STATE_RUNNING", "JOB_STATE_FAILED"], error=message) as service:
        code, log, _ = run_task(job["pipelineSpec"], service, tmp_path)
    assert code != 0
    assert "did not succeed" in log and message in log
    assert len(service.calls("GetCustomJob")) == 2
    assert not (tmp_path / "executor_output.json").exists()


# ---------------------------------------------------------------- what each replica starts


def test_a_replica_started_as_vertex_starts_it_finds_the_executor_and_run_fn_with_keras_2(succeeded, tmp_path):
    service, _, _, _ = succeeded
    [create] = service.calls("CreateCustomJob")
    container = vertex_api.as_dict(create.request.custom_job)["jobSpec"]["workerPoolSpecs"][1]["containerSpec"]
    # As the image runs it: PYTHONPATH=/app (here the repo), the pool's environment and nothing of ours
    # set beforehand; TFX's run_executor imports itself, then the executor class, then run_fn.
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env.update({"PYTHONPATH": str(REPO), **{e["name"]: e["value"] for e in container.get("env", [])}})
    probe = (
        "import json, sys\n"
        "from tfx.scripts import run_executor\n"
        "args, _ = run_executor.parse_flags(sys.argv)\n"
        "from tfx.components.util import udf_utils\n"
        "from tfx.utils import import_utils\n"
        "executor = import_utils.import_class_by_path(args.executor_class_path)\n"
        "run_fn = udf_utils.get_fn(json.loads(args.exec_properties), 'run_fn')\n"
        "import tensorflow as tf\n"
        "print(json.dumps({'executor': executor.__module__ + '.' + executor.__name__,\n"
        "                  'run_fn': run_fn.__module__ + '.' + run_fn.__name__, 'keras': tf.keras.__name__}))\n"
    )
    command = container["command"]
    assert command[:3] == REPLICA_COMMAND
    proc = subprocess.run(
        [sys.executable, "-c", probe, *command[3:]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["executor"] == TRAINER and found["run_fn"] == "trainer.run.run_fn"
    # TFT and TFMA are Keras-2 code: tf.keras must be tf_keras, not Keras 3.
    assert found["keras"].startswith("tf_keras."), found

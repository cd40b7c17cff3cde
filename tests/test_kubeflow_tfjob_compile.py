"""`petseg kubeflow compile --target kfp` with train.workers > 1: the Trainer task submits a TFJob the real API
server admits; KFP's backend still accepts the spec."""

import json

import pytest
import yaml

from kubeflow import tfjob, tfjob_executor
from kubeflow.resources import Resources
from cli import main as cli
from support import kfp_backend
from support.kube_trainer import admit
from support.petseg import compile_argv

IMAGE = "registry.example.com/petseg:1"
ROOT = "gs://petseg-bucket/pipeline_root"


def compile_args(output, *extra):
    return compile_argv(output, "--set", "train.workers=3", *extra, image=IMAGE, gpus=1, cpu=4, memory=16)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfjob") / "pipeline.yaml"
    assert cli.main(compile_args(path, "--pipeline-root", ROOT)) == 0
    return path


def executors(spec):
    return {label: e["container"] for label, e in spec["deploymentSpec"]["executors"].items()}


def custom_config(spec):
    return json.loads(
        spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constant"]
    )


def test_the_trainer_task_runs_the_tfjob_executor_and_its_pod_asks_for_nothing(compiled):
    spec = yaml.safe_load(compiled.read_text())
    containers = executors(spec)
    trainer = containers.pop("Trainer_executor")
    # Every task runs the same entrypoint; the Trainer's executor is the one that starts the TFJob.
    assert trainer["command"] == ["python", "-m", "kubeflow.entrypoint"]
    assert trainer["args"][:2] == ["--executor_class_path", "kubeflow.tfjob_executor.Executor"]
    assert trainer["args"][trainer["args"].index("--json_serialized_invocation_args") + 1] == "{{$}}"
    # The replicas get the GPUs, CPU and memory; the task's pod only waits.
    assert "resources" not in trainer
    for label, container in containers.items():
        assert container["command"] == ["python", "-m", "kubeflow.entrypoint"], label
    # The job's settings and train.workers travel with the spec, in the Trainer's custom_config.
    config = custom_config(spec)
    assert config[tfjob_executor.SETTINGS_KEY] == {
        "cpu": 4.0,
        "gpu_type": "nvidia.com/gpu",
        "gpus": 1,
        "image": IMAGE,
        "memory_gb": 16.0,
        "workers": 3,
    }
    assert config["train"]["workers"] == 3


def test_kfp_backend_accepts_it(compiled):
    report = kfp_backend.check(compiled, pipeline_root=ROOT)
    tasks = {task["name"]: task for task in report["tasks"]}
    assert tasks["Trainer"]["command"] == ["python", "-m", "kubeflow.entrypoint"]
    assert tasks["Trainer"]["images"] == [IMAGE]
    assert not tasks["Trainer"].get("limits") and not tasks["Trainer"].get("requests")


@pytest.mark.kube
def test_the_job_the_compiled_settings_give_is_admitted_by_the_server_and_the_operators_webhook(compiled, cluster):
    settings = dict(custom_config(yaml.safe_load(compiled.read_text()))[tfjob_executor.SETTINGS_KEY])
    job = tfjob.review_manifest(
        image=settings.pop("image"),
        workers=settings.pop("workers"),
        resources=Resources(**settings),
        namespace="kubeflow",
        service_account="pipeline-runner",
    )
    assert tfjob.replica_counts(admit(cluster, job)) == {"Chief": 1, "Worker": 2}
    for container in tfjob.containers(job):
        assert container["resources"] == {"limits": {"cpu": "4", "memory": "16G", "nvidia.com/gpu": "1"}}
        assert container["command"] == ["python", "-m", "tfx.scripts.run_executor"]


@pytest.mark.parametrize("root", [None, "minio://mlpipeline/v2/artifacts", "s3://bucket/root"])
def test_a_root_the_replicas_cannot_reach_is_refused_at_compile_time(tmp_path, root):
    extra = ["--pipeline-root", root] if root else []
    with pytest.raises(SystemExit) as refused:
        cli.main(compile_args(tmp_path / "p.yaml", "--serving-dir", "gs://bucket/serving", *extra))
    assert "train.workers=3 runs the Trainer as a TFJob" in str(refused.value)
    assert "needs a gs:// root" in str(refused.value)
    assert not (tmp_path / "p.yaml").exists()


def test_one_worker_compiles_as_before(tmp_path):
    path = tmp_path / "p.yaml"
    assert cli.main(compile_args(path, "--pipeline-root", ROOT, "--set", "train.workers=1")) == 0
    trainer = executors(yaml.safe_load(path.read_text()))["Trainer_executor"]
    assert trainer["command"] == ["python", "-m", "kubeflow.entrypoint"]
    assert trainer["resources"]["accelerator"]["count"] == "1"

"""`petseg kubeflow compile --target kfp` with train.workers > 1: the Trainer task submits a TFJob the real API server admits; KFP's backend still accepts the spec."""

import json

import pytest
import yaml

from kubeflow import tfjob, tfjob_task
from cli import main as cli
from support import kfp_backend
from support.kube_trainer import admit

IMAGE = "registry.example.com/petseg:1"
ROOT = "gs://petseg-bucket/pipeline_root"


def compile_args(output, *extra):
    return ["kubeflow", "compile", "--output", str(output), "--profile", "tiny", "--image", IMAGE,
            "--gpus", "1", "--cpu", "4", "--memory", "16", "--set", "train.workers=3", *extra]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfjob") / "pipeline.yaml"
    assert cli.main(compile_args(path, "--pipeline-root", ROOT)) == 0
    return path


def executors(spec):
    return {label: e["container"] for label, e in spec["deploymentSpec"]["executors"].items()}


def test_the_trainer_task_runs_the_tfjob_task_and_its_pod_asks_for_nothing(compiled):
    spec = yaml.safe_load(compiled.read_text())
    containers = executors(spec)
    trainer = containers.pop("Trainer_executor")
    assert trainer["command"] == ["python", "-m", "kubeflow.tfjob_task"]
    assert trainer["args"][:2] == ["--tfjob", json.dumps(
        {"cpu": 4.0, "gpu_type": "nvidia.com/gpu", "gpus": 1, "image": IMAGE, "memory_gb": 16.0, "workers": 3},
        sort_keys=True)]
    # Then the executor arguments the entrypoint gets, unchanged.
    assert trainer["args"][trainer["args"].index("--json_serialized_invocation_args") + 1] == "{{$}}"
    # The replicas get the GPUs, CPU and memory; the task's pod only waits.
    assert "resources" not in trainer
    for label, container in containers.items():
        assert container["command"] == ["python", "-m", "kubeflow.entrypoint"], label
    # train.workers travels with the spec, as every setting does.
    custom = spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]["custom_config"]
    assert json.loads(custom["runtimeValue"]["constant"])["train"]["workers"] == 3


def test_kfp_backend_accepts_it(compiled):
    report = kfp_backend.check(compiled, pipeline_root=ROOT)
    tasks = {task["name"]: task for task in report["tasks"]}
    assert tasks["Trainer"]["command"] == ["python", "-m", "kubeflow.tfjob_task"]
    assert tasks["Trainer"]["images"] == [IMAGE]
    assert not tasks["Trainer"].get("limits") and not tasks["Trainer"].get("requests")


@pytest.mark.kube
def test_the_job_the_compiled_task_submits_is_admitted_by_the_server_and_the_operators_webhook(compiled, cluster):
    spec = yaml.safe_load(compiled.read_text())
    trainer = executors(spec)["Trainer_executor"]
    task = "gs://petseg-bucket/pipeline_root/petseg/run-1/Trainer/abc"
    executor_input = {"inputs": {"artifacts": {}}, "outputs": {"artifacts": {
        "model": {"artifacts": [{"uri": f"{task}/model", "type": {"schemaTitle": "tfx.Model"}}]}},
        "outputFile": "/tmp/kfp_outputs/output_metadata.json"}}
    argv = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in trainer["args"]]
    name = tfjob_task.job_name(executor_input)
    job = tfjob_task.manifest(argv, name=name, namespace="kubeflow", service_account="pipeline-runner")
    assert tfjob.replica_counts(admit(cluster, job)) == {"Chief": 1, "Worker": 2}
    for container in tfjob.containers(job):
        assert container["resources"] == {"limits": {"cpu": "4", "memory": "16G", "nvidia.com/gpu": "1"}}
        assert container["command"] == ["python", "-m", "kubeflow.entrypoint"]
        staged = json.loads(container["args"][container["args"].index("--json_serialized_invocation_args") + 1])
        assert staged["outputs"]["outputFile"] == f"{task}/tfjob-staging/executor_output.json"


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

"""The TFJob manifest (kubeflow/tfjob.py, `petseg kubeflow tfjob-manifest`), and what the real API server and the
Training Operator's webhook make of it."""

import copy

import pytest
import yaml

from kubeflow import tfjob
from kubeflow.resources import Resources
from cli import main as cli
from support.kube_trainer import NAMESPACE, admit

IMAGE = "registry.example.com/petseg:1.2.3"
ARGS = ["--executor_class_path", "tfx.components.trainer.executor.GenericExecutor", "--inputs", "{}"]


def job(workers=3, **overrides):
    kwargs = dict(
        name="petseg-trainer-0123456789ab",
        namespace="team-a",
        image=IMAGE,
        workers=workers,
        args=ARGS,
        resources=Resources(cpu=8, memory_gb=32, gpus=1),
        service_account="pipeline-runner",
    )
    return tfjob.build(**{**kwargs, **overrides})


def test_a_chief_and_workers_each_running_the_trainer_executor_with_their_own_resources():
    built = job(workers=3)
    assert built["apiVersion"] == "kubeflow.org/v1" and built["kind"] == "TFJob"
    assert tfjob.replica_counts(built) == {"Chief": 1, "Worker": 2}
    for kind, spec in built["spec"]["tfReplicaSpecs"].items():
        assert spec["restartPolicy"] == "OnFailure", kind
        assert spec["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}, kind
        [container] = spec["template"]["spec"]["containers"]
        assert container == {
            "name": "tensorflow",
            "image": IMAGE,
            "command": ["python", "-m", "tfx.scripts.run_executor"],
            "args": ARGS,
            "env": [{"name": "TF_USE_LEGACY_KERAS", "value": "1"}],
            "resources": {"limits": {"cpu": "8", "memory": "32G", "nvidia.com/gpu": "1"}},
        }, kind
        assert spec["template"]["spec"]["serviceAccountName"] == "pipeline-runner"
    # Run policy only where the operator reads it.
    assert set(built["spec"]) == {"runPolicy", "tfReplicaSpecs"}
    assert built["spec"]["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "ttlSecondsAfterFinished": 86400,
        "backoffLimit": 10,
    }
    # Replicas do not share one pod spec object (a YAML dump would write anchors).
    specs = [s["template"]["spec"] for s in built["spec"]["tfReplicaSpecs"].values()]
    assert specs[0] is not specs[1]


def test_no_resources_means_none_asked_and_a_gpu_type_is_kept():
    assert "resources" not in tfjob.containers(job(resources=Resources()))[0]
    limits = tfjob.containers(job(resources=Resources(gpus=2, gpu_type="amd.com/gpu")))[0]["resources"]["limits"]
    assert limits == {"amd.com/gpu": "2"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"workers": 1}, "workers: a TFJob needs 2 or more"),
        ({"name": "Petseg_Trainer"}, "a DNS-1035 label"),
        ({"name": "p" * 60}, "would exceed 63 characters"),
        ({"image": ""}, "image: required"),
        ({"resources": Resources(gpus=-1)}, "--gpus: must be >= 0"),
        ({"resources": Resources(memory_gb=-4)}, "--memory: must be > 0"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(overrides, message):
    with pytest.raises(ValueError, match=message):
        job(**overrides)


@pytest.mark.kube
def test_the_api_server_and_the_operators_webhook_admit_it(cluster):
    admitted = admit(cluster, job(workers=3, namespace=NAMESPACE))
    assert tfjob.replica_counts(admitted) == {"Chief": 1, "Worker": 2}
    # Stored as built, nothing dropped: our run policy where the operator reads it, plus the CRD schema's default.
    assert admitted["spec"]["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "ttlSecondsAfterFinished": 86400,
        "backoffLimit": 10,
        "suspend": False,
    }
    assert admitted["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": "8", "memory": "32G", "nvidia.com/gpu": "1"}
    }


@pytest.mark.kube
@pytest.mark.parametrize(
    "mutate, expected",
    [
        # The old KFP launch_tfjob.py placed run policy at spec's top level, where a lenient server drops it.
        (
            lambda j: j["spec"].update(cleanPodPolicy="All", backoffLimit=2),
            'strict decoding error: unknown field "spec.backoffLimit", unknown field "spec.cleanPodPolicy"',
        ),
        (
            lambda j: j["spec"]["tfReplicaSpecs"].update(Master=copy.deepcopy(j["spec"]["tfReplicaSpecs"]["Chief"])),
            'admission webhook "validator.tfjob.training-operator.kubeflow.org" denied the request: '
            "spec.tfReplicaSpecs: Forbidden: must not have more than 1 Chief or Master role",
        ),
        (
            lambda j: j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(name="main"),
            'admission webhook "validator.tfjob.training-operator.kubeflow.org" denied the request: '
            "spec.tfReplicaSpecs[Worker].template.spec.containers: Required value: must have at least one container "
            "with name tensorflow",
        ),
        (
            lambda j: j["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0].pop("image"),
            "spec.tfReplicaSpecs[Chief].template.spec.containers[0].image: Required value",
        ),
        (
            lambda j: j["spec"]["tfReplicaSpecs"]["Worker"].update(replicas="two"),
            'spec.tfReplicaSpecs.Worker.replicas: Invalid value: "string": spec.tfReplicaSpecs.Worker.replicas in body '
            'must be of type integer: "string"',
        ),
        (lambda j: j["metadata"].update(name="Petseg.Trainer"), 'metadata.name: Invalid value: "Petseg.Trainer"'),
    ],
)
def test_the_server_or_the_webhook_refuses_known_bad_manifests_with_their_messages(cluster, mutate, expected):
    from kubernetes.client.rest import ApiException

    broken = copy.deepcopy(job(namespace=NAMESPACE))
    mutate(broken)
    with pytest.raises(ApiException) as refused:
        admit(cluster, broken)
    message = __import__("json").loads(refused.value.body)["message"]
    print(f"{refused.value.status}: {message}")
    assert expected in message


@pytest.mark.kube
def test_tfjob_manifest_writes_what_the_task_submits_and_the_server_admits_it(cluster, tmp_path, capsys):
    path = tmp_path / "tfjob.yaml"
    assert (
        cli.main(
            [
                "kubeflow",
                "tfjob-manifest",
                "--output-file",
                str(path),
                "--image",
                IMAGE,
                "--workers",
                "3",
                "--gpus",
                "1",
                "--cpu",
                "8",
                "--memory",
                "32",
            ]
        )
        == 0
    )
    assert f"wrote {path}" in capsys.readouterr().out
    text = path.read_text()
    written = yaml.safe_load(text)
    assert tfjob.replica_counts(written) == {"Chief": 1, "Worker": 2}
    for container in tfjob.containers(written):
        assert container["resources"]["limits"] == {"cpu": "8", "memory": "32G", "nvidia.com/gpu": "1"}
        assert any(arg.startswith("<INPUTS") for arg in container["args"])
    assert written["metadata"]["namespace"] == "kubeflow"
    assert "&id" not in text and text.startswith("# The TFJob the Trainer task submits")
    # As `kubectl apply --dry-run=server -f tfjob.yaml` (the README's review step) would.
    assert tfjob.replica_counts(admit(cluster, written, written["metadata"]["namespace"])) == {"Chief": 1, "Worker": 2}


def test_tfjob_manifest_refuses_a_single_machine(tmp_path):
    with pytest.raises(SystemExit, match="--workers: a TFJob needs 2 or more"):
        cli.main(
            [
                "kubeflow",
                "tfjob-manifest",
                "--output-file",
                str(tmp_path / "t.yaml"),
                "--image",
                IMAGE,
                "--workers",
                "1",
            ]
        )
    assert not (tmp_path / "t.yaml").exists()

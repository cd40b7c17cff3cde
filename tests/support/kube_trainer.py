"""The Trainer task with train.workers > 1 as Kubeflow Pipelines runs it, on the loopback cluster of the `kube` tests.

`cluster` (a session fixture) is the control plane of support/kube_cluster.py with the node of
support/kube_node.py, and KFP's side of single-user Kubeflow: tasks run in namespace `kubeflow` as service
account `pipeline-runner`, with kubeflow/rbac.yaml applied unchanged (`kubectl apply -n kubeflow -f`).
`Task` is one Trainer task: the compiled pipeline's Trainer command and arguments, its `{{$}}` replaced by an
ExecutorInput of real Transform outputs (Vertex-shaped: typed artifacts, plain paths for URIs, a folder
standing for the gs:// bucket every pod reads and writes), run as a pod the way KFP's driver creates it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import shutil
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional

import pytest
import yaml

from support import kube_cluster, kube_node
from support.kube_cluster import REPO
from support.petseg import compile_argv

NAMESPACE = "kubeflow"
SERVICE_ACCOUNT = "pipeline-runner"
IMAGE = "registry.example.com/petseg:test"
RBAC = REPO / "kubeflow" / "rbac.yaml"
EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"
# Only guards against a hung run; the shared 2-core machine can be 10x oversubscribed.
TIMEOUT = 1800


@dataclasses.dataclass
class Kube:
    cluster: kube_cluster.Cluster
    node: kube_node.Node

    def client(self, identity: str = "admin"):
        return self.cluster.client(identity)


@pytest.fixture(scope="session")
def cluster(request) -> Kube:
    # Not pytest's tmp_path: other pytest sessions on a shared machine prune older basetemp folders.
    state = pathlib.Path(tempfile.mkdtemp(prefix="petseg-kube-"))
    failed = request.session.testsfailed
    with kube_cluster.running(state) as control_plane:
        node = kube_node.Node(control_plane).start()
        try:
            _install_kfp_side(control_plane)
            yield Kube(control_plane, node)
            assert not node.errors, node.errors
        finally:
            node.stop()
    if request.session.testsfailed > failed:  # the servers' logs, the pods' logs, the audit log
        print(f"\nkube: a test failed; the cluster's state and logs stay in {state}")
    else:
        shutil.rmtree(state, ignore_errors=True)


def _install_kfp_side(control_plane: kube_cluster.Cluster) -> None:
    from kubernetes import client

    core = client.CoreV1Api(control_plane.client())
    core.create_namespaced_service_account(
        NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SERVICE_ACCOUNT))
    )
    control_plane.apply(rbac_objects(), namespace=NAMESPACE)


def rbac_objects() -> List[Dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]


@functools.lru_cache(maxsize=None)
def compiled_trainer() -> Dict[str, Any]:
    """The Trainer task of `petseg kubeflow compile --target kfp --set train.workers=2`: container, inputs, outputs."""
    from cli import main as cli

    folder = pathlib.Path(tempfile.mkdtemp(prefix="petseg-kube-compile-"))
    try:
        path = folder / "pipeline.yaml"
        assert (
            cli.main(compile_argv(path, "--set", "train.workers=2", image=IMAGE, pipeline_root="gs://petseg-test/root"))
            == 0
        )
        spec = yaml.safe_load(path.read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    task = spec["root"]["dag"]["tasks"]["Trainer"]
    component = spec["components"][task["componentRef"]["name"]]
    return {
        "container": spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"],
        "parameters": {k: v["runtimeValue"]["constant"] for k, v in task["inputs"]["parameters"].items()},
        "inputs": component["inputDefinitions"]["artifacts"],
        "outputs": component["outputDefinitions"]["artifacts"],
    }


def _runtime_artifact(artifact, artifact_type: Dict[str, Any]) -> Dict[str, Any]:
    metadata = {}
    if artifact.PROPERTIES and "split_names" in artifact.PROPERTIES:
        metadata["split_names"] = artifact.split_names
    return {
        "name": f"projects/p/locations/l/metadataStores/default/artifacts/{artifact.id}",
        "uri": artifact.uri,
        "type": artifact_type,
        "metadata": metadata,
    }


class Task:
    """One Trainer task: its ExecutorInput over a bucket folder of its own, and its pod."""

    def __init__(
        self,
        kube: Kube,
        name: str,
        transform_run: str,
        bucket: pathlib.Path,
        epochs: int = 3,
        parameters: Optional[Dict[str, str]] = None,
    ):
        from tfx.types import standard_artifacts

        from config import names
        from support import trainer_fixtures

        self.kube, self.name, self.bucket = kube, name, bucket
        trainer = compiled_trainer()
        # What `--set train.epochs=N` compiles into the Trainer's custom_config.
        custom_config = json.loads(trainer["parameters"]["custom_config"])
        custom_config["train"]["epochs"] = epochs
        parameters = {"custom_config": json.dumps(custom_config), **(parameters or {})}
        self.container = trainer["container"]
        root = bucket / "petseg" / name / "Trainer"
        artifacts = {
            "examples": trainer_fixtures.transformed_examples(transform_run),
            "transform_graph": trainer_fixtures.output(
                transform_run, standard_artifacts.TransformGraph, names.TRANSFORM_ID
            ),
            "schema": trainer_fixtures.output(transform_run, standard_artifacts.Schema, names.SCHEMA_GEN_ID),
        }
        self.executor_input = {
            "inputs": {
                "parameterValues": {**trainer["parameters"], **parameters},
                "artifacts": {
                    key: {"artifacts": [_runtime_artifact(a, trainer["inputs"][key]["artifactType"])]}
                    for key, a in artifacts.items()
                },
            },
            "outputs": {
                "artifacts": {
                    key: {
                        "artifacts": [
                            {"name": f"{name}-{key}", "uri": str(root / key), "type": definition["artifactType"]}
                        ]
                    }
                    for key, definition in trainer["outputs"].items()
                },
                "outputFile": str(root / "executor_output.json"),
            },
        }
        self.output_file = pathlib.Path(self.executor_input["outputs"]["outputFile"])

    @property
    def job(self) -> str:
        """The TFJob's name, which the task derives from its output URIs."""
        from kubeflow import staging

        return staging.job_name(
            [
                a["uri"]
                for artifact_list in self.executor_input["outputs"]["artifacts"].values()
                for a in artifact_list["artifacts"]
            ]
        )

    def uri(self, key: str) -> pathlib.Path:
        return pathlib.Path(self.executor_input["outputs"]["artifacts"][key]["artifacts"][0]["uri"])

    def args(self) -> List[str]:
        return [
            json.dumps(self.executor_input) if arg == EXECUTOR_INPUT_PLACEHOLDER else arg
            for arg in self.container["args"]
        ]

    def pod(self, pod_name: str) -> Dict[str, Any]:
        """The pod KFP's driver creates for the task (single-user: namespace kubeflow, pipeline-runner)."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": NAMESPACE,
                "labels": {"pipelines.kubeflow.org/v2_component": "true"},
            },
            "spec": {
                "serviceAccountName": SERVICE_ACCOUNT,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": self.container["image"],
                        "command": list(self.container["command"]),
                        "args": self.args(),
                    }
                ],
            },
        }

    def start(self, pod_name: str) -> None:
        from kubernetes import client

        client.CoreV1Api(self.kube.client()).create_namespaced_pod(NAMESPACE, self.pod(pod_name))


class Events:
    """Every change to the pods and TFJobs of the namespace, in order, from two watches; waited on as they come."""

    def __init__(self, kube: Kube):
        from kubernetes import client

        self.kube = kube
        self.core = client.CoreV1Api(kube.client())
        self.custom = client.CustomObjectsApi(kube.client())
        self.changed = threading.Condition()
        self.pods: List[tuple] = []  # (type, pod dict)
        self.jobs: List[tuple] = []  # (type, TFJob dict)
        self.error: Optional[BaseException] = None
        self._watches = []
        for target, into in ((self._pods, self.pods), (self._jobs, self.jobs)):
            threading.Thread(target=self._record, args=(target, into), daemon=True).start()
        self.wait_for(lambda: len(self._watches) == 2)

    def _pods(self, **kwargs):
        return self.core.list_namespaced_pod(NAMESPACE, **kwargs)

    def _jobs(self, **kwargs):
        from kubeflow import tfjob

        return self.custom.list_namespaced_custom_object(tfjob.GROUP, tfjob.VERSION, NAMESPACE, tfjob.PLURAL, **kwargs)

    def _record(self, list_fn, into: List[tuple]) -> None:
        from kubernetes import watch

        try:
            listing = list_fn(_preload_content=False)
            version = json.loads(listing.data)["metadata"]["resourceVersion"]
            stream = watch.Watch()
            with self.changed:
                self._watches.append(stream)
                self.changed.notify_all()
            for event in stream.stream(list_fn, resource_version=version):
                obj = event["object"]
                if not isinstance(obj, dict):
                    obj = self.kube.client().sanitize_for_serialization(obj)
                with self.changed:
                    into.append((event["type"], obj))
                    self.changed.notify_all()
        except BaseException as exc:  # seen by the next wait
            with self.changed:
                self.error = exc
                self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        def check():
            if self.error is not None:
                raise RuntimeError(f"a watch ended: {self.error}")
            return predicate()

        with self.changed:
            value = self.changed.wait_for(check, timeout)
        assert value, f"not seen within {timeout} s: {predicate}"
        return value

    def close(self) -> None:
        for stream in self._watches:
            stream.stop()

    # What the watches saw.

    def pod_events(self, name: str) -> List[tuple]:
        return [(kind, pod) for kind, pod in self.pods if pod["metadata"]["name"] == name]

    def job_events(self, name: str) -> List[tuple]:
        return [(kind, job) for kind, job in self.jobs if job["metadata"]["name"] == name]

    def phase(self, pod: str) -> Optional[str]:
        events = self.pod_events(pod)
        if not events or events[-1][0] == "DELETED":
            return None
        return (events[-1][1].get("status") or {}).get("phase")

    def conditions(self, job: str) -> List[tuple]:
        """(type, reason, message) of each condition as it first turned True, in order."""
        seen: List[tuple] = []
        for _, obj in self.job_events(job):
            for condition in (obj.get("status") or {}).get("conditions") or []:
                entry = (condition["type"], condition.get("reason"), condition.get("message"))
                if condition.get("status") == "True" and entry not in seen:
                    seen.append(entry)
        return seen

    def replica_pods(self, job: str) -> List[str]:
        names = []
        for _, pod in self.pods:
            labels = pod["metadata"].get("labels") or {}
            if labels.get("training.kubeflow.org/job-name") == job and pod["metadata"]["name"] not in names:
                names.append(pod["metadata"]["name"])
        return names

    def restarts(self, pod: str) -> List[int]:
        """The container's restart counts as reported, each new one once."""
        counts: List[int] = []
        for _, obj in self.pod_events(pod):
            for status in (obj.get("status") or {}).get("containerStatuses") or []:
                if not counts or status["restartCount"] != counts[-1]:
                    counts.append(status["restartCount"])
        return counts

    def started(self, pod: str) -> bool:
        events = self.pod_events(pod)
        statuses = (events[-1][1].get("status") or {}).get("containerStatuses") if events else None
        return bool(statuses) and bool(statuses[0]["state"].get("running") or statuses[0]["state"].get("terminated"))

    def gone(self, name: str, kind: str = "pod") -> bool:
        events = self.pod_events(name) if kind == "pod" else self.job_events(name)
        return bool(events) and events[-1][0] == "DELETED"


def admit(kube: Kube, job: Dict[str, Any], namespace: str = NAMESPACE) -> Dict[str, Any]:
    """`kubectl create --dry-run=server --validate=strict` of a TFJob: the API server's decoding, the CRD's schema
    and defaults, the operator's admission webhook; returns the object as it would be stored."""
    from kubeflow import tfjob

    return kube_cluster.call(
        kube.client(),
        "POST",
        f"/apis/{tfjob.API_VERSION}/namespaces/{namespace}/{tfjob.PLURAL}",
        job,
        query=[("dryRun", "All"), ("fieldValidation", "Strict")],
    )


def pod_log(kube: Kube, name: str, previous: bool = False) -> str:
    """The container's log through the API server (pods/log, served by the node's containerLogs)."""
    from kubernetes import client

    return client.CoreV1Api(kube.client()).read_namespaced_pod_log(name, NAMESPACE, previous=previous)


def follow_log(kube: Kube, events: Events, name: str, until: Callable[[str], bool], task: Optional[str] = None) -> str:
    """Follows the container's log through the API server until a line satisfies `until`; returns that line.

    Once the container has started (the API server answers an empty log for a pod no node has started);
    if the task's pod `task` ends first, fails with the task's log.
    """
    from kubernetes import client

    events.wait_for(lambda: events.started(name) or (task and events.phase(task) in ("Succeeded", "Failed")))
    if not events.started(name):
        raise AssertionError(f"{task} ended before {name} started:\n{pod_log(kube, task)[-4000:]}")
    response = client.CoreV1Api(kube.client()).read_namespaced_pod_log(
        name, NAMESPACE, follow=True, _preload_content=False
    )
    from kubeflow import tfjob_client

    try:
        for line in tfjob_client.log_lines(response):
            if until(line):
                return line
    finally:
        response.release_conn()
    raise AssertionError(f"{name}'s log ended without the line looked for")


def env(pod: Dict[str, Any], name: str) -> Optional[str]:
    for variable in pod["spec"]["containers"][0].get("env") or []:
        if variable["name"] == name:
            return variable.get("value")
    return None

"""The TFJob (Kubeflow Training Operator, kubeflow.org/v1) that runs the Trainer on several machines."""

# Field names and rules are the operator's (training-operator v1.8.1, pkg/apis/kubeflow.org/v1
# tensorflow_types.go and common_types.go); `make tfjobcheck` builds its own code into a checker
# (kubeflow/tfjobcheck) that tests run on what `build` returns.

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence

GROUP = "kubeflow.org"
VERSION = "v1"
KIND = "TFJob"
PLURAL = "tfjobs"
API_VERSION = f"{GROUP}/{VERSION}"
# The operator sets TF_CONFIG and the port only on the container of this name; its webhook refuses
# a replica without one.
CONTAINER = "tensorflow"
GPU_TYPE = "nvidia.com/gpu"
# Each replica runs TFX's Trainer executor through the same entrypoint as every other task.
ENTRYPOINT_COMMAND = ("python", "-m", "kubeflow.entrypoint")
# MultiWorkerMirroredStrategy's collectives fail on every replica when one of them dies, so the
# survivors exit 1 as well. OnFailure restarts each failed container in place and BackupAndRestore
# resumes the whole cluster after the last finished epoch; ExitCode would take those exit-1s for
# permanent errors and fail the job on any preemption. backoffLimit counts the restarts, which
# bounds a crash loop from a real bug.
RESTART_POLICY = "OnFailure"
# Finished pods stay (their logs explain a failure) until the TTL deletes the job and them;
# replicas still running when the job ends (a worker stuck in a collective) are deleted at once.
CLEAN_POD_POLICY = "Running"
TTL_SECONDS_AFTER_FINISHED = 24 * 3600
BACKOFF_LIMIT = 3
# An Istio sidecar never exits, so a pod with one never completes and the job never finishes
# (kubeflow/trainer#1183).
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
LABELS = {"app.kubernetes.io/name": "petseg", "app.kubernetes.io/component": "trainer"}
# Kubernetes names pods and the operator's headless services `<job>-<type>-<index>`: a DNS-1035
# label of at most 63 characters, which the job's own name must leave room for.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_LABEL = 63


class TFJobError(ValueError):
    """A TFJob that cannot be built from these arguments; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """Per-replica CPU/memory/GPU, given as `petseg kubeflow compile --cpu/--memory/--gpus/--gpu-type`."""

    cpu: Optional[float] = None  # vCPUs
    memory_gb: Optional[float] = None
    gpus: int = 0
    gpu_type: str = GPU_TYPE

    def requirements(self) -> Dict[str, Dict[str, str]]:
        """Container resources as KFP's driver writes a task's (limits only; Kubernetes requests the limit)."""
        if self.gpus < 0:
            raise TFJobError(f"gpus: must be >= 0, got {self.gpus}")
        for flag, value in (("cpu", self.cpu), ("memory", self.memory_gb)):
            if value is not None and value <= 0:
                raise TFJobError(f"{flag}: must be > 0, got {value}")
        limits = {}
        if self.cpu:
            limits["cpu"] = f"{self.cpu:g}"
        if self.memory_gb:
            limits["memory"] = f"{self.memory_gb:g}G"
        if self.gpus:
            limits[self.gpu_type] = str(self.gpus)
        return {"limits": limits} if limits else {}


def pod_name(job_name: str, replica_type: str, index: int) -> str:
    """The pod (and service) the operator creates for one replica (common.GenGeneralName)."""
    return f"{job_name}-{replica_type.lower()}-{index}"


def chief_pod(job_name: str) -> str:
    return pod_name(job_name, "Chief", 0)


def check_name(name: str, workers: int) -> None:
    """Raises TFJobError unless `name` and every pod name derived from it are DNS-1035 labels."""
    longest = pod_name(name, "Worker", max(workers - 2, 0))
    if not _DNS_1035.match(name):
        raise TFJobError(f"name: {name!r} must be lower-case letters, digits and '-', start with a letter "
                         "and end with a letter or digit (a DNS-1035 label)")
    if len(longest) > _MAX_LABEL:
        raise TFJobError(f"name: {name!r} is too long: its pod {longest!r} would exceed {_MAX_LABEL} characters")


def build(*, name: str, namespace: str, image: str, workers: int, args: Sequence[str],
          resources: Resources = Resources(), service_account: Optional[str] = None,
          annotations: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The TFJob dict: a Chief and `workers - 1` Workers, each running the entrypoint with `args` in `image`.

    `annotations` go on the job (not its pods).
    """
    if workers < 2:
        raise TFJobError(f"workers: a TFJob needs 2 or more (a chief and workers), got {workers}; "
                         "1 runs the Trainer in its own pod")
    if not image:
        raise TFJobError("image: required")
    if not namespace:
        raise TFJobError("namespace: required")
    check_name(name, workers)
    requirements = resources.requirements()
    pod_spec: Dict[str, Any] = {"containers": [{
        "name": CONTAINER, "image": image, "command": list(ENTRYPOINT_COMMAND), "args": list(args),
        **({"resources": requirements} if requirements else {})}]}
    if service_account:
        pod_spec["serviceAccountName"] = service_account

    def replica(count: int) -> Dict[str, Any]:
        return {"replicas": count, "restartPolicy": RESTART_POLICY,
                "template": {"metadata": {"labels": dict(LABELS), "annotations": dict(POD_ANNOTATIONS)},
                             "spec": copy.deepcopy(pod_spec)}}

    run_policy = {"cleanPodPolicy": CLEAN_POD_POLICY, "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
                  "backoffLimit": BACKOFF_LIMIT}
    metadata: Dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(LABELS)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
        "spec": {
            # Only here does the operator read these; at spec's top level the API server drops them.
            "runPolicy": run_policy,
            "tfReplicaSpecs": {"Chief": replica(1), "Worker": replica(workers - 1)},
        },
    }


def condition(job: Dict[str, Any], kind: str) -> Optional[Dict[str, Any]]:
    """The job's status condition of this type when it is true, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def finished(job: Dict[str, Any]) -> Optional[str]:
    """"Succeeded" or "Failed" once the operator says so, else None."""
    for kind in ("Succeeded", "Failed"):
        if condition(job, kind):
            return kind
    return None


def replica_counts(job: Dict[str, Any]) -> Dict[str, int]:
    return {kind: spec["replicas"] for kind, spec in job["spec"]["tfReplicaSpecs"].items()}


def containers(job: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [c for spec in job["spec"]["tfReplicaSpecs"].values() for c in spec["template"]["spec"]["containers"]]

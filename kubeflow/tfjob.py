"""The TFJob (Kubeflow Training Operator, kubeflow.org/v1) that runs the Trainer on several machines."""

# Built from the Training Operator SDK's typed models (kubeflow-training, generated from the operator's
# kubeflow.org/v1 types): a field out of place, such as run policy at spec's top level, cannot be built.
# The tests create what `build` returns on a real API server with the operator's CRD and webhook.

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence

from kubeflow.training import models
from kubeflow.training.constants import constants as sdk

from kubeflow import replicas
from kubeflow.resources import Resources

GROUP = sdk.KUBEFLOW_GROUP
VERSION = sdk.OPERATOR_VERSION
KIND = sdk.TFJOB_KIND
PLURAL = sdk.TFJOB_PLURAL
API_VERSION = f"{GROUP}/{VERSION}"
# The operator sets TF_CONFIG and the port only on the container of this name; its webhook refuses
# a replica without one.
CONTAINER = sdk.TFJOB_CONTAINER
# Set to the job's name by the task that creates it, so a retried pod adopts only a job of its own.
TASK_ANNOTATION = "petseg/trainer-task"
# MultiWorkerMirroredStrategy's collectives fail on every replica when one of them dies, so the
# survivors exit 1 as well. OnFailure restarts each failed container in place and BackupAndRestore
# resumes the whole cluster after the last finished epoch; ExitCode would take those exit-1s for
# permanent errors and fail the job on any preemption.
RESTART_POLICY = "OnFailure"
# Finished pods stay (their logs explain a failure) until the TTL deletes the job and them;
# replicas still running when the job ends (a worker stuck in a collective) are deleted at once.
CLEAN_POD_POLICY = "Running"
TTL_SECONDS_AFTER_FINISHED = 24 * 3600
# The operator fails the job once the restart counts summed over its running pods reach backoffLimit
# (core.PastBackoffLimit), and one lost machine restarts every replica (the survivors' collectives abort).
# So the limit scales with the replicas: a job rides out this many lost machines, and a replica that
# crashes at every start (a bug) fails it after as many rounds.
MACHINE_LOSSES = 3


def backoff_limit(replicas: int) -> int:
    """spec.runPolicy.backoffLimit for a job of `replicas` pods: MACHINE_LOSSES restarts of each pass."""
    return MACHINE_LOSSES * replicas + 1


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


def pod_name(job_name: str, replica_type: str, index: int) -> str:
    """The pod (and service) the operator creates for one replica (common.GenGeneralName)."""
    return f"{job_name}-{replica_type.lower()}-{index}"


def chief_pod(job_name: str) -> str:
    return pod_name(job_name, "Chief", 0)


def check_name(name: str, workers: int) -> None:
    """Raises TFJobError unless `name` and every pod name derived from it are DNS-1035 labels."""
    longest = pod_name(name, "Worker", max(workers - 2, 0))
    if not _DNS_1035.match(name):
        raise TFJobError(
            f"name: {name!r} must be lower-case letters, digits and '-', start with a letter "
            "and end with a letter or digit (a DNS-1035 label)"
        )
    if len(longest) > _MAX_LABEL:
        raise TFJobError(f"name: {name!r} is too long: its pod {longest!r} would exceed {_MAX_LABEL} characters")


def build(
    *,
    name: str,
    namespace: str,
    image: str,
    workers: int,
    args: Sequence[str],
    resources: Optional[Resources] = None,
    service_account: Optional[str] = None,
    annotations: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    """The TFJob dict: a Chief and `workers - 1` Workers, each running TFX's run_executor with `args` in `image`.

    `annotations` go on the job (not its pods).
    """
    if workers < 2:
        raise TFJobError(
            f"workers: a TFJob needs 2 or more (a chief and workers), got {workers}; 1 runs the Trainer in its own pod"
        )
    if not image:
        raise TFJobError("image: required")
    if not namespace:
        raise TFJobError("namespace: required")
    check_name(name, workers)
    from kubernetes import client

    limits = (resources or Resources()).checked().kubernetes_limits()

    def replica(count: int) -> models.KubeflowOrgV1ReplicaSpec:
        container = client.V1Container(
            name=CONTAINER,
            image=image,
            command=list(replicas.COMMAND),
            args=list(args),
            env=[client.V1EnvVar(**variable) for variable in replicas.ENV],
            resources=client.V1ResourceRequirements(limits=limits) if limits else None,
        )
        return models.KubeflowOrgV1ReplicaSpec(
            replicas=count,
            restart_policy=RESTART_POLICY,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=dict(LABELS), annotations=dict(POD_ANNOTATIONS)),
                spec=client.V1PodSpec(containers=[container], service_account_name=service_account),
            ),
        )

    job = models.KubeflowOrgV1TFJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=client.V1ObjectMeta(
            name=name, namespace=namespace, labels=dict(LABELS), annotations=dict(annotations) if annotations else None
        ),
        spec=models.KubeflowOrgV1TFJobSpec(
            # Only here does the operator read these; at spec's top level a lenient API server drops them.
            run_policy=models.KubeflowOrgV1RunPolicy(
                clean_pod_policy=CLEAN_POD_POLICY,
                ttl_seconds_after_finished=TTL_SECONDS_AFTER_FINISHED,
                backoff_limit=backoff_limit(workers),
            ),
            tf_replica_specs={"Chief": replica(1), "Worker": replica(workers - 1)},
        ),
    )
    # The client's own serializer: camelCase field names, unset fields left out.
    return client.ApiClient().sanitize_for_serialization(job)


def condition(job: Dict[str, Any], kind: str) -> Optional[Dict[str, Any]]:
    """The job's status condition of this type when it is true, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def finished(job: Dict[str, Any]) -> Optional[str]:
    """ "Succeeded" or "Failed" once the operator says so, else None."""
    for kind in ("Succeeded", "Failed"):
        if condition(job, kind):
            return kind
    return None


def replica_counts(job: Dict[str, Any]) -> Dict[str, int]:
    return {kind: spec["replicas"] for kind, spec in job["spec"]["tfReplicaSpecs"].items()}


def containers(job: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [c for spec in job["spec"]["tfReplicaSpecs"].values() for c in spec["template"]["spec"]["containers"]]


# What `review_manifest` shows where the task fills in run-time values.
PLACEHOLDER_NAME = "petseg-trainer"


def review_manifest(
    *,
    image: str,
    workers: int,
    resources: Resources,
    namespace: str,
    service_account: Optional[str],
    name: str = PLACEHOLDER_NAME,
) -> Dict[str, Any]:
    """The TFJob the task submits, with placeholders for what only a run knows (its name and arguments)."""
    # At run time the name is staging.NAME_PREFIX + 12 hex digits of the task's output URIs.
    return build(
        name=name,
        namespace=namespace,
        image=image,
        workers=workers,
        args=replicas.PLACEHOLDER_ARGS,
        resources=resources,
        service_account=service_account,
        annotations={TASK_ANNOTATION: name},
    )

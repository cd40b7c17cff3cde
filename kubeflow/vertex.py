"""The Vertex AI CustomJob that runs the Trainer on several machines, started by TFX's Google Cloud extension."""

# TFX 1.16's extension (tfx/extensions/google_cloud_ai_platform/trainer/executor.py and
# training_clients.py) runs in the Trainer task: it reads the keys below from the Trainer's
# custom_config, creates a CustomJob from `ai_platform_training_args` (a CustomJob dict whose
# `project` it takes out) and polls it until it ends. In every worker pool it keeps our image and
# environment and replaces the command with TFX's run_executor line (kubeflow/replicas.py, the same
# replicas a TFJob runs on open-source KFP): each replica runs TFX's own Trainer executor on the task's
# artifacts, which it reads and writes on gs:// itself. Vertex gives each replica TF_CONFIG (and
# CLUSTER_SPEC); the first pool is the chief.

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from kubeflow import replicas
from kubeflow.resources import Resources

# The Vertex AI SDK's own default (aiplatform.CustomJob.from_local_script, machine_type="n1-standard-4").
DEFAULT_MACHINE_TYPE = "n1-standard-4"
# N1 machines Vertex training offers, as (name, vCPUs, GB): the family --cpu/--memory choose from, to which
# T4, V100, P100 and P4 GPUs attach. A100, L4 and H100 come with their own machine types (a2-*, g2-*, a3-*)
# whose name fixes the GPU count. Vertex itself checks how many GPUs a machine takes.
_N1_MACHINES = sorted(
    [(f"n1-standard-{n}", n, 3.75 * n) for n in (4, 8, 16, 32, 64, 96)]
    + [(f"n1-highmem-{n}", n, 6.5 * n) for n in (2, 4, 8, 16, 32, 64, 96)],
    key=lambda machine: (machine[1], machine[2]),
)
N1_GPUS = ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4")


class VertexError(ValueError):
    """Worker pools that cannot be built from these settings; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Replica:
    """One replica's machine: `--machine-type`, or the smallest N1 machine with the `--cpu/--memory` resources."""

    machine_type: Optional[str] = None
    resources: Resources = Resources()

    def machine_spec(self) -> Dict[str, Any]:
        """Vertex's MachineSpec: the machine type (given, or the smallest N1 that fits) and its GPUs."""
        r = self.resources.checked()
        spec: Dict[str, Any] = {"machine_type": self._machine_type()}
        if r.gpus:
            spec["accelerator_type"] = r.vertex_gpu()
            spec["accelerator_count"] = r.gpus
        return spec

    def _machine_type(self) -> str:
        r = self.resources
        if self.machine_type:
            if r.cpu or r.memory_gb:
                raise VertexError(
                    "--cpu/--memory: Vertex sizes each replica by its machine type; give either "
                    f"--machine-type ({self.machine_type!r}) or --cpu/--memory, not both"
                )
            return self.machine_type
        if r.gpus and r.vertex_gpu() not in N1_GPUS:
            raise VertexError(
                f"--machine-type: {r.gpu_type} GPUs come with their own machine types (e.g. "
                "a2-highgpu-1g for one NVIDIA_TESLA_A100, g2-standard-8 for one NVIDIA_L4); "
                f"--cpu/--memory choose among N1 machines, which take {', '.join(N1_GPUS)}"
            )
        if not (r.cpu or r.memory_gb):
            return DEFAULT_MACHINE_TYPE
        for name, vcpus, memory in _N1_MACHINES:
            if vcpus >= (r.cpu or 0) and memory >= (r.memory_gb or 0):
                return name
        raise VertexError(
            f"--cpu/--memory: no N1 machine has {r.cpu or 0:g} vCPUs and {r.memory_gb or 0:g} GB "
            f"(the largest is {_N1_MACHINES[-1][0]}); give --machine-type"
        )


def worker_pool_specs(*, image: str, workers: int, replica: Replica) -> List[Dict[str, Any]]:
    """[chief x1, workers x N-1], each running in `image` on `replica`'s machine (the command is TFX's)."""
    if workers < 2:
        raise VertexError(
            f"train.workers: Vertex worker pools need 2 or more (a chief and workers), got {workers}; "
            "1 runs the Trainer in its own task"
        )
    if not image:
        raise VertexError("--image: required")
    machine = replica.machine_spec()

    def pool(count: int) -> Dict[str, Any]:
        return {
            "replica_count": count,
            "machine_spec": dict(machine),
            "container_spec": {"image_uri": image, "env": [dict(e) for e in replicas.ENV]},
        }

    return [pool(1), pool(workers - 1)]


def training_job(
    *,
    project: Optional[str],
    region: Optional[str],
    image: str,
    workers: int,
    replica: Replica,
    display_name: Optional[str] = None,
) -> Dict[str, Any]:
    """The CustomJob TFX's extension creates (it takes `project` out), checked without importing TFX."""
    if not project:
        raise VertexError(
            f"--project: required for --target vertex with train.workers={workers} (the Google Cloud "
            "project the Trainer's CustomJob runs in)"
        )
    if not region:
        raise VertexError(
            f"--region: required for --target vertex with train.workers={workers} (the Vertex AI "
            "region of the Trainer's CustomJob, e.g. us-central1)"
        )
    job: Dict[str, Any] = {
        "project": project,
        "job_spec": {"worker_pool_specs": worker_pool_specs(image=image, workers=workers, replica=replica)},
    }
    if display_name:
        job["display_name"] = display_name
    return job


def custom_config(*, region: str, job: Dict[str, Any]) -> Dict[str, Any]:
    """The Trainer custom_config keys TFX's extension reads to create and follow the CustomJob."""
    from tfx.extensions.google_cloud_ai_platform import constants
    from tfx.extensions.google_cloud_ai_platform.trainer import executor

    return {executor.TRAINING_ARGS_KEY: job, constants.ENABLE_VERTEX_KEY: True, constants.VERTEX_REGION_KEY: region}


def run_on_worker_pools(trainer, *, region: str, job: Dict[str, Any]) -> None:
    """Makes an already-built Trainer run as the CustomJob `job` (`training_job`): TFX's extension executor."""
    from tfx.extensions.google_cloud_ai_platform.trainer import executor

    try:
        replicas.run_trainer_with(trainer, executor.GenericExecutor, custom_config(region=region, job=job))
    except ValueError as exc:
        raise VertexError(str(exc)) from None

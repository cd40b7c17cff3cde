"""The Trainer's machine as `petseg kubeflow compile` and `tfjob-manifest` take it, checked once for every target."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

# Kubernetes' extended resource for NVIDIA GPUs (the device plugin's), the TFJob's and the KFP task's default.
KUBERNETES_GPU = "nvidia.com/gpu"


class ResourcesError(ValueError):
    """A value no machine can have, or a GPU the target does not name; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """CPU, memory and GPUs of the Trainer (of each replica, with train.workers > 1)."""

    cpu: Optional[float] = None  # vCPUs
    memory_gb: Optional[float] = None
    gpus: int = 0
    # None: KUBERNETES_GPU on Kubernetes; Vertex names its GPUs itself and needs one of them.
    gpu_type: Optional[str] = None

    def checked(self) -> "Resources":
        if self.gpus < 0:
            raise ResourcesError(f"--gpus: must be >= 0, got {self.gpus}")
        for flag, value in (("--cpu", self.cpu), ("--memory", self.memory_gb)):
            if value is not None and value <= 0:
                raise ResourcesError(f"{flag}: must be > 0, got {value:g}")
        return self

    @property
    def kubernetes_gpu(self) -> str:
        return self.gpu_type or KUBERNETES_GPU

    def vertex_gpu(self) -> str:
        """The GPU type as Vertex names it (e.g. NVIDIA_TESLA_T4); required with --gpus."""
        known = vertex_gpu_types()
        if self.gpu_type not in known:
            given = "none given" if self.gpu_type is None else f"got {self.gpu_type!r}"
            raise ResourcesError(f"--gpu-type: Vertex names GPUs by type, one of {', '.join(known)}; {given}")
        return self.gpu_type

    def kubernetes_limits(self) -> Dict[str, str]:
        """Container limits as KFP's driver writes a task's (Kubernetes requests the limit)."""
        limits = {}
        if self.cpu:
            limits["cpu"] = f"{self.cpu:g}"
        if self.memory_gb:
            limits["memory"] = f"{self.memory_gb:g}G"
        if self.gpus:
            limits[self.kubernetes_gpu] = str(self.gpus)
        return limits


def vertex_gpu_types() -> Tuple[str, ...]:
    """The NVIDIA accelerators Vertex AI names, from its own API types (MultiWorkerMirroredStrategy uses GPUs;
    TPU pools would need TPUStrategy)."""
    from google.cloud.aiplatform_v1.types import AcceleratorType

    return tuple(name for name in AcceleratorType.__members__ if name.startswith("NVIDIA_"))

"""Staging the Trainer's outputs for replicas in other pods, and handing them back to the Kubeflow Pipelines task.

On open-source KFP the launcher downloads a task's inputs into a local mirror of the bucket (/gcs/...)
before its command and uploads its outputs from there after it (kubeflow/entrypoint.py), so the task's
executor sees mirror paths. Replicas in other pods see neither that mirror nor the task's files, so:

1. each replica gets the inputs at their bucket URIs (gs://, which TensorFlow reads directly) and each
   output at a staging URI beside the real one (`<task dir>/tfjob-staging/<key>`);
2. the replicas run TFX's Trainer executor; the chief writes the model and the run's logs there;
3. once the job has succeeded, each staged output is copied to the output as the task's executor sees it
   (the launcher's mirror path, or the bucket URI itself for Vertex-shaped input) and staging is deleted.

Why staging rather than the real URIs: the launcher uploads every output from its mirror after the
command, and a folder TensorFlow wrote to GCS itself carries zero-byte "dir/" marker objects that break
the launcher's later downloads of that artifact (kubeflow/pipelines#13476); the copy costs one transfer
of the model, small next to the training.

The replicas must reach the artifacts themselves: gs:// works with TensorFlow; minio:// and s3:// do not
(that needs tensorflow-io's S3 plugin in the image and credentials and an endpoint in every replica; a
ReadWriteMany volume mounted at one path in the task pod and every replica would be the other way), so
`petseg kubeflow compile` refuses them with train.workers > 1 and `plan` refuses them again at run time
(a run can be submitted with another pipeline root).
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from kubeflow.entrypoint import Mirror

STAGING = "tfjob-staging"
# Schemes the replicas cannot open (see the module docstring).
UNREACHABLE = ("minio://", "s3://")
NAME_PREFIX = "petseg-trainer-"


class StagingError(ValueError):
    """Artifacts the replicas cannot reach; the message says which and what to do."""


@dataclasses.dataclass
class Plan:
    """What the replicas get, and the way back."""

    name: str  # the TFJob's, from the output URIs
    inputs: Dict[str, list]  # TFX artifacts at their bucket URIs
    outputs: Dict[str, list]  # TFX artifacts at their staging URIs
    copies: List[Tuple[str, str]]  # (staging URI, the output's URI as the task's executor sees it)

    @property
    def staging_dirs(self) -> List[str]:
        return sorted({posixpath.dirname(staged) for staged, _ in self.copies})


def staging_uri(uri: str) -> str:
    parent, key = posixpath.split(uri.rstrip("/"))
    return posixpath.join(parent, STAGING, key)


def job_name(output_uris: List[str]) -> str:
    """Stable per task execution (its output URIs are its own), so a retried pod of the task finds its job."""
    return NAME_PREFIX + hashlib.sha256("\n".join(sorted(output_uris)).encode()).hexdigest()[:12]


def _copies(artifacts: Dict[str, list]) -> Dict[str, list]:
    """The artifacts as new objects (their URIs change; the task's own stay as they are)."""
    from tfx.types import artifact_utils

    return artifact_utils.parse_artifact_dict(artifact_utils.jsonify_artifact_dict(artifacts))


def plan(input_dict: Dict[str, list], output_dict: Dict[str, list], mirror: Optional["Mirror"]) -> Plan:
    """The replicas' artifacts and the way back, from the task executor's own (mirror paths mapped back to URIs)."""
    remote = mirror.remote if mirror is not None else (lambda uri: uri)
    inputs, outputs = _copies(input_dict), _copies(output_dict)
    for side, artifacts in (("input", inputs), ("output", outputs)):
        for key, artifact_list in artifacts.items():
            for artifact in artifact_list:
                artifact.uri = remote(artifact.uri)
                if artifact.uri.startswith(UNREACHABLE):
                    raise StagingError(
                        f"{side} artifact {key!r} is at {artifact.uri}: the TFJob's replicas read and write artifacts "
                        "themselves and TensorFlow cannot open minio:// or s3:// URIs; run with a gs:// pipeline root, "
                        "or train.workers=1"
                    )
    name = job_name([artifact.uri for artifact_list in outputs.values() for artifact in artifact_list])
    copies = []
    for key, artifact_list in outputs.items():
        for staged, own in zip(artifact_list, output_dict[key]):
            staged.uri = staging_uri(staged.uri)
            copies.append((staged.uri, own.uri))
    if not copies:
        raise StagingError("the Trainer task has no output artifacts to stage")
    return Plan(name, inputs, outputs, copies)


def collect(p: Plan) -> None:
    """Copies each staged output to the task's own output URI, then deletes staging."""
    import tensorflow as tf

    for staged, target in p.copies:
        if tf.io.gfile.exists(staged):
            _copy_tree(tf, staged, target)
    for staging in p.staging_dirs:
        tf.io.gfile.rmtree(staging)


def _copy_tree(tf, source: str, target: str) -> None:
    if not tf.io.gfile.isdir(source):
        tf.io.gfile.makedirs(posixpath.dirname(target))
        tf.io.gfile.copy(source, target, overwrite=True)
        return
    for folder, _, files in tf.io.gfile.walk(source):
        relative = folder[len(source) :].lstrip("/")
        destination = posixpath.join(target, relative) if relative else target
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(posixpath.join(folder, name), posixpath.join(destination, name), overwrite=True)

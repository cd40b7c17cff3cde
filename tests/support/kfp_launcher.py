"""Runs a compiled PipelineSpec task by task as open-source KFP's driver and launcher (or Vertex) would, without a
cluster."""

# What the open-source backend does per container task (backend/src/v2/driver and
# component/launcher_v2.go of the KFP release kubeflow/kfpcheck pins), and what this reproduces:
#  - output URIs `<root>/<pipeline>/<run>/<task>/<uuid>/<key>` under the pipeline root
#    (default minio://mlpipeline/v2/artifacts), plus the launcher's own `executor-logs` output
#    typed `system.Artifact`;
#  - input artifacts read back from its metadata store: `name` is the decimal artifact id, the
#    metadata is the producer's plus `display_name` and `store_session_info`, and the type is
#    `{"instanceSchema": ""}` (the store keeps no schema);
#  - every input downloaded from the object store to the local mirror (/minio/..., /s3/..., /gcs/...)
#    before the command, every output uploaded from there after it, with the URI and metadata the
#    executor wrote to the pod's /tmp/kfp_outputs/output_metadata.json merged in;
#  - the container's command and args, `{{$}}` replaced by the ExecutorInput JSON.
# The object store is a folder; a pod's filesystem root is a fresh folder per task, named to the
# entrypoint with --kfp_local_root (the one deviation: a pod's root is "/"), so the mirror and the
# output file of every task, and of every test run, are its own. Vertex-shaped input has
# typed artifacts, resource names and plain paths for URIs, which TFX reads directly.

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"
# The launcher's output file, relative to the pod's root.
OUTPUT_FILE = "tmp/kfp_outputs/output_metadata.json"
DEFAULT_ROOT = "minio://mlpipeline/v2/artifacts"
LOG_OUTPUT = "executor-logs"
ENTRYPOINT = "kubeflow.entrypoint"
# The launcher's own mapping, written out here rather than taken from kubeflow.entrypoint, whose
# Mirror is what this emulation tests.
_SCHEMES = {"minio://": "minio", "s3://": "s3", "gs://": "gcs"}


class TaskFailed(RuntimeError):
    """A task's command exited non-zero; the message names the task and ends with its log."""


@dataclasses.dataclass
class TaskResult:
    name: str
    kind: str  # "container" or "cached"
    seconds: float
    outputs: Dict[str, List[Dict[str, Any]]]  # output key -> RuntimeArtifact dicts, as recorded


def task_order(spec: Dict[str, Any]) -> List[str]:
    """Tasks in dependency order (dependentTasks plus artifact producers), ties by name."""
    tasks = spec["root"]["dag"]["tasks"]
    needs = {
        name: set(task.get("dependentTasks", []))
        | {a["taskOutputArtifact"]["producerTask"] for a in task.get("inputs", {}).get("artifacts", {}).values()}
        for name, task in tasks.items()
    }
    order: List[str] = []
    while needs:
        ready = sorted(name for name, deps in needs.items() if deps <= set(order))
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(needs)}")
        order.append(ready[0])
        del needs[ready[0]]
    return order


class ObjectStore:
    """A folder standing for the launcher's bucket(s): `scheme://bucket/key` lives at `<root>/<scheme>/bucket/key`."""

    def __init__(self, root: pathlib.Path):
        self.root = root

    def path(self, uri: str) -> pathlib.Path:
        for scheme, folder in _SCHEMES.items():
            if uri.startswith(scheme):
                return self.root / folder / uri[len(scheme) :]
        raise ValueError(f"{uri}: not an object store URI")


def _local(pod: pathlib.Path, uri: str) -> pathlib.Path:
    """The launcher's LocalPathForURI, under a pod root."""
    for scheme, folder in _SCHEMES.items():
        if uri.startswith(scheme):
            return pod / folder / uri[len(scheme) :]
    raise ValueError(f"{uri}: unsupported storage scheme")


def _copy(source: pathlib.Path, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    elif source.exists():
        shutil.copy2(source, target)


class Metadata:
    """The part of the launcher's metadata store a run reads back: artifacts by id (ids count from 1)."""

    def __init__(self):
        self._ids = itertools.count(1)
        self.artifacts: Dict[str, Dict[str, Any]] = {}

    def record(self, output_key: str, artifact: Dict[str, Any], name: Optional[str] = None) -> Dict[str, Any]:
        """Stores an output; without `name`, as open-source KFP's launcher does (id as name, its own fields)."""
        metadata = dict(artifact.get("metadata") or {})
        if name is None:
            name = str(next(self._ids))
            metadata.setdefault("display_name", output_key)
            metadata.setdefault("store_session_info", json.dumps({"Provider": "minio", "Params": {}}))
        self.artifacts[name] = {"name": name, "uri": artifact["uri"], "metadata": metadata}
        return self.artifacts[name]


class Run:
    """One run of a compiled spec. `shape` is "kfp" (open-source launcher) or "vertex"."""

    def __init__(
        self,
        spec: Dict[str, Any],
        workdir: pathlib.Path,
        run_id: str,
        shape: str = "kfp",
        pipeline_root: str = DEFAULT_ROOT,
        metadata: Optional[Metadata] = None,
        entrypoint: Optional[str] = None,
        python: str = sys.executable,
    ):
        if shape not in ("kfp", "vertex"):
            raise ValueError(f"shape must be kfp or vertex, got {shape!r}")
        self.spec, self.workdir, self.run_id, self.shape, self.python = spec, workdir, run_id, shape, python
        self.pipeline_root = pipeline_root
        self.store = ObjectStore(workdir / "store")
        self.metadata = metadata or Metadata()
        # Runs the task with another module than the compiled one (e.g. TFX's own entrypoint).
        self.entrypoint = entrypoint
        self.outputs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
        self.results: List[TaskResult] = []
        self.pipeline_name = spec["pipelineInfo"]["name"]

    def run(
        self, stop_after: Optional[str] = None, cached: Optional[Dict[str, Dict[str, List[Dict[str, Any]]]]] = None
    ) -> List[TaskResult]:
        """Runs every task in order (up to `stop_after`); tasks in `cached` (task -> outputs of an
        earlier run) hand on those outputs without running, as the backend's cache hits do."""
        for name in task_order(self.spec):
            if cached and name in cached:
                self.outputs[name] = cached[name]
                self.results.append(TaskResult(name, "cached", 0.0, cached[name]))
            else:
                self.run_task(name)
            if name == stop_after:
                break
        return self.results

    def run_task(self, name: str) -> TaskResult:
        task = self.spec["root"]["dag"]["tasks"][name]
        component = self.spec["components"][task["componentRef"]["name"]]
        container = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        started = time.monotonic()
        inputs = {
            key: self.outputs[ref["taskOutputArtifact"]["producerTask"]].get(
                ref["taskOutputArtifact"]["outputArtifactKey"], []
            )
            for key, ref in task.get("inputs", {}).get("artifacts", {}).items()
        }
        outputs = self._execute(name, task, component, container, inputs)
        self.outputs[name] = outputs
        result = TaskResult(name, "container", round(time.monotonic() - started, 1), outputs)
        self.results.append(result)
        return result

    def _output_uri(self, task: str, salt: str, key: str) -> str:
        if self.shape == "vertex":
            return str(self.workdir / "vertex-root" / self.run_id / task / key)
        return f"{self.pipeline_root.rstrip('/')}/{self.pipeline_name}/{self.run_id}/{task}/{salt}/{key}"

    def _input_artifact(self, artifact: Dict[str, Any], declared_type: Dict[str, Any]) -> Dict[str, Any]:
        if self.shape == "vertex":
            return dict(artifact, type=declared_type)
        return dict(artifact, type={"instanceSchema": ""})

    def _execute(self, name, task, component, container, inputs):
        task_dir = self.workdir / self.run_id / name
        pod = task_dir / "pod"
        shutil.rmtree(pod, ignore_errors=True)
        pod.mkdir(parents=True)
        input_types = component.get("inputDefinitions", {}).get("artifacts", {})
        output_types = dict(component.get("outputDefinitions", {}).get("artifacts", {}))
        if self.shape == "kfp":
            output_types[LOG_OUTPUT] = {"artifactType": {"schemaTitle": "system.Artifact"}}
        salt = str(uuid.uuid4())  # one per execution, shared by its outputs
        output_file = pod / OUTPUT_FILE if self.shape == "kfp" else task_dir / "executor_output.json"
        if output_file.exists():
            output_file.unlink()  # each task starts without one
        executor_input = {
            "inputs": {
                "parameterValues": {
                    key: _constant(name, key, ref) for key, ref in task.get("inputs", {}).get("parameters", {}).items()
                },
                "artifacts": {
                    key: {"artifacts": [self._input_artifact(a, input_types[key]["artifactType"]) for a in found]}
                    for key, found in inputs.items()
                    if found
                },
            },
            "outputs": {
                "artifacts": {
                    key: {"artifacts": [{"uri": self._output_uri(name, salt, key), "type": definition["artifactType"]}]}
                    for key, definition in output_types.items()
                },
                "outputFile": str(output_file),
            },
        }
        if self.shape == "kfp":
            self._download(executor_input, pod)
        command = [self.python if part == "python" else part for part in container.get("command", [])]
        if self.entrypoint:
            command[-1] = self.entrypoint
        ours = command[-1] == ENTRYPOINT
        command += [
            json.dumps(executor_input) if arg == EXECUTOR_INPUT_PLACEHOLDER else arg
            for arg in container.get("args", [])
        ]
        if self.shape == "kfp" and ours:
            command.append(f"--kfp_local_root={pod}")
        log = task_dir / "task.log"
        with open(log, "w") as stream:
            proc = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=pod)
        if proc.returncode != 0:
            raise TaskFailed(f"task {name} exited with {proc.returncode}; log {log}:\n{log.read_text()[-4000:]}")
        written = json.loads(output_file.read_text()).get("artifacts", {}) if output_file.exists() else {}
        outputs = {}
        for key, artifact_list in executor_input["outputs"]["artifacts"].items():
            artifact = dict(artifact_list["artifacts"][0])
            # The launcher merges what the executor wrote: a URI, and metadata key by key.
            mine = (written.get(key, {}).get("artifacts") or [{}])[0]
            artifact["uri"] = mine.get("uri") or artifact["uri"]
            artifact["metadata"] = {**(artifact.get("metadata") or {}), **(mine.get("metadata") or {})}
            if self.shape == "kfp":
                self._upload(key, artifact, pod, log)
                outputs[key] = [self.metadata.record(key, artifact)]
            else:
                resource = f"projects/p/locations/l/metadataStores/default/artifacts/{uuid.uuid4()}"
                outputs[key] = [self.metadata.record(key, artifact, name=resource)]
        return outputs

    def _upload(self, key: str, artifact: Dict[str, Any], pod: pathlib.Path, log: pathlib.Path) -> None:
        try:
            local = _local(pod, artifact["uri"])
        except ValueError:
            return  # as the launcher: a URI it cannot map is recorded, not uploaded
        if key == LOG_OUTPUT:
            _copy(log, local)
        _copy(local, self.store.path(artifact["uri"]))

    def _download(self, executor_input: Dict[str, Any], pod: pathlib.Path) -> None:
        for artifact_list in executor_input["inputs"]["artifacts"].values():
            for artifact in artifact_list["artifacts"]:
                _copy(self.store.path(artifact["uri"]), _local(pod, artifact["uri"]))
        for artifact_list in executor_input["outputs"]["artifacts"].values():
            for artifact in artifact_list["artifacts"]:
                _local(pod, artifact["uri"]).parent.mkdir(parents=True, exist_ok=True)


def _constant(task: str, key: str, ref: Dict[str, Any]) -> Any:
    if "runtimeValue" not in ref:
        raise NotImplementedError(f"task {task}: parameter {key} is not a constant ({sorted(ref)})")
    return ref["runtimeValue"]["constant"]

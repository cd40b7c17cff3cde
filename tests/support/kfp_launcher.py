"""Runs a compiled KFP PipelineSpec task by task on this machine, as a KFP 2.x backend would (no cluster)."""

# Each container task runs its own command (`python -m ...kubeflow_v2_run_executor ...`) as a
# subprocess, with the `{{$}}` placeholder replaced by an ExecutorInput built from the spec: constant
# parameters, upstream output artifacts (with the metadata their producers wrote to
# executor_output.json) and output URIs under a local pipeline root. Resolver tasks are MLMD queries
# in KFP; here they query a JSON registry of what earlier offline runs produced (`artifacts.json`).

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import yaml

# KFP's placeholder for the whole ExecutorInput JSON (kfp.dsl PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER).
EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"
# `{{$.inputs.artifacts['input'].metadata['current_model_id']}}` in the model resolver's filter.
_INPUT_METADATA = re.compile(r"\{\{\$\.inputs\.artifacts\['([^']+)'\]\.metadata\['([^']+)'\]\}\}")


class TaskFailed(RuntimeError):
    """A task's command exited non-zero; the message names the task and ends with its log."""


@dataclasses.dataclass
class TaskResult:
    name: str
    kind: str  # "container", "resolver" or "cached"
    seconds: float
    outputs: Dict[str, List[Dict[str, Any]]]  # output key -> RuntimeArtifact dicts


class ArtifactRegistry:
    """The part of MLMD that resolver queries read: every artifact a run produced, oldest first."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.artifacts: List[Dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []

    def add(self, artifact: Dict[str, Any]) -> None:
        self.artifacts.append(artifact)
        self.path.write_text(json.dumps(self.artifacts, indent=1))

    def query(self, filter_: str) -> List[Dict[str, Any]]:
        """The latest LIVE artifact matching a ResolverSpec filter (`a AND b AND ...` of `key=value`)."""
        found = [a for a in self.artifacts if all(_matches(a, clause) for clause in filter_.split(" AND "))]
        return [{key: found[-1][key] for key in ("name", "uri", "metadata")}] if found else []


def _matches(artifact: Dict[str, Any], clause: str) -> bool:
    key, _, value = clause.strip().partition("=")
    value = value.strip().strip('"')
    if key == "schema_title":
        return artifact["schemaTitle"] == value
    if key == "state":
        return value == "LIVE"  # nothing here deletes artifacts
    if key == "name":
        return artifact["name"] == value
    field = re.fullmatch(r"metadata\.(\w+)\.number_value", key)
    if field:
        return artifact["metadata"].get(field.group(1)) == float(value)
    raise ValueError(f"unsupported resolver filter clause {clause!r}")


def task_order(spec: Dict[str, Any]) -> List[str]:
    """Tasks in dependency order (dependentTasks plus artifact producers), ties by name."""
    tasks = spec["root"]["dag"]["tasks"]
    needs = {name: set(task.get("dependentTasks", [])) | {
        a["taskOutputArtifact"]["producerTask"] for a in task.get("inputs", {}).get("artifacts", {}).values()}
        for name, task in tasks.items()}
    order: List[str] = []
    while needs:
        ready = sorted(name for name, deps in needs.items() if deps <= set(order))
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(needs)}")
        order.append(ready[0])
        del needs[ready[0]]
    return order


def _schema_title(artifact_type: Dict[str, Any]) -> str:
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    return yaml.safe_load(artifact_type["instanceSchema"])["title"]


class OfflineRun:
    """One run of a compiled spec under `pipeline_root`; `run_id` separates runs like KFP's run UUID."""

    def __init__(self, spec: Dict[str, Any], pipeline_root: str, run_id: str,
                 python: str = sys.executable, env: Optional[Dict[str, str]] = None):
        self.spec, self.run_id, self.python = spec, run_id, python
        self.root = pathlib.Path(pipeline_root)
        self.registry = ArtifactRegistry(self.root / "artifacts.json")
        self.env = dict(os.environ if env is None else env)
        self.outputs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
        self.results: List[TaskResult] = []

    def run(self, stop_after: Optional[str] = None,
            cached: Optional[Dict[str, Dict[str, List[Dict[str, Any]]]]] = None) -> List[TaskResult]:
        """Runs every task in order (up to `stop_after`); tasks in `cached` (task -> outputs of an
        earlier run) are not executed but hand on those outputs, as KFP's cache hits do."""
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
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        started = time.monotonic()
        inputs = {key: self._upstream(ref["taskOutputArtifact"])
                  for key, ref in task.get("inputs", {}).get("artifacts", {}).items()}
        if "resolver" in executor:
            kind, outputs = "resolver", self._resolve(executor["resolver"], inputs)
        elif "container" in executor:
            kind, outputs = "container", self._execute(name, task, component, executor["container"], inputs)
        else:
            raise NotImplementedError(f"task {name}: executor {sorted(executor)} is not supported offline")
        self.outputs[name] = outputs
        result = TaskResult(name, kind, round(time.monotonic() - started, 1), outputs)
        self.results.append(result)
        return result

    def _upstream(self, ref: Dict[str, str]) -> List[Dict[str, Any]]:
        return self.outputs[ref["producerTask"]].get(ref["outputArtifactKey"], [])

    def _resolve(self, resolver: Dict[str, Any], inputs: Dict[str, List[Dict[str, Any]]]):
        outputs = {}
        for key, query in resolver["outputArtifactQueries"].items():
            filter_ = query["filter"]
            missing = False
            for input_key, field in _INPUT_METADATA.findall(filter_):
                # An empty upstream (no blessed model yet) leaves nothing to look up: no output.
                value = inputs[input_key][0]["metadata"].get(field) if inputs.get(input_key) else None
                missing = missing or value is None
                filter_ = filter_.replace(f"{{{{$.inputs.artifacts['{input_key}'].metadata['{field}']}}}}",
                                          str(value))
            outputs[key] = [] if missing else self.registry.query(filter_)
        return outputs

    def _execute(self, name: str, task: Dict[str, Any], component: Dict[str, Any], container: Dict[str, Any],
                 inputs: Dict[str, List[Dict[str, Any]]]):
        task_root = self.root / self.run_id / name
        task_root.mkdir(parents=True, exist_ok=True)
        output_file = task_root / "executor_output.json"
        input_types = component.get("inputDefinitions", {}).get("artifacts", {})
        output_types = component.get("outputDefinitions", {}).get("artifacts", {})
        executor_input = {
            "inputs": {
                "parameterValues": {key: _constant(name, key, ref)
                                    for key, ref in task.get("inputs", {}).get("parameters", {}).items()},
                "artifacts": {key: {"artifacts": [dict(a, type=input_types[key]["artifactType"]) for a in found]}
                              for key, found in inputs.items() if found},
            },
            "outputs": {
                "artifacts": {key: {"artifacts": [{
                    "name": f"{self.run_id}/{name}/{key}", "uri": str(task_root / key),
                    "type": definition["artifactType"], "metadata": {}}]}
                    for key, definition in output_types.items()},
                "outputFile": str(output_file),
            },
        }
        # The image's `python` is this interpreter: same packages, and the project on its path.
        command = [self.python if part == "python" else part for part in container.get("command", [])]
        command += [json.dumps(executor_input) if arg == EXECUTOR_INPUT_PLACEHOLDER else arg
                    for arg in container.get("args", [])]
        log = task_root / "task.log"
        with open(log, "w") as stream:
            proc = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=self.env)
        if proc.returncode != 0:
            tail = log.read_text()[-4000:]
            raise TaskFailed(f"task {name} exited with {proc.returncode}; log {log}:\n{tail}")
        written = json.loads(output_file.read_text()).get("artifacts", {})
        outputs = {}
        for key, definition in output_types.items():
            artifact = dict(written[key]["artifacts"][0])
            artifact.setdefault("metadata", {})
            # KFP records outputs in MLMD; downstream tasks and resolvers read them from there.
            self.registry.add(dict(artifact, schemaTitle=_schema_title(definition["artifactType"]),
                                   run=self.run_id, task=name))
            outputs[key] = [artifact]
        return outputs


def _constant(task: str, key: str, ref: Dict[str, Any]) -> Any:
    if "runtimeValue" not in ref:
        raise NotImplementedError(f"task {task}: parameter {key} is not a constant ({sorted(ref)})")
    return ref["runtimeValue"]["constant"]

"""The Trainer's executor on open-source KFP with train.workers > 1: TFX's Trainer executor on a TFJob's replicas.

The same mechanism as on Vertex (kubeflow/replicas.py): the pipeline is built with the Trainer's executor
swapped for this one (`run_on_tfjob`), which starts the replicas through the platform's job API and waits.
Two things differ, because the platforms do:
- outputs: Vertex records the gs:// outputs the replicas write; open-source KFP's launcher uploads a task's
  outputs from its local mirror after the command, so the replicas write to staging and this executor
  copies their outputs into the mirror (kubeflow/staging.py);
- cancelling: TFX's Vertex executor only polls, so a terminated run leaves its CustomJob running; this one
  follows its job by watches and deletes it on SIGTERM.

The job is named after the task's output URIs, so a retried pod of the same task finds its job again
(HTTP 409) and follows it instead of starting a second one. It is deleted when the task is cancelled or
fails before the job finishes; a finished job stays for its pods' logs until ttlSecondsAfterFinished.
The chief's log lines are copied into the task's log as `[chief] ...` as they come.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
from typing import Any, Dict, List, Optional, TextIO

from tfx.dsl.components.base import base_executor
from tfx.types import standard_component_specs
from tfx.utils import json_utils

from kubeflow import entrypoint, replicas, staging, tfjob, tfjob_client
from kubeflow.resources import Resources

# The Trainer's custom_config key that carries the TFJob's settings to this executor.
SETTINGS_KEY = "petseg_tfjob"
# Lines the chief may still print after the operator reports the job finished.
LOG_DRAIN_SECONDS = 30


class Cancelled(BaseException):
    """SIGTERM: the run was terminated. A BaseException, so no `except Exception` swallows it."""


def run_on_tfjob(trainer, *, image: str, workers: int, resources: Resources) -> None:
    """Makes an already-built Trainer run as a TFJob of `workers` replicas, each with `resources`."""
    resources.checked()  # refuses bad values now
    replicas.run_trainer_with(
        trainer, Executor, {SETTINGS_KEY: {"image": image, "workers": workers, **dataclasses.asdict(resources)}}
    )


def _settings(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    custom_config = json_utils.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null") or {}
    if SETTINGS_KEY not in custom_config:
        raise ValueError(f"the Trainer's custom_config has no {SETTINGS_KEY!r}: build it with run_on_tfjob")
    return custom_config


def manifest(
    p: staging.Plan, exec_properties: Dict[str, Any], *, namespace: str, service_account: Optional[str]
) -> Dict[str, Any]:
    """The TFJob for a plan: its replicas get the Trainer's properties without this executor's settings."""
    custom_config = _settings(exec_properties)
    settings = custom_config.pop(SETTINGS_KEY)
    properties = {**exec_properties, standard_component_specs.CUSTOM_CONFIG_KEY: json_utils.dumps(custom_config)}
    return tfjob.build(
        name=p.name,
        namespace=namespace,
        image=settings["image"],
        workers=settings["workers"],
        args=replicas.args(p.inputs, p.outputs, properties),
        resources=Resources(**{f.name: settings[f.name] for f in dataclasses.fields(Resources)}),
        service_account=service_account,
        annotations={tfjob.TASK_ANNOTATION: p.name},
    )


class Executor(base_executor.BaseExecutor):
    """Starts the Trainer's replicas as a TFJob, follows it to the end and hands their outputs to the launcher."""

    def Do(self, input_dict: Dict[str, List], output_dict: Dict[str, List], exec_properties: Dict[str, Any]) -> None:
        p = staging.plan(input_dict, output_dict, entrypoint.active_mirror())
        try:
            with cancel_on_sigterm():
                run(p, exec_properties, tfjob_client.cluster_client(), tfjob_client.current_namespace())
        except Cancelled:
            print("petseg: the run was cancelled", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGTERM) from None
        staging.collect(p)


def run(
    p: staging.Plan, exec_properties: Dict[str, Any], api_client, namespace: str, out: TextIO = sys.stdout
) -> Dict[str, Any]:
    """Submits the plan's TFJob (or adopts the one an earlier pod of the task created) and follows it to the end."""
    cluster = tfjob_client.Cluster(api_client, namespace, out)
    job = manifest(p, exec_properties, namespace=namespace, service_account=cluster.own_service_account())
    name, counts = p.name, tfjob.replica_counts(job)
    stop = threading.Event()
    follower = threading.Thread(target=cluster.follow_chief, args=(name, stop), name="chief-log", daemon=True)
    final = None
    try:
        cluster.submit(job)
        print(
            f"petseg: TFJob {namespace}/{name}: {counts['Chief']} chief + {counts['Worker']} worker(s); "
            "waiting for it to finish",
            file=out,
            flush=True,
        )
        follower.start()
        final = cluster.wait(name)
    finally:
        if final is None:  # cancelled, or this task broke: no job left holding the replicas' machines
            stop.set()
            cluster.stop_following()
            if cluster.delete(name):  # none when its creation was refused
                print(f"petseg: deleted TFJob {namespace}/{name}", file=out, flush=True)
    stop.set()
    if cluster.streaming.is_set():
        follower.join(LOG_DRAIN_SECONDS)  # the chief's last lines, already on their way
    cluster.stop_following()
    if tfjob.finished(final) == "Failed":
        failed = tfjob.condition(final, "Failed")
        raise tfjob_client.TaskFailed(
            f"TFJob {namespace}/{name} failed: {failed.get('reason', '')}: {failed.get('message', '')}"
        )
    print(f"petseg: TFJob {namespace}/{name} succeeded", file=out, flush=True)
    return final


@contextlib.contextmanager
def cancel_on_sigterm():
    """Turns SIGTERM (a terminated run) into Cancelled in the main thread, so `run` deletes its job."""

    def cancel(signum, frame):
        raise Cancelled()

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

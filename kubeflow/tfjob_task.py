"""The Trainer task on open-source KFP when train.workers > 1: runs the Trainer as a TFJob and hands its output to the launcher.

How the chief's executor output reaches the launcher's pod
----------------------------------------------------------
This task runs in the pod KFP's launcher started, with the Trainer's ExecutorInput (the same arguments
`kubeflow.entrypoint` gets). The launcher downloads the inputs into its local mirror (/gcs/...) before
the command, and after it uploads each output from the mirror path of its URI and records the URIs
and metadata it finds in /tmp/kfp_outputs/output_metadata.json. The replicas run in other pods, which
see neither that mirror nor that file, so:

1. The task hands the replicas an ExecutorInput they can run as Vertex-shaped input (which
   `kubeflow.entrypoint` passes to TFX unchanged): input types filled from the task's input spec,
   the launcher's own outputs (`executor-logs`) left out, input URIs as they are (gs://, read by
   TensorFlow directly), and each output URI moved to a staging URI beside it
   (`<task dir>/tfjob-staging/<key>`), with the executor output file there too
   (`<task dir>/tfjob-staging/executor_output.json`).
2. The TFJob runs TFX's Trainer executor on every replica; the chief writes the model, the run's logs
   and the executor output under the staging URIs (the run_fn decides what the other replicas write).
3. When the job has Succeeded, the task copies each staged output into the launcher's mirror path of
   its real URI, writes the chief's executor output to the launcher's output file with every staging
   URI mapped back to the real one, and deletes the staging folder. The launcher then uploads and
   records the outputs exactly as for a single-pod task.

Why staging rather than the real URIs: the launcher uploads every output from its mirror after the
command, and a folder TensorFlow wrote to GCS itself carries zero-byte "dir/" marker objects that
break the launcher's later downloads of that artifact (kubeflow/pipelines#13476); the copy costs one
transfer of the model, small next to the training. The task pod's own downloads of the inputs are
unused (the launcher makes them before any command runs).

The replicas must reach the artifacts themselves: gs:// works with TensorFlow. minio:// and s3:// do
not (TensorFlow has no such filesystem without tensorflow-io's S3 plugin in the image and credentials
and an endpoint in every replica; a ReadWriteMany volume mounted at one path in the task pod and every
replica would be the other way), so `petseg kubeflow compile` refuses them with train.workers > 1 and
this task refuses them again at run time (a run can be submitted with another pipeline root).

The job is named after the task's output URIs, so a retried pod of the same task finds its job again
(HTTP 409) and follows it instead of starting a second one. It is deleted when this task is cancelled
(SIGTERM) or fails before the job finishes; a finished job stays for its pods' logs until
ttlSecondsAfterFinished. The chief's log lines are copied into this task's log as they come.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import posixpath
import signal
import socket
import sys
import threading
from typing import Any, Dict, Iterator, List, Optional, TextIO, Tuple

from kubeflow import entrypoint, tfjob

# The compiled Trainer task's command with train.workers > 1 (see compile_into).
TASK_COMMAND = ("python", "-m", "kubeflow.tfjob_task")
STAGING = "tfjob-staging"
STAGED_OUTPUT_FILE = "executor_output.json"
# Schemes the replicas cannot open (see the module docstring).
UNREACHABLE = ("minio://", "s3://")
# Set to the job's name by the task that creates it, so a retried pod adopts only a job of its own.
TASK_ANNOTATION = "petseg/trainer-task"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
NAME_PREFIX = "petseg-trainer-"
# Lines the chief may still print after the operator reports the job finished.
LOG_DRAIN_SECONDS = 30


class TaskFailed(RuntimeError):
    """The TFJob failed or cannot run; the message says why (the job's reason and message when it ran)."""


class Cancelled(BaseException):
    """SIGTERM: the run was terminated. A BaseException, so no `except Exception` swallows it."""


@dataclasses.dataclass
class Plan:
    """What the replicas get and how their output goes back to the launcher."""

    replica_input: Dict[str, Any]
    # output key -> (staging URI, real URI)
    outputs: Dict[str, Tuple[str, str]]
    staged_output_file: str
    output_file: str
    mirror: Optional[entrypoint.Mirror]

    def real(self, value: str) -> str:
        """`value` with any staging URI in it replaced by its real one."""
        for staged, real in self.outputs.values():
            if value == staged or value.startswith(staged + "/"):
                return real + value[len(staged):]
        return value

    @property
    def staging_dirs(self) -> List[str]:
        return sorted({posixpath.dirname(staged) for staged, _ in self.outputs.values()})


def staging_uri(uri: str) -> str:
    parent, key = posixpath.split(uri.rstrip("/"))
    return posixpath.join(parent, STAGING, key)


def refuse_unreachable(executor_input: Dict[str, Any]) -> None:
    for side in ("inputs", "outputs"):
        for key, artifact_list in executor_input.get(side, {}).get("artifacts", {}).items():
            for artifact in artifact_list.get("artifacts", []):
                if artifact.get("uri", "").startswith(UNREACHABLE):
                    raise TaskFailed(
                        f"{side[:-1]} artifact {key!r} is at {artifact['uri']}: the TFJob's replicas read and write "
                        "artifacts themselves and TensorFlow cannot open minio:// or s3:// URIs; run with a gs:// "
                        "pipeline root, or train.workers=1")


def plan(executor_input: Dict[str, Any], inputs_spec: Dict[str, Any], mirror_root: str = "/") -> Plan:
    """The replicas' ExecutorInput and the way back, from the task's own ExecutorInput."""
    refuse_unreachable(executor_input)
    replica_input = copy.deepcopy(executor_input)
    mirror = entrypoint.Mirror(mirror_root) if entrypoint.from_open_source_launcher(executor_input) else None
    if mirror is not None:
        entrypoint.fill_types(replica_input, inputs_spec)
        entrypoint.drop_launcher_outputs(replica_input)
    outputs = {}
    for key, artifact_list in replica_input["outputs"].get("artifacts", {}).items():
        for artifact in artifact_list.get("artifacts", []):
            real = artifact["uri"]
            artifact["uri"] = staging_uri(real)
            outputs[key] = (artifact["uri"], real)
    if not outputs:
        raise TaskFailed("the Trainer task has no output artifacts to stage")
    staged_dir = sorted(posixpath.dirname(staged) for staged, _ in outputs.values())[0]
    staged_output_file = posixpath.join(staged_dir, STAGED_OUTPUT_FILE)
    replica_input["outputs"]["outputFile"] = staged_output_file
    return Plan(replica_input, outputs, staged_output_file, executor_input["outputs"]["outputFile"], mirror)


def job_name(executor_input: Dict[str, Any]) -> str:
    """Stable per task execution: its output URIs are unique to it."""
    uris = sorted(a["uri"] for artifact_list in executor_input["outputs"].get("artifacts", {}).values()
                  for a in artifact_list.get("artifacts", []))
    return NAME_PREFIX + hashlib.sha256("\n".join(uris).encode()).hexdigest()[:12]


def collect(p: Plan) -> Dict[str, Any]:
    """Copies the staged outputs to where the launcher uploads them from; writes its output file."""
    import tensorflow as tf

    if not tf.io.gfile.exists(p.staged_output_file):
        raise TaskFailed(f"the TFJob succeeded but its chief wrote no executor output at {p.staged_output_file}")
    for staged, real in p.outputs.values():
        if tf.io.gfile.exists(staged):
            _copy_tree(tf, staged, p.mirror.local(real) if p.mirror else real)
    with tf.io.gfile.GFile(p.staged_output_file) as stream:
        output = json.load(stream)
    for artifact_list in output.get("artifacts", {}).values():
        for artifact in artifact_list.get("artifacts", []):
            if "uri" in artifact:
                artifact["uri"] = p.real(artifact["uri"])
            metadata = artifact.get("metadata") or {}
            for key, value in metadata.items():
                if isinstance(value, str):
                    metadata[key] = p.real(value)
    tf.io.gfile.makedirs(posixpath.dirname(p.output_file))
    with tf.io.gfile.GFile(p.output_file, "w") as stream:
        json.dump(output, stream)
    for staging in p.staging_dirs:
        tf.io.gfile.rmtree(staging)
    return output


def _copy_tree(tf, source: str, target: str) -> None:
    if not tf.io.gfile.isdir(source):
        tf.io.gfile.makedirs(posixpath.dirname(target))
        tf.io.gfile.copy(source, target, overwrite=True)
        return
    for folder, _, files in tf.io.gfile.walk(source):
        relative = folder[len(source):].lstrip("/")
        destination = posixpath.join(target, relative) if relative else target
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(posixpath.join(folder, name), posixpath.join(destination, name), overwrite=True)


class Cluster:
    """The Kubernetes calls of the task: the TFJob, its chief's pod and log, the task's own pod."""

    def __init__(self, api_client, namespace: str, out: TextIO = sys.stdout):
        from kubernetes import client

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.out = out
        # Set while the chief's log is being copied, so the task waits for its last lines, and only then.
        self.streaming = threading.Event()

    def own_service_account(self) -> Optional[str]:
        """The task pod's service account, which the replicas take for the same bucket rights (None outside a pod)."""
        from kubernetes.client.rest import ApiException

        try:  # a pod's host name is its name
            return self.core.read_namespaced_pod(socket.gethostname(), self.namespace).spec.service_account_name
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def submit(self, job: Dict[str, Any]) -> Dict[str, Any]:
        """Creates the job, or adopts the one a previous pod of this task created."""
        from kubernetes.client.rest import ApiException

        name = job["metadata"]["name"]
        try:
            return self._create_strictly(job)
        except ApiException as exc:
            if exc.status != 409:
                raise TaskFailed(f"creating TFJob {self.namespace}/{name}: {_api_message(exc)}") from None
        existing = self.custom.get_namespaced_custom_object(
            tfjob.GROUP, tfjob.VERSION, self.namespace, tfjob.PLURAL, name)
        mine = job["metadata"]["annotations"][TASK_ANNOTATION]
        if (existing["metadata"].get("annotations") or {}).get(TASK_ANNOTATION) != mine:
            raise TaskFailed(f"TFJob {self.namespace}/{name} exists and was not created by this task; "
                             f"delete it (kubectl delete tfjob -n {self.namespace} {name}) or rename it")
        print(f"petseg: following TFJob {self.namespace}/{name}, created by an earlier attempt of this task",
              file=self.out, flush=True)
        return existing

    def _create_strictly(self, job: Dict[str, Any]) -> Dict[str, Any]:
        """POST with fieldValidation=Strict: the server refuses unknown and duplicate fields rather than dropping
        them (the kubernetes 26.1 client's create_namespaced_custom_object cannot ask for it)."""
        return self.api_client.call_api(
            f"/apis/{tfjob.GROUP}/{tfjob.VERSION}/namespaces/{self.namespace}/{tfjob.PLURAL}", "POST",
            query_params=[("fieldValidation", "Strict")], body=job,
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            auth_settings=["BearerToken"], response_type="object", _return_http_data_only=True)

    def _selector(self, name: str) -> str:
        return f"metadata.name={name}"

    def wait(self, name: str) -> Dict[str, Any]:
        """Blocks until the job Succeeded or Failed (list, then watch from there; relist when the watch expires)."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        args = (tfjob.GROUP, tfjob.VERSION, self.namespace, tfjob.PLURAL)
        while True:
            listing = self.custom.list_namespaced_custom_object(*args, field_selector=self._selector(name))
            if not listing.get("items"):
                raise TaskFailed(f"TFJob {self.namespace}/{name} is gone: deleted by someone else")
            job = listing["items"][0]
            if tfjob.finished(job):
                return job
            try:
                for event in watch.Watch().stream(
                        self.custom.list_namespaced_custom_object, *args, field_selector=self._selector(name),
                        resource_version=listing["metadata"]["resourceVersion"]):
                    if event["type"] == "DELETED":
                        raise TaskFailed(f"TFJob {self.namespace}/{name} was deleted before it finished")
                    if tfjob.finished(event["object"]):
                        return event["object"]
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the watch's resource version expired; list again
                    raise

    def delete(self, name: str) -> bool:
        """Deletes the job (its pods and services go with it: owner references); False if there was none."""
        from kubernetes.client.rest import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                tfjob.GROUP, tfjob.VERSION, self.namespace, tfjob.PLURAL, name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True

    def _pod_events(self, pod: str) -> Iterator[Any]:
        """The pod's state now, then each change (list, then watch from there)."""
        from kubernetes import watch

        listing = self.core.list_namespaced_pod(self.namespace, field_selector=self._selector(pod))
        for item in listing.items:
            yield item
        for event in watch.Watch().stream(self.core.list_namespaced_pod, self.namespace,
                                          field_selector=self._selector(pod),
                                          resource_version=listing.metadata.resource_version):
            if event["type"] != "DELETED":
                yield event["object"]

    def follow_chief(self, job: str, stop: threading.Event) -> None:
        """Copies the chief's log lines, `[chief] ...`, into this task's log, again after each restart."""
        pod = tfjob.chief_pod(job)
        shown_restarts = -1
        try:
            while not stop.is_set():
                status = None
                for state in self._pod_events(pod):
                    if stop.is_set():
                        return
                    found = _container_status(state)
                    if found is not None and (found.state.running or found.state.terminated) \
                            and found.restart_count > shown_restarts:
                        status = found
                        break
                if status is None:
                    return
                shown_restarts = status.restart_count
                self._stream_log(pod)
                if status.state.terminated and status.state.terminated.exit_code == 0:
                    return  # the chief is done; nothing restarts it
        except Exception as exc:  # the log is a courtesy: the job's outcome decides the task's
            if not stop.is_set():
                print(f"petseg: stopped following {pod}'s log: {exc}", file=self.out, flush=True)

    def _stream_log(self, pod: str) -> None:
        """Prints the container's lines until it ends (its log stream closes then)."""
        self.streaming.set()  # before the request, so a job that ends meanwhile still waits for these lines
        try:
            response = self.core.read_namespaced_pod_log(pod, self.namespace, container=tfjob.CONTAINER,
                                                         follow=True, _preload_content=False)
        except BaseException:
            self.streaming.clear()
            raise
        self._log_response = response
        try:
            pending = b""
            for chunk in response.stream(amt=None, decode_content=False):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    print(f"[chief] {line.decode('utf-8', 'replace')}", file=self.out, flush=True)
            if pending:
                print(f"[chief] {pending.decode('utf-8', 'replace')}", file=self.out, flush=True)
        finally:
            self.streaming.clear()
            response.release_conn()

    def stop_following(self) -> None:
        """Ends a log stream the follower thread may be blocked reading.

        Not `response.close()`: closing the buffered socket file waits for the reader's lock, which the
        blocked read holds until the server sends more. Shutting the socket down ends that read at once.
        """
        response = getattr(self, "_log_response", None)
        sock = getattr(response.connection, "sock", None) if response is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the reader


def _container_status(pod) -> Any:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if status.name == tfjob.CONTAINER:
            return status
    return None


def _api_message(exc) -> str:
    try:
        return json.loads(exc.body).get("message") or str(exc)
    except (TypeError, ValueError):
        return str(exc)


def _parse(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(prog="python -m kubeflow.tfjob_task", add_help=False)
    parser.add_argument("--tfjob", required=True,
                        help="JSON: image, workers, and per-replica cpu, memory_gb, gpus, gpu_type")
    parser.add_argument("--kfp_local_root", default="/")
    parser.add_argument("--json_serialized_invocation_args", required=True)
    parser.add_argument("--json_serialized_inputs_spec_args", default="")
    return parser.parse_known_args(argv)


def task_args(settings: Dict[str, Any]) -> List[str]:
    """The flag the compiled Trainer task carries for this module, ahead of TFX's executor arguments."""
    return ["--tfjob", json.dumps(settings, sort_keys=True)]


def compile_into(spec: Dict[str, Any], task: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """Makes `task` of a compiled PipelineSpec run this module instead of the entrypoint; returns its container."""
    _resources(settings).requirements()  # refuses bad values now
    label = spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]]["executorLabel"]
    container = spec["deploymentSpec"]["executors"][label]["container"]
    if container["command"] != list(tfjob.ENTRYPOINT_COMMAND):
        raise ValueError(f"task {task} runs {container['command']}, not {list(tfjob.ENTRYPOINT_COMMAND)}")
    container["command"] = list(TASK_COMMAND)
    container["args"] = task_args(settings) + container.get("args", [])
    return container


def _resources(settings: Dict[str, Any]) -> tfjob.Resources:
    return tfjob.Resources(cpu=settings.get("cpu"), memory_gb=settings.get("memory_gb"),
                           gpus=settings.get("gpus") or 0, gpu_type=settings.get("gpu_type") or tfjob.GPU_TYPE)


def _task(argv: List[str]) -> Tuple[argparse.Namespace, List[str], Dict[str, Any], Plan]:
    """The task's own flags, the rest (Beam args), its ExecutorInput and the plan for the replicas."""
    ours, rest = _parse(argv)
    executor_input = json.loads(ours.json_serialized_invocation_args)
    inputs_spec = json.loads(ours.json_serialized_inputs_spec_args or "{}")
    return ours, rest, executor_input, plan(executor_input, inputs_spec, ours.kfp_local_root)


def manifest(argv: List[str], *, name: str, namespace: str, service_account: Optional[str],
             annotations: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The TFJob for a task started with `argv`, as `run` submits it."""
    ours, rest, _, p = _task(argv)
    return _manifest(ours, rest, p, name=name, namespace=namespace, service_account=service_account,
                     annotations=annotations)


def _manifest(ours: argparse.Namespace, rest: List[str], p: Plan, *, name: str, namespace: str,
              service_account: Optional[str], annotations: Optional[Dict[str, str]]) -> Dict[str, Any]:
    settings = json.loads(ours.tfjob)
    args = ["--json_serialized_invocation_args", json.dumps(p.replica_input)]
    if ours.json_serialized_inputs_spec_args:
        args += ["--json_serialized_inputs_spec_args", ours.json_serialized_inputs_spec_args]
    return tfjob.build(name=name, namespace=namespace, image=settings["image"], workers=settings["workers"],
                       args=args + rest, resources=_resources(settings), service_account=service_account,
                       annotations=annotations)


# What `review_manifest` shows where the task fills in run-time values.
PLACEHOLDER_NAME = "petseg-trainer"
PLACEHOLDER_ARGS = (
    "--json_serialized_invocation_args",
    "<EXECUTOR_INPUT: the Trainer task's ExecutorInput, its outputs moved under <task dir>/tfjob-staging/; "
    "set by the task at run time>",
    "--json_serialized_inputs_spec_args",
    "<INPUTS_SPEC: the Trainer's input spec, from the compiled pipeline>",
    "<BEAM_ARGS: the compiled pipeline's Beam args, if any>",
)


def review_manifest(*, image: str, workers: int, resources: tfjob.Resources, namespace: str,
                    service_account: Optional[str], name: str = PLACEHOLDER_NAME) -> Dict[str, Any]:
    """The TFJob the task submits, with placeholders for what only a run knows (its name and arguments)."""
    # At run time the name is NAME_PREFIX + 12 hex digits of the task's output URIs.
    return tfjob.build(name=name, namespace=namespace, image=image, workers=workers, args=PLACEHOLDER_ARGS,
                       resources=resources, service_account=service_account, annotations={TASK_ANNOTATION: name})


def run(argv: List[str], api_client, namespace: str, out: TextIO = sys.stdout) -> Dict[str, Any]:
    """Submits the TFJob for this task, follows it to the end and hands its output to the launcher."""
    ours, rest, executor_input, p = _task(argv)
    cluster = Cluster(api_client, namespace, out)
    name = job_name(executor_input)
    job = _manifest(ours, rest, p, name=name, namespace=namespace, service_account=cluster.own_service_account(),
                    annotations={TASK_ANNOTATION: name})
    counts = tfjob.replica_counts(job)
    stop = threading.Event()
    follower = threading.Thread(target=cluster.follow_chief, args=(name, stop), name="chief-log", daemon=True)
    final = None
    try:
        cluster.submit(job)
        print(f"petseg: TFJob {namespace}/{name}: {counts['Chief']} chief + {counts['Worker']} worker(s); "
              "waiting for it to finish", file=out, flush=True)
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
        raise TaskFailed(f"TFJob {namespace}/{name} failed: {failed.get('reason', '')}: {failed.get('message', '')}")
    print(f"petseg: TFJob {namespace}/{name} succeeded", file=out, flush=True)
    return collect(p)


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


def cluster_client():
    """The Kubernetes client for this pod's service account (in a cluster), else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def current_namespace() -> str:
    """The task pod's namespace (its service account's), else the kubeconfig context's."""
    if os.path.exists(IN_CLUSTER_NAMESPACE):
        with open(IN_CLUSTER_NAMESPACE) as stream:
            return stream.read().strip()
    from kubernetes import config

    _, context = config.list_kube_config_contexts()
    return context.get("context", {}).get("namespace") or "default"


def main(argv: List[str]) -> int:
    try:
        with cancel_on_sigterm():
            run(argv, cluster_client(), current_namespace())
    except Cancelled:
        print("petseg: the run was cancelled", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (TaskFailed, tfjob.TFJobError) as exc:
        print(f"petseg: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

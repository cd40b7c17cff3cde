"""The Trainer task's Kubernetes calls: create its TFJob strictly, follow it by watches, stream its chief's log,
delete it.

Ours rather than kubeflow-training's TrainingClient: the SDK turns every API error into
RuntimeError("Failed to ...") (the task needs the server's 403 and 409), sends no fieldValidation, and
waits and follows logs by polling.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import Any, Dict, Iterator, Optional, TextIO

from kubeflow import tfjob

IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class TaskFailed(RuntimeError):
    """The TFJob failed or cannot run; the message says why (the server's or the operator's words)."""


class Cluster:
    """The task's view of the cluster: its TFJob, the job's chief pod and log, the task's own pod."""

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
            tfjob.GROUP, tfjob.VERSION, self.namespace, tfjob.PLURAL, name
        )
        mine = job["metadata"]["annotations"][tfjob.TASK_ANNOTATION]
        if (existing["metadata"].get("annotations") or {}).get(tfjob.TASK_ANNOTATION) != mine:
            raise TaskFailed(
                f"TFJob {self.namespace}/{name} exists and was not created by this task; "
                f"delete it (kubectl delete tfjob -n {self.namespace} {name}) or rename it"
            )
        print(
            f"petseg: following TFJob {self.namespace}/{name}, created by an earlier attempt of this task",
            file=self.out,
            flush=True,
        )
        return existing

    def _create_strictly(self, job: Dict[str, Any]) -> Dict[str, Any]:
        """POST with fieldValidation=Strict: the server refuses unknown and duplicate fields rather than dropping
        them (the kubernetes 26.1 client's create_namespaced_custom_object cannot ask for it)."""
        return self.api_client.call_api(
            f"/apis/{tfjob.GROUP}/{tfjob.VERSION}/namespaces/{self.namespace}/{tfjob.PLURAL}",
            "POST",
            query_params=[("fieldValidation", "Strict")],
            body=job,
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            auth_settings=["BearerToken"],
            response_type="object",
            _return_http_data_only=True,
        )

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
                    self.custom.list_namespaced_custom_object,
                    *args,
                    field_selector=self._selector(name),
                    resource_version=listing["metadata"]["resourceVersion"],
                ):
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
                tfjob.GROUP, tfjob.VERSION, self.namespace, tfjob.PLURAL, name, propagation_policy="Background"
            )
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
        for event in watch.Watch().stream(
            self.core.list_namespaced_pod,
            self.namespace,
            field_selector=self._selector(pod),
            resource_version=listing.metadata.resource_version,
        ):
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
                    if (
                        found is not None
                        and (found.state.running or found.state.terminated)
                        and found.restart_count > shown_restarts
                    ):
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
            response = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=tfjob.CONTAINER, follow=True, _preload_content=False
            )
        except BaseException:
            self.streaming.clear()
            raise
        self._log_response = response
        try:
            for line in log_lines(response):
                print(f"[chief] {line}", file=self.out, flush=True)
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


def log_lines(response) -> Iterator[str]:
    """The lines of a followed pods/log response as they arrive (the last one even without a newline)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


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

"""A loopback HTTP server that answers the Kubernetes API calls of the TFJob task like an API server, and records them."""

# It keeps TFJobs and pods in memory with resource versions, answers create / get / list / watch /
# delete as the API server does (JSON objects, Status bodies with the HTTP code on errors, a watch as
# a stream of {"type", "object"} lines starting after the given resourceVersion, `fieldSelector`
# metadata.name), and follows a pod's log line by line. The test plays the operator: it changes a
# job's conditions and the chief pod's state, and writes the chief's log lines. Each request is
# recorded with the RBAC verb and resource it needs.

from __future__ import annotations

import copy
import http.server
import json
import threading
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple

TFJOBS = "/apis/kubeflow.org/v1/namespaces/"
PODS = "/api/v1/namespaces/"


class KubeApi(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.changed = threading.Condition()
        self.resource_version = 0
        self.objects: Dict[Tuple[str, str, str], Dict[str, Any]] = {}  # (resource, namespace, name) -> object
        self.events: List[Tuple[int, str, str, str, Dict[str, Any]]] = []  # (rv, resource, ns, type, object)
        self.logs: Dict[Tuple[str, str], List[Optional[str]]] = {}  # None ends the current container's log
        self.requests: List[Dict[str, Any]] = []
        self.closing = False
        self.pod_defaults: Dict[str, Any] = {"serviceAccountName": "pipeline-runner"}
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "KubeApi":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.shutdown()
        self.server_close()

    def client(self):
        """A real kubernetes ApiClient pointed at this server."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def kubeconfig(self, path, namespace: str) -> str:
        """A kubeconfig file for this server, as `kubectl` and the client's load_kube_config read it."""
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "loopback",
                  "clusters": [{"name": "loopback", "cluster": {"server": self.url}}],
                  "users": [{"name": "task", "user": {"token": "loopback-token"}}],
                  "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "task",
                                                                "namespace": namespace}}]}
        path.write_text(json.dumps(config))
        return str(path)

    # The test's side: the operator and the kubelet.

    def put(self, resource: str, namespace: str, obj: Dict[str, Any], kind: str = "MODIFIED") -> Dict[str, Any]:
        with self.changed:
            self.resource_version += 1
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {})["resourceVersion"] = str(self.resource_version)
            key = (resource, namespace, obj["metadata"]["name"])
            if kind == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self.events.append((self.resource_version, resource, namespace, kind, obj))
            self.changed.notify_all()
            return copy.deepcopy(obj)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60) -> Any:
        """Blocks until predicate() is true (re-checked on every change and request); returns its value."""
        with self.changed:
            value = self.changed.wait_for(predicate, timeout)
        assert value, f"not seen within {timeout} s: {predicate}"
        return value

    def job(self, namespace: str, name: Optional[str] = None) -> Optional[Dict[str, Any]]:
        found = [o for (r, ns, n), o in self.objects.items() if r == "tfjobs" and ns == namespace
                 and (name is None or n == name)]
        return copy.deepcopy(found[0]) if found else None

    def set_condition(self, namespace: str, name: str, kind: str, reason: str, message: str) -> None:
        job = self.job(namespace, name)
        conditions = [c for c in job.get("status", {}).get("conditions", []) if c["type"] != kind]
        conditions.append({"type": kind, "status": "True", "reason": reason, "message": message})
        job["status"] = {"conditions": conditions}
        self.put("tfjobs", namespace, job)

    def set_container(self, namespace: str, pod: str, state: Dict[str, Any], restart_count: int = 0) -> None:
        """The pod's `tensorflow` container in this state (e.g. {"running": {}})."""
        phase = "Running" if "running" in state else ("Succeeded" if state.get("terminated", {}).get("exitCode") == 0
                                                      else "Running")
        self.put("pods", namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": namespace},
            "spec": {"containers": [{"name": "tensorflow", "image": "x"}]},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "tensorflow", "ready": "running" in state, "restartCount": restart_count, "image": "x",
                "imageID": "", "state": state}]}})

    def log(self, namespace: str, pod: str, *lines: Optional[str]) -> None:
        """Appends lines to the pod's log; None ends the container's log stream."""
        with self.changed:
            self.logs.setdefault((namespace, pod), []).extend(lines)
            self.changed.notify_all()

    def verbs(self) -> set:
        """(apiGroup, resource, verb) of every request made, as RBAC sees them."""
        return {(r["group"], r["resource"], r["verb"]) for r in self.requests}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: KubeApi
    # Chunked streams, as the API server sends watches and followed logs: a client reads each chunk
    # as it comes (a body that ends only at close would be read whole, at the end).
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _route(self) -> Tuple[str, str, str, Optional[str], Optional[str], Dict[str, str]]:
        url = urllib.parse.urlparse(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path.startswith(TFJOBS):
            group, rest = "kubeflow.org", url.path[len(TFJOBS):].split("/")
            namespace, resource, name, sub = rest[0], rest[1], (rest[2:3] or [None])[0], (rest[3:4] or [None])[0]
        elif url.path.startswith(PODS):
            group, rest = "", url.path[len(PODS):].split("/")
            namespace, resource, name, sub = rest[0], rest[1], (rest[2:3] or [None])[0], (rest[3:4] or [None])[0]
        else:
            raise KeyError(url.path)
        selector = query.get("fieldSelector", "")
        if selector.startswith("metadata.name="):
            query["name"] = selector[len("metadata.name="):]
        return group, namespace, resource, name, sub, query

    def _record(self, group, resource, name, sub, query, body=None) -> str:
        watching = query.get("watch", "").lower() in ("true", "1")
        verb = {"POST": "create", "DELETE": "delete"}.get(self.command) or (
            "watch" if watching else "get" if name else "list")
        with self.server.changed:
            self.server.requests.append({"method": self.command, "path": self.path, "group": group,
                                         "resource": resource + (f"/{sub}" if sub else ""), "verb": verb,
                                         "query": query, "body": body,
                                         "authorization": self.headers.get("Authorization")})
            self.server.changed.notify_all()
        return verb

    def _reply(self, code: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._reply(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "reason": reason, "code": code})

    def do_POST(self):
        group, namespace, resource, _, sub, query = self._route()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._record(group, resource, None, sub, query, body)
        name = body["metadata"]["name"]
        if (resource, namespace, name) in self.server.objects:
            return self._status(409, "AlreadyExists", f'{resource}.{group} "{name}" already exists')
        body["metadata"].setdefault("namespace", namespace)
        body["metadata"]["uid"] = f"uid-{name}"
        self._reply(201, self.server.put(resource, namespace, body, "ADDED"))

    def do_DELETE(self):
        group, namespace, resource, name, sub, query = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        self._record(group, resource, name, sub, query, json.loads(self.rfile.read(length)) if length else None)
        existing = self.server.objects.get((resource, namespace, name))
        if existing is None:
            return self._status(404, "NotFound", f'{resource}.{group} "{name}" not found')
        self.server.put(resource, namespace, existing, "DELETED")
        self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                          "details": {"name": name, "group": group, "kind": resource}})

    def do_GET(self):
        group, namespace, resource, name, sub, query = self._route()
        verb = self._record(group, resource, name, sub, query)
        if sub == "log":
            return self._follow_log(namespace, name)
        if verb == "watch":
            return self._watch(resource, namespace, query)
        if verb == "get":
            obj = self.server.objects.get((resource, namespace, name))
            if obj is None and resource == "pods":  # the task's own pod, as the kubelet runs it
                obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                       "spec": {"containers": [{"name": "main", "image": "x"}], **self.server.pod_defaults}}
            if obj is None:
                return self._status(404, "NotFound", f'{resource}.{group} "{name}" not found')
            return self._reply(200, obj)
        with self.server.changed:
            items = [copy.deepcopy(o) for (r, ns, n), o in self.server.objects.items()
                     if r == resource and ns == namespace and query.get("name") in (None, n)]
            version = str(self.server.resource_version)
        kind = "TFJobList" if resource == "tfjobs" else "PodList"
        self._reply(200, {"apiVersion": "kubeflow.org/v1" if resource == "tfjobs" else "v1", "kind": kind,
                          "metadata": {"resourceVersion": version}, "items": items})

    def _stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> bool:
        """Sends one chunk (b"" ends the stream); False once the client has gone."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _watch(self, resource: str, namespace: str, query: Dict[str, str]) -> None:
        self._stream_start()
        since = int(query.get("resourceVersion") or 0)
        server = self.server
        while True:
            with server.changed:
                server.changed.wait_for(lambda: server.closing or any(
                    e[0] > since for e in server.events))
                if server.closing:
                    self._chunk(b"")
                    return
                fresh = [e for e in server.events if e[0] > since]
            for version, res, ns, kind, obj in fresh:
                since = version
                if res == resource and ns == namespace and query.get("name") in (None, obj["metadata"]["name"]):
                    if not self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n"):
                        return  # the client closed its watch

    def _follow_log(self, namespace: str, pod: str) -> None:
        self._stream_start()
        server = self.server
        sent = 0
        while True:
            with server.changed:
                server.changed.wait_for(lambda: server.closing or len(server.logs.get((namespace, pod), [])) > sent)
                if server.closing:
                    self._chunk(b"")
                    return
                lines = server.logs[(namespace, pod)][sent:]
            for line in lines:
                sent += 1
                if line is None:  # the container ended: its log stream closes; a restart starts a new one
                    with server.changed:
                        server.logs[(namespace, pod)] = server.logs[(namespace, pod)][sent:]
                    self._chunk(b"")
                    return
                if not self._chunk(line.encode() + b"\n"):
                    return

"""The loopback cluster's one node: a kubelet's part, played by the test, and a one-node binder in the scheduler's
place.

The node registers its Node object and authenticates as `system:node:<name>`, so the API server's Node
authorizer and NodeRestriction admission hold it to what a kubelet may do. For each pod bound to it, it:
- makes the pod's sandbox: network, mount and UTS namespaces nested in the cluster's (support/kube_cluster.py),
  a veth on the cluster's bridge with the pod's own address, the pod's name as host name, and an /etc/hosts
  that maps each headless Service to its pods' addresses as cluster DNS would (the operator's TF_CONFIG names
  replicas by Service);
- mounts the API-access volume ServiceAccount admission gave the pod: a TokenRequest token bound to the pod,
  `kube-root-ca.crt`'s CA and the namespace, at its mount path under /var/run (a tmpfs /run of its own);
- runs the one container's command as a local process (the image is this checkout and its virtualenv:
  `python` is the venv's, PYTHONPATH the repository, as kubeflow/Dockerfile sets /app) with the pod's env,
  the downward-API fields it names, and KUBERNETES_SERVICE_HOST/PORT at the API server's endpoint (there is
  no kube-proxy to route the `kubernetes` Service's cluster IP);
- reports phase, container state, exit code, restart count and the previous state as a kubelet does for the
  pod's restartPolicy: OnFailure and Always restart the process in place (same sandbox and address, no
  crash-loop back-off), Never leaves the pod Failed or Succeeded;
- serves the kubelet's `containerLogs` endpoint (follow, previous, tailLines), so `pods/log` goes through the
  API server, and honours graceful deletion: SIGTERM, SIGKILL after the grace period, then the final delete.
Volumes other than the API-access one, init containers, several containers and resource limits are refused
or ignored; no image is pulled.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import pathlib
import shlex
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any, Dict, List, Optional, Tuple

from support import kube_cluster
from support.kube_cluster import BRIDGE_IP, KUBELET_PORT, NODE_NAME, POD_NETWORK_PREFIX, REPO

API_ACCESS_FILES = ("token", "ca.crt", "namespace")
# What kubeflow/Dockerfile's image sets, here pointing at this checkout.
IMAGE_ENV = {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
# Passed from the test's own environment: where programs and the Go/uv caches are, nothing about the job.
HOST_ENV = ("PATH", "LANG", "LC_ALL", "GOCACHE", "GOMODCACHE")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Container:
    """One run of a pod's container: its process and its log (a file, followed through a condition)."""

    def __init__(self, proc: subprocess.Popen, log: pathlib.Path, restart: int):
        self.proc, self.log, self.restart = proc, log, restart
        self.started = _now()
        self.finished: Optional[str] = None
        self.changed = threading.Condition()
        self.size = 0
        self.done = False
        self._reader = threading.Thread(target=self._copy, daemon=True, name=f"log-{log.name}")
        self._reader.start()

    def _copy(self) -> None:
        with open(self.log, "ab") as out:
            for chunk in iter(lambda: self.proc.stdout.read1(1 << 16), b""):
                out.write(chunk)
                out.flush()
                with self.changed:
                    self.size += len(chunk)
                    self.changed.notify_all()
        self.proc.wait()
        with self.changed:
            self.finished = _now()
            self.done = True
            self.changed.notify_all()

    def wait(self) -> int:
        self._reader.join()
        return self.proc.returncode

    @property
    def exit_code(self) -> int:
        code = self.proc.returncode
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a container runtime reports


class Pod:
    """A pod bound to the node: its sandbox, its container runs and what it reports."""

    def __init__(self, node: "Node", pod):
        self.node, self.pod = node, pod
        self.namespace, self.name, self.uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        self.folder = node.state / "pods" / self.uid
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ip = node.network.assign(self.namespace, self.name)
        self.runs: List[Container] = []
        self.sandbox: Optional[subprocess.Popen] = None
        self.deleting = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._live, daemon=True, name=f"pod-{self.name}")
        self.started = _now()

    # -- the pod's life ----------------------------------------------------------------------------

    def _live(self) -> None:
        try:
            spec = self.pod.spec
            if spec.init_containers or len(spec.containers) != 1:
                raise ValueError("this node runs pods of exactly one container and no init containers")
            mounts = self._volumes()
            self._make_sandbox(mounts)
            self.node.network.pod_ready(self.pod, self.ip)
            while True:
                run = self._start_container(len(self.runs))
                run.wait()
                policy = spec.restart_policy
                if self.deleting.is_set() or not (policy == "Always" or (policy == "OnFailure" and run.exit_code)):
                    self._report(terminal=True)
                    break
        except Exception as exc:  # the pod cannot start here: say so in its status, as a kubelet's events would
            self._report_error(exc)
        finally:
            self._stop_sandbox()

    def _volumes(self) -> List[Tuple[pathlib.Path, str]]:
        """(host folder, mount path) of each volume mount; only the projected API-access volume is supported."""
        from kubernetes import client

        spec = self.pod.spec
        volumes = {v.name: v for v in spec.volumes or []}
        mounts = []
        for mount in spec.containers[0].volume_mounts or []:
            volume = volumes[mount.name]
            sources = volume.projected.sources if volume.projected else None
            if not sources or not mount.mount_path.startswith(("/var/run/", "/run/")):
                raise ValueError(
                    f"volume {mount.name} at {mount.mount_path}: this node mounts only the API-access "
                    "volume ServiceAccount admission adds"
                )
            folder = self.folder / "volumes" / mount.name
            folder.mkdir(parents=True, exist_ok=True)
            core = client.CoreV1Api(self.node.api)
            for source in sources:
                if source.service_account_token:
                    request = client.AuthenticationV1TokenRequest(
                        spec=client.V1TokenRequestSpec(
                            audiences=[source.service_account_token.audience]
                            if source.service_account_token.audience
                            else [],
                            expiration_seconds=source.service_account_token.expiration_seconds,
                            bound_object_ref=client.V1BoundObjectReference(
                                kind="Pod", api_version="v1", name=self.name, uid=self.uid
                            ),
                        )
                    )
                    token = core.create_namespaced_service_account_token(
                        spec.service_account_name, self.namespace, request
                    ).status.token
                    (folder / source.service_account_token.path).write_text(token)
                elif source.config_map:
                    data = core.read_namespaced_config_map(source.config_map.name, self.namespace).data or {}
                    for item in source.config_map.items or [client.V1KeyToPath(key=k, path=k) for k in data]:
                        (folder / item.path).write_text(data[item.key])
                elif source.downward_api:
                    for item in source.downward_api.items:
                        (folder / item.path).write_text(self._field(item.field_ref.field_path))
                else:
                    raise ValueError(f"volume {mount.name}: unsupported projection {source}")
            mounts.append((folder, mount.mount_path.replace("/var/run/", "/run/", 1)))
        return mounts

    def _make_sandbox(self, mounts: List[Tuple[pathlib.Path, str]]) -> None:
        """Network, mount and UTS namespaces inside the cluster's, wired to its bridge (kubelet + CNI)."""
        steps = [f"hostname {shlex.quote(self.name)}", "mount -t tmpfs tmpfs /run"]
        for folder, path in mounts:
            steps += [f"mkdir -p {shlex.quote(path)}", f"mount --bind {shlex.quote(str(folder))} {shlex.quote(path)}"]
        steps += [
            f"mount --bind {self.node.network.hosts} /etc/hosts",
            "ip link set lo up",
            "echo ready",
            "read go",
            f"ip addr add {self.ip}/{POD_NETWORK_PREFIX} dev eth0",
            "ip link set eth0 up",
            "echo up",
            "exec cat",
        ]
        self.sandbox = subprocess.Popen(
            self.node.namespaces.command(
                ["unshare", "--net", "--mount", "--uts", "--propagation", "private", "sh", "-c", " && ".join(steps)]
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")
        veth = f"veth{self.ip.rsplit('.', 1)[1]}"
        subprocess.run(
            self.node.namespaces.command(
                [
                    "sh",
                    "-c",
                    " && ".join(
                        [
                            f"ip link add {veth} type veth peer name eth0 netns {self.sandbox.pid}",
                            f"ip link set {veth} master br0",
                            f"ip link set {veth} up",
                        ]
                    ),
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.sandbox.stdin.write("go\n")
        self.sandbox.stdin.flush()
        self._expect("up")

    def _expect(self, word: str) -> None:
        line = self.sandbox.stdout.readline().strip()
        if line != word:
            self.sandbox.kill()
            raise RuntimeError(f"pod {self.name}'s sandbox failed: {self.sandbox.communicate()[1].strip()}")

    def _stop_sandbox(self) -> None:
        if self.sandbox is not None and self.sandbox.poll() is None:
            self.sandbox.stdin.close()
            self.sandbox.wait()

    def _field(self, path: str) -> str:
        """A downward-API field of the pod."""
        pod = self.pod
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": pod.spec.service_account_name or "",
            "status.hostIP": BRIDGE_IP,
            "status.podIP": self.ip,
        }
        if path.startswith("metadata.labels['"):
            return (pod.metadata.labels or {}).get(path[len("metadata.labels['") : -2], "")
        if path.startswith("metadata.annotations['"):
            return (pod.metadata.annotations or {}).get(path[len("metadata.annotations['") : -2], "")
        if path not in values:
            raise ValueError(f"downward API field {path}: not supported by this node")
        return values[path]

    def _env(self, container) -> Dict[str, str]:
        env = {key: os.environ[key] for key in HOST_ENV if key in os.environ}
        env.update(IMAGE_ENV)
        env.update(
            {
                "HOSTNAME": self.name,
                "HOME": str(self.folder / "home"),
                "TMPDIR": str(self.folder / "tmp"),
                "KUBERNETES_SERVICE_HOST": BRIDGE_IP,
                "KUBERNETES_SERVICE_PORT": str(kube_cluster.API_PORT),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(kube_cluster.API_PORT),
            }
        )
        for variable in container.env or []:
            if variable.value_from is None:
                env[variable.name] = variable.value or ""
            elif variable.value_from.field_ref is not None:
                env[variable.name] = self._field(variable.value_from.field_ref.field_path)
            else:
                raise ValueError(f"env {variable.name}: only values and fieldRefs are supported by this node")
        return env

    def _start_container(self, restart: int) -> Container:
        container = self.pod.spec.containers[0]
        command = list(container.command or []) + list(container.args or [])
        if not command or command[0] != "python":
            raise ValueError(f"container {container.name}: this node runs `python ...` commands, got {command[:1]}")
        command[0] = sys.executable
        env = self._env(container)
        for folder in ("home", "tmp"):
            (self.folder / folder).mkdir(exist_ok=True)
        argv = [
            "nsenter",
            f"--target={self.sandbox.pid}",
            "--user",
            "--net",
            "--mount",
            "--uts",
            "--preserve-credentials",
            f"--wd={REPO}",
            *command,
        ]
        with self.lock:
            if self.deleting.is_set():
                raise RuntimeError("deleted before its container started")
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            run = Container(proc, self.folder / f"{container.name}-{restart}.log", restart)
            self.runs.append(run)
        self._report()
        return run

    def kill(self, signum: int) -> None:
        """What the machine does to the container's process (e.g. SIGKILL: it dies)."""
        with self.lock:
            if self.runs and self.runs[-1].proc.poll() is None:
                self.runs[-1].proc.send_signal(signum)

    def delete(self, grace: int) -> None:
        """Graceful deletion: SIGTERM, SIGKILL once the grace period has passed, then the final delete."""
        with self.lock:
            self.deleting.set()
            run = self.runs[-1] if self.runs else None
        if run is not None:
            kube_cluster.terminate(run.proc, grace)
        self.thread.join()
        self.node.finish_deletion(self)

    # -- status ------------------------------------------------------------------------------------

    def _container_status(self, terminal: bool) -> Dict[str, Any]:
        container = self.pod.spec.containers[0]
        run = self.runs[-1]

        def terminated(r: Container) -> Dict[str, Any]:
            return {
                "terminated": {
                    "exitCode": r.exit_code,
                    "reason": "Completed" if r.exit_code == 0 else "Error",
                    "startedAt": r.started,
                    "finishedAt": r.finished,
                    "containerID": f"petseg://{r.proc.pid}",
                }
            }

        running = not terminal
        status = {
            "name": container.name,
            "image": container.image,
            "imageID": "",
            "restartCount": run.restart,
            "containerID": f"petseg://{run.proc.pid}",
            "ready": running,
            "started": running,
            "state": {"running": {"startedAt": run.started}} if running else terminated(run),
            "lastState": terminated(self.runs[-2]) if len(self.runs) > 1 else {},
        }
        return status

    def _report(self, terminal: bool = False) -> None:
        run = self.runs[-1]
        phase = "Running"
        if terminal:
            phase = "Succeeded" if run.exit_code == 0 else "Failed"
        ready = "False" if terminal else "True"
        conditions = [
            {
                "type": kind,
                "status": "True" if kind in ("Initialized", "PodScheduled") else ready,
                "lastTransitionTime": run.started,
            }
            for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ]
        self.node.patch_status(
            self,
            {
                "phase": phase,
                "hostIP": BRIDGE_IP,
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "startTime": self.started,
                "conditions": conditions,
                "containerStatuses": [self._container_status(terminal)],
            },
        )

    def _report_error(self, exc: Exception) -> None:
        container = self.pod.spec.containers[0]
        message = f"{type(exc).__name__}: {exc}"
        self.node.errors.append(f"{self.namespace}/{self.name}: {message}")
        with contextlib.suppress(Exception):
            self.node.patch_status(
                self,
                {
                    "phase": "Failed",
                    "reason": "NodeCannotRun",
                    "message": message,
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image,
                            "imageID": "",
                            "restartCount": 0,
                            "ready": False,
                            "state": {"waiting": {"reason": "CreateContainerError", "message": message}},
                        }
                    ],
                },
            )

    def current(self, previous: bool = False) -> Optional[Container]:
        with self.lock:
            if previous:
                return self.runs[-2] if len(self.runs) > 1 else None
            return self.runs[-1] if self.runs else None


class PodNetwork:
    """Pod addresses on the cluster's bridge, and the /etc/hosts every pod sees: cluster DNS for headless Services."""

    def __init__(self, hosts: pathlib.Path):
        self.hosts = hosts
        hosts.write_text("127.0.0.1 localhost\n")
        self.lock = threading.Lock()
        self.addresses: Dict[Tuple[str, str], str] = {}  # (namespace, pod) -> IP, kept for a pod's name
        self.pods: Dict[Tuple[str, str], Any] = {}
        self.services: Dict[Tuple[str, str], Any] = {}
        self.written: set = set()

    def assign(self, namespace: str, name: str) -> str:
        with self.lock:
            if (namespace, name) not in self.addresses:
                self.addresses[(namespace, name)] = f"{BRIDGE_IP.rsplit('.', 1)[0]}.{len(self.addresses) + 2}"
            return self.addresses[(namespace, name)]

    def pod_ready(self, pod, ip: str) -> None:
        with self.lock:
            self.pods[(pod.metadata.namespace, pod.metadata.name)] = (pod, ip)
            self._write()

    def service(self, event_type: str, service) -> None:
        with self.lock:
            key = (service.metadata.namespace, service.metadata.name)
            if event_type == "DELETED":
                self.services.pop(key, None)
            else:
                self.services[key] = service
            self._write()

    def _write(self) -> None:
        """Appends a line per new (address, name); a name keeps its address, so lines never change."""
        lines = []
        for (namespace, name), (pod, ip) in self.pods.items():
            lines.append((ip, name))
            for (service_namespace, service_name), service in self.services.items():
                selector = service.spec.selector or {}
                if (
                    service_namespace == namespace
                    and service.spec.cluster_ip == "None"
                    and selector
                    and selector.items() <= (pod.metadata.labels or {}).items()
                ):
                    lines.append((ip, f"{service_name}.{namespace}.svc {service_name}.{namespace}.svc.cluster.local"))
        fresh = [line for line in lines if line not in self.written]
        if fresh:
            with open(self.hosts, "a") as out:  # one write: readers see whole lines
                out.write("".join(f"{ip} {names}\n" for ip, names in fresh))
            self.written.update(fresh)


class _KubeletServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The kubelet's HTTPS endpoint on a Unix socket (relayed to KUBELET_PORT inside the cluster), with client certs."""

    daemon_threads = True

    def __init__(self, node: "Node", path: pathlib.Path, context: ssl.SSLContext):
        self.node, self.context = node, context
        super().__init__(str(path), _KubeletHandler)

    def finish_request(self, request, client_address):
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


class _KubeletHandler(BaseHTTPRequestHandler):
    server: _KubeletServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        parts = url.path.strip("/").split("/")
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._fail(404, f"{url.path}: this node serves only /containerLogs")
        _, namespace, name, container = parts
        pod = self.server.node.pod(namespace, name)
        run = pod.current(previous=query.get("previous") == "true") if pod else None
        if pod is None or run is None or pod.pod.spec.containers[0].name != container:
            return self._fail(404, f"container {container} of pod {namespace}/{name} not found on {NODE_NAME}")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with open(run.log, "rb") as stream:
            data = stream.read()
            if "tailLines" in query:
                data = b"".join(data.splitlines(keepends=True)[-int(query["tailLines"]) :])
            if data and not self._chunk(data):
                return
            while query.get("follow") == "true":  # until this run of the container ends
                with run.changed:
                    run.changed.wait_for(lambda: run.size > stream.tell() or run.done)
                    done = run.done
                more = stream.read()
                if more and not self._chunk(more):
                    return
                if done and not more:
                    break
        self._chunk(b"")  # the last chunk: the log stream ends

    def _chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except OSError:
            return False

    def _fail(self, code: int, message: str) -> None:
        body = message.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Node:
    """The node: registers, binds pending pods to itself (the scheduler's part), runs what is bound to it."""

    def __init__(self, cluster: kube_cluster.Cluster):
        self.cluster = cluster
        self.state = cluster.state / "node"
        self.state.mkdir(parents=True, exist_ok=True)
        self.namespaces = cluster.namespaces
        self.api = cluster.client("node")
        self.network = PodNetwork(self.state / "hosts")
        self.pods: Dict[str, Pod] = {}  # uid -> pod
        self.lock = threading.Lock()
        self.errors: List[str] = []
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []

    def start(self) -> "Node":
        from kubernetes import client

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.cluster.pki.ca))
        context.load_cert_chain(*map(str, self.cluster.kubelet_serving))
        context.verify_mode = ssl.CERT_REQUIRED  # the API server's kubelet client certificate
        self.server = _KubeletServer(self, self.cluster.kubelet_socket, context)
        self._thread(self.server.serve_forever, "kubelet-server")
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}
        client.CoreV1Api(self.api).create_node(
            client.V1Node(
                metadata=client.V1ObjectMeta(
                    name=NODE_NAME, labels={"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}
                ),
                status=client.V1NodeStatus(
                    capacity=capacity,
                    allocatable=capacity,
                    addresses=[
                        client.V1NodeAddress(type="InternalIP", address=BRIDGE_IP),
                        client.V1NodeAddress(type="Hostname", address=NODE_NAME),
                    ],
                    daemon_endpoints=client.V1NodeDaemonEndpoints(
                        kubelet_endpoint=client.V1DaemonEndpoint(port=KUBELET_PORT)
                    ),
                    conditions=[
                        client.V1NodeCondition(
                            type="Ready", status="True", reason="KubeletReady", message="petseg test node"
                        )
                    ],
                    node_info=client.V1NodeSystemInfo(
                        architecture="amd64",
                        boot_id="",
                        container_runtime_version="petseg://local-processes",
                        kernel_version=os.uname().release,
                        kube_proxy_version="",
                        kubelet_version="v1.29.15",
                        machine_id="",
                        operating_system="linux",
                        os_image="petseg test node",
                        system_uuid="",
                    ),
                ),
            )
        )
        self._thread(self._watch_services, "node-services")
        self._thread(self._watch_pods, "node-pods")
        self._thread(self._bind_pending, "binder")
        return self

    def _thread(self, target, name: str) -> None:
        thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _guard(self, target):
        def run():
            try:
                target()
            except Exception as exc:  # the API server stopping ends every watch
                if not self.stopping.is_set():
                    self.errors.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")

        return run

    def _events(self, list_fn, **kwargs):
        """Each object now (as ADDED), then each change, for as long as the node runs (list, then watch)."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        while not self.stopping.is_set():
            listing = list_fn(**kwargs)
            for item in listing.items:
                yield "ADDED", item
            try:
                for event in watch.Watch().stream(
                    list_fn, resource_version=listing.metadata.resource_version, **kwargs
                ):
                    yield event["type"], event["object"]
            except ApiException as exc:
                if exc.status != 410:
                    raise

    def _bind_pending(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.cluster.client("scheduler"))
        for kind, pod in self._events(core.list_pod_for_all_namespaces, field_selector="spec.nodeName="):
            if kind == "DELETED" or pod.spec.node_name or pod.metadata.deletion_timestamp:
                continue
            body = client.V1Binding(
                metadata=client.V1ObjectMeta(name=pod.metadata.name, uid=pod.metadata.uid),
                target=client.V1ObjectReference(kind="Node", name=NODE_NAME),
            )
            core.create_namespaced_pod_binding(pod.metadata.name, pod.metadata.namespace, body, _preload_content=False)

    def _watch_services(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        for kind, service in self._events(core.list_service_for_all_namespaces):
            self.network.service(kind, service)

    def _watch_pods(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        for kind, pod in self._events(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={NODE_NAME}"):
            with self.lock:
                known = self.pods.get(pod.metadata.uid)
                if (
                    known is None
                    and kind != "DELETED"
                    and not pod.metadata.deletion_timestamp
                    and pod.status.phase in (None, "Pending")
                ):
                    known = self.pods[pod.metadata.uid] = Pod(self, pod)
                    known.thread.start()
            if known is None:
                continue
            if kind == "DELETED":  # gone outright (or our own final delete): nothing to report any more
                known.deleting.set()
                known.kill(signal.SIGKILL)
            elif pod.metadata.deletion_timestamp and not known.deleting.is_set():
                grace = pod.metadata.deletion_grace_period_seconds or 0
                known.deleting.set()
                self._thread(functools.partial(known.delete, grace), f"delete-{known.name}")

    def finish_deletion(self, pod: Pod) -> None:
        """The kubelet's last step of a graceful deletion: its containers are gone, the pod object goes."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            client.CoreV1Api(self.api).delete_namespaced_pod(
                pod.name,
                pod.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.uid)),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def patch_status(self, pod: Pod, status: Dict[str, Any]) -> None:
        from kubernetes.client.rest import ApiException

        if self.stopping.is_set():  # the test is over: nobody reads it, and the API server may be gone
            return
        try:  # a JSON merge patch: lists and states are replaced whole, as the kubelet's two-way patch does
            kube_cluster.call(
                self.api,
                "PATCH",
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
                {"status": status},
                "application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:  # already deleted outright
                raise

    def pod(self, namespace: str, name: str) -> Optional[Pod]:
        with self.lock:
            found = [p for p in self.pods.values() if p.namespace == namespace and p.name == name]
        return found[-1] if found else None

    def kill(self, namespace: str, name: str, signum: int = signal.SIGKILL) -> None:
        pod = self.pod(namespace, name)
        if pod is None:
            raise KeyError(f"no pod {namespace}/{name} on {NODE_NAME}")
        pod.kill(signum)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            pod.deleting.set()
            pod.kill(signal.SIGKILL)
        for pod in pods:
            pod.thread.join(30)
            pod._stop_sandbox()
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.cluster.kubelet_socket.unlink()

    def pids(self) -> List[int]:
        with self.lock:
            return [r.proc.pid for p in self.pods.values() for r in p.runs] + [
                p.sandbox.pid for p in self.pods.values() if p.sandbox is not None
            ]

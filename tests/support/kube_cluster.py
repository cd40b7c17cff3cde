"""A Kubernetes control plane of real processes for the `kube` tests, in a private namespace of the test's own.

etcd (Debian's), kube-apiserver and kube-controller-manager (k8s.io/kubernetes) and the Training Operator's
manager (both built by `make kubecluster` from tests/kubecluster) run inside one user + network + mount
namespace: their ports are on its own loopback and bridge, so they are free by construction and nothing of
theirs listens on the host. The test reaches the API server through a relay on the host's 127.0.0.1 (a port
the kernel picks); the API server reaches the test's kubelet (support/kube_node.py) through a relay inside.

- API server: RBAC and the Node authorizer, default admission plugins plus NodeRestriction (ServiceAccount
  admission on), service-account tokens signed with a key of the run, an audit log of who did what.
- controller-manager: only the garbage collector (owner references: a deleted TFJob's pods go), the
  service-account controller (each namespace's `default`) and the root-CA publisher (`kube-root-ca.crt`,
  which every pod's API-access volume projects), each under its own service account as in kubeadm.
- the operator: its TFJob controller and validating webhook, as its `standalone` overlay installs it (its
  CRD, ClusterRole and binding, service account, webhook configuration and Secret, namespace `kubeflow`),
  authenticated with a TokenRequest token of its service account. Two things a cluster does for it are
  done here: the webhook is addressed by URL (no Service routing without kube-proxy) under the service's
  DNS name, and the certificates its rotator writes to the Secret are copied to the folder a kubelet
  would mount the Secret at.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE = REPO / "tests" / "kubecluster"
RELAY = pathlib.Path(__file__).resolve().parent / "kube_relay.py"

# Inside the cluster's network namespace: its loopback and one bridge, which pods attach to.
BRIDGE_IP = "172.31.0.1"
POD_NETWORK_PREFIX = 24
API_PORT = 6443
KUBELET_PORT = 10250
ETCD_CLIENT, ETCD_PEER = "127.0.0.1:2379", "127.0.0.1:2380"
WEBHOOK_PORT = 9443
# What the operator's rotator signs its serving certificate for (<service>.<namespace>.svc, cert.go).
OPERATOR_NAMESPACE = "kubeflow"
WEBHOOK_HOST = f"training-operator.{OPERATOR_NAMESPACE}.svc"
# The rotator waits for its certificates here, hard-coded (pkg/cert/cert.go); a kubelet mounts the Secret there.
OPERATOR_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
NODE_NAME = "petseg-node"
STARTUP_SECONDS = 300  # a shared 2-core machine can be 10x oversubscribed
FIELD_MANAGER = "petseg-tests"


def binaries() -> pathlib.Path:
    """The folder `make kubecluster` builds into for the module's pins (the Makefile's KUBE_BIN)."""
    digest = hashlib.sha256((MODULE / "go.mod").read_bytes() + (MODULE / "go.sum").read_bytes()).hexdigest()
    folder = REPO / ".tools" / f"kubecluster-{digest[:12]}"
    missing = [
        name
        for name in ("kube-apiserver", "kube-controller-manager", "training-operator.v1")
        if not (folder / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing in {folder}: run `make kubecluster` (needs Go)")
    return folder


def operator_module() -> pathlib.Path:
    """The Training Operator's module folder (manifests included), at the version tests/kubecluster pins."""
    command = ["go", "list", "-mod=readonly", "-m", "-f", "{{.Dir}}", "github.com/kubeflow/training-operator"]
    out = subprocess.run(command, cwd=MODULE, capture_output=True, text=True, check=True)
    return pathlib.Path(out.stdout.strip())


def manifests(path: pathlib.Path) -> List[Dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


class Process:
    """A started server: its output goes to a log file and to waiters; stopped by its PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: pathlib.Path,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[pathlib.Path] = None,
    ):
        self.name, self.log = name, log
        self.lines: List[str] = []
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True, errors="replace"
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        with open(self.log, "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                with self.changed:
                    self.lines.append(line.rstrip("\n"))
                    self.changed.notify_all()
        self.proc.wait()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = STARTUP_SECONDS) -> re.Match:
        """Blocks until a line of its output matches `pattern` (re.search); raises if it exits first."""
        regex = re.compile(pattern)
        seen = 0

        def found():
            nonlocal seen
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            return None if self.proc.poll() is None else False

        with self.changed:
            result = self.changed.wait_for(found, timeout)
        if not result:
            tail = "\n".join(self.lines[-40:])
            state = f"exited {self.proc.returncode}" if self.proc.poll() is not None else f"silent for {timeout} s"
            raise RuntimeError(f"{self.name} {state} before printing /{pattern}/; its log ({self.log}) ends:\n{tail}")
        return result

    def stop(self, timeout: float = 30) -> None:
        terminate(self.proc, timeout)
        self._reader.join(timeout)


def terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL once `grace` seconds have passed; returns once the process has exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Namespaces:
    """A user + network + mount namespace of the test's own: loopback, a bridge at BRIDGE_IP, its own /etc/hosts.

    A holder process keeps it alive until its stdin closes; `command(argv)` runs argv inside (nsenter execs,
    so the process id is argv's own). Needs util-linux and user namespaces (or root).
    """

    def __init__(self, hosts: pathlib.Path):
        setup = " && ".join(
            [
                "ip link set lo up",
                "ip link add br0 type bridge",
                f"ip addr add {BRIDGE_IP}/{POD_NETWORK_PREFIX} dev br0",
                "ip link set br0 up",
                f"mount --bind {hosts} /etc/hosts",
                "echo up",
                "exec cat",
            ]
        )
        self._holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--net", "--mount", "--propagation", "private", "sh", "-c", setup],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self._holder.stdout.readline().strip() != "up":
            self._holder.kill()
            raise RuntimeError(f"cannot create the cluster's namespaces: {self._holder.communicate()[1].strip()}")

    @property
    def pid(self) -> int:
        return self._holder.pid

    def command(self, argv: Sequence[str], cwd: pathlib.Path = REPO) -> List[str]:
        return [
            "nsenter",
            f"--target={self.pid}",
            "--user",
            "--net",
            "--mount",
            "--preserve-credentials",
            f"--wd={cwd}",
            *argv,
        ]

    def close(self) -> None:
        self._holder.stdin.close()
        self._holder.wait()


class Pki:
    """The run's certificate authority, server and client certificates, and service-account signing key."""

    def __init__(self, folder: pathlib.Path):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self._x509, self._hashes, self._serialization, self._rsa = x509, hashes, serialization, rsa
        self._oid, self._eku = NameOID, ExtendedKeyUsageOID
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._ca_key = self._new_key("ca")
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "petseg-test-ca")])
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca.crt", self._ca.public_bytes(serialization.Encoding.PEM))
        sa_key = self._new_key("sa")
        self.sa_key = self.folder / "sa.key"
        self.sa_pub = self._write(
            "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def _new_key(self, name: str):
        key = self._rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._write(
            f"{name}.key",
            key.private_bytes(
                self._serialization.Encoding.PEM,
                self._serialization.PrivateFormat.TraditionalOpenSSL,
                self._serialization.NoEncryption(),
            ),
        )
        return key

    def _write(self, name: str, data: bytes) -> pathlib.Path:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        ips: Sequence[str] = (),
        dns: Sequence[str] = (),
        server: bool = False,
    ):
        """(certificate, key) paths for a client (CN = user, O = groups) or a server (SANs)."""
        import ipaddress

        x509, oid = self._x509, self._oid
        key = self._new_key(name)
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name(
            [x509.NameAttribute(oid.ORGANIZATION_NAME, o) for o in organizations]
            + [x509.NameAttribute(oid.COMMON_NAME, common_name)]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage([self._eku.SERVER_AUTH if server else self._eku.CLIENT_AUTH]), critical=False
            )
        )
        if ips or dns:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
                ),
                critical=False,
            )
        certificate = builder.sign(self._ca_key, self._hashes.SHA256())
        return (
            self._write(f"{name}.crt", certificate.public_bytes(self._serialization.Encoding.PEM)),
            self.folder / f"{name}.key",
        )


class Identity:
    """One client of the API server: a certificate or a bearer token; a kubeconfig and a Python client for it."""

    def __init__(
        self,
        name: str,
        ca: pathlib.Path,
        cert: Optional[pathlib.Path] = None,
        key: Optional[pathlib.Path] = None,
        token: Optional[str] = None,
    ):
        self.name, self.ca, self.cert, self.key, self.token = name, ca, cert, key, token

    def kubeconfig(self, path: pathlib.Path, server: str, namespace: Optional[str] = None) -> pathlib.Path:
        user = (
            {"token": self.token} if self.token else {"client-certificate": str(self.cert), "client-key": str(self.key)}
        )
        context = {"cluster": "petseg-test", "user": self.name, **({"namespace": namespace} if namespace else {})}
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": self.name,
                    "clusters": [
                        {"name": "petseg-test", "cluster": {"server": server, "certificate-authority": str(self.ca)}}
                    ],
                    "users": [{"name": self.name, "user": user}],
                    "contexts": [{"name": self.name, "context": context}],
                }
            )
        )
        path.chmod(0o600)
        return path

    def client(self, server: str):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = server
        configuration.ssl_ca_cert = str(self.ca)
        if self.token:
            configuration.api_key = {"authorization": f"Bearer {self.token}"}
        else:
            configuration.cert_file, configuration.key_file = str(self.cert), str(self.key)
        return client.ApiClient(configuration)


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Every request of the namespace's service accounts: the task's, the operator's.
        {"level": "Metadata", "userGroups": [f"system:serviceaccounts:{OPERATOR_NAMESPACE}"]},
        # Who created, changed and deleted the objects the tests follow (no bodies: tokens stay out).
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete"],
            "resources": [
                {
                    "group": "",
                    "resources": ["pods", "pods/status", "pods/binding", "services", "serviceaccounts/token"],
                },
                {"group": "kubeflow.org", "resources": ["tfjobs", "tfjobs/status"]},
            ],
        },
        {"level": "None"},
    ],
}


class Cluster:
    """The control plane: started by `start()`, stopped (every process by its PID) by `stop()`."""

    def __init__(self, state: pathlib.Path):
        self.state = state
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.bin = binaries()
        self.processes: List[Process] = []
        self.namespaces: Optional[Namespaces] = None
        self.host_server = ""  # https://127.0.0.1:<relay port>: the API server as the test's processes reach it
        self.inside_server = f"https://{BRIDGE_IP}:{API_PORT}"
        self.api_socket = state / "apiserver.sock"
        self.kubelet_socket = state / "kubelet.sock"
        self.audit_log = state / "audit.log"
        self._clients: Dict[str, Any] = {}

    # -- start -------------------------------------------------------------------------------------

    def start(self) -> "Cluster":
        hosts = self.state / "hosts"
        # The API server calls the operator's webhook by its service name; the webhook listens inside.
        hosts.write_text(f"127.0.0.1 localhost {WEBHOOK_HOST}\n")
        self.namespaces = Namespaces(hosts)
        self.pki = self._pki()
        self._start_etcd()
        self._start_apiserver()
        self._bootstrap()
        self._start_controller_manager()
        self._start_operator()
        return self

    def _pki(self) -> Pki:
        pki = Pki(self.state / "pki")
        self.serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            ips=("127.0.0.1", BRIDGE_IP),
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            server=True,
        )
        self.kubelet_client = pki.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("kubeadm:cluster-admins",)
        )
        self.kubelet_serving = pki.issue("kubelet", NODE_NAME, ips=(BRIDGE_IP,), dns=(NODE_NAME,), server=True)
        self.identities = {
            "admin": Identity(
                "admin", pki.ca, *pki.issue("admin", "petseg-test-admin", organizations=("system:masters",))
            ),
            "controller-manager": Identity(
                "controller-manager", pki.ca, *pki.issue("controller-manager", "system:kube-controller-manager")
            ),
            # The one-node binder of support/kube_node.py plays kube-scheduler's part, under its identity.
            "scheduler": Identity("scheduler", pki.ca, *pki.issue("scheduler", "system:kube-scheduler")),
            "node": Identity(
                "node", pki.ca, *pki.issue("node", f"system:node:{NODE_NAME}", organizations=("system:nodes",))
            ),
        }
        return pki

    def _run(self, name: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> Process:
        process = Process(name, self.namespaces.command(argv), self.logs / f"{name}.log", env=env)
        self.processes.append(process)
        return process

    def _start_etcd(self) -> None:
        etcd = self._run(
            "etcd",
            [
                "etcd",
                "--name=petseg",
                f"--data-dir={self.state / 'etcd'}",
                "--unsafe-no-fsync",
                f"--listen-client-urls=http://{ETCD_CLIENT}",
                f"--advertise-client-urls=http://{ETCD_CLIENT}",
                f"--listen-peer-urls=http://{ETCD_PEER}",
                f"--initial-advertise-peer-urls=http://{ETCD_PEER}",
                f"--initial-cluster=petseg=http://{ETCD_PEER}",
            ],
        )
        etcd.wait_for("ready to serve client requests")

    def _start_apiserver(self) -> None:
        pki, policy = self.pki, self.state / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.apiserver = self._run(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://{ETCD_CLIENT}",
                f"--bind-address={BRIDGE_IP}",
                f"--advertise-address={BRIDGE_IP}",
                f"--secure-port={API_PORT}",
                f"--tls-cert-file={self.serving[0]}",
                f"--tls-private-key-file={self.serving[1]}",
                f"--client-ca-file={pki.ca}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--kubelet-client-certificate={self.kubelet_client[0]}",
                f"--kubelet-client-key={self.kubelet_client[1]}",
                f"--kubelet-certificate-authority={pki.ca}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--profiling=false",
            ],
        )
        self.apiserver.wait_for(r"Serving securely on")
        # The test's processes reach it through its own Unix socket, relayed from the host's loopback.
        self._run(
            "relay-apiserver", [sys.executable, str(RELAY), f"unix:{self.api_socket}", f"tcp:{BRIDGE_IP}:{API_PORT}"]
        ).wait_for("^listening")
        host_relay = Process(
            "relay-host",
            [sys.executable, str(RELAY), "tcp:127.0.0.1:0", f"unix:{self.api_socket}"],
            self.logs / "relay-host.log",
        )
        self.processes.append(host_relay)
        port = host_relay.wait_for(r"^listening (\d+)").group(1)
        self.host_server = f"https://127.0.0.1:{port}"
        # The node's kubelet endpoint, which the API server calls for pods/log.
        self._run(
            "relay-kubelet",
            [sys.executable, str(RELAY), f"tcp:{BRIDGE_IP}:{KUBELET_PORT}", f"unix:{self.kubelet_socket}"],
        ).wait_for("^listening")

    def client(self, identity: str = "admin"):
        if identity not in self._clients:
            self._clients[identity] = self.identities[identity].client(self.host_server)
        return self._clients[identity]

    def version(self) -> Dict[str, str]:
        from kubernetes import client

        return client.VersionApi(self.client()).get_code().to_dict()

    def _bootstrap(self) -> None:
        """The cluster's own objects, once the API server's bootstrap RBAC policy is in place."""
        from kubernetes import client

        rbac = client.RbacAuthorizationV1Api(self.client())
        wanted = {
            "system:kube-controller-manager",
            "system:kube-scheduler",
            "system:controller:generic-garbage-collector",
            "system:controller:service-account-controller",
            "system:controller:root-ca-cert-publisher",
        }
        self.wait_until(rbac.list_cluster_role_binding, lambda items: wanted <= {i.metadata.name for i in items})
        core = client.CoreV1Api(self.client())
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE)))
        self.operator_dir = operator_module()
        base = self.operator_dir / "manifests" / "base"
        [crd] = manifests(base / "crds" / "kubeflow.org_tfjobs.yaml")
        # Server-side apply: the 540 KB CRD is too big for client-side apply's last-applied annotation.
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
        call(
            self.client(),
            "PATCH",
            path,
            crd,
            "application/apply-patch+yaml",
            [("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        extensions = client.ApiextensionsV1Api(self.client())
        self.wait_until(
            extensions.list_custom_resource_definition,
            lambda items: any(
                c.type == "Established" and c.status == "True" for i in items for c in (i.status.conditions or [])
            ),
            field_selector=f"metadata.name={crd['metadata']['name']}",
        )
        # The operator as its standalone overlay installs it: namespace kubeflow on the base's objects.
        objects = (
            manifests(base / "rbac" / "service-account.yaml")
            + manifests(base / "rbac" / "role.yaml")
            + manifests(base / "rbac" / "cluster-role-binding.yaml")
        )
        for obj in objects:
            for subject in obj.get("subjects", []):
                subject.setdefault("namespace", OPERATOR_NAMESPACE)
        self.apply(objects, namespace=OPERATOR_NAMESPACE)
        core.create_namespaced_secret(
            OPERATOR_NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name="training-operator-webhook-cert"))
        )
        self.apply([self._webhook_configuration(base)])

    def _webhook_configuration(self, base: pathlib.Path) -> Dict[str, Any]:
        """The operator's TFJob validating webhook, from its manifest with the overlay's name, addressed by URL."""
        [configuration] = manifests(base / "webhook" / "manifests.yaml")
        patches = yaml.safe_load((base / "webhook" / "patch.yaml").read_text())
        name = next(p["value"] for p in patches if p["path"] == "/metadata/name")
        [webhook] = [w for w in configuration["webhooks"] if "tfjobs" in w["rules"][0]["resources"]]
        path = webhook["clientConfig"]["service"]["path"]
        webhook["clientConfig"] = {"url": f"https://{WEBHOOK_HOST}:{WEBHOOK_PORT}{path}"}
        configuration["metadata"] = {"name": name}
        configuration["webhooks"] = [webhook]
        return configuration

    def apply(self, objects: Sequence[Dict[str, Any]], namespace: Optional[str] = None) -> None:
        """Creates each object as `kubectl create -n NAMESPACE -f` would (as admin)."""
        from kubernetes import utils

        for obj in objects:
            utils.create_from_dict(self.client(), obj, namespace=namespace)

    def token(self, namespace: str, service_account: str, seconds: int = 24 * 3600) -> str:
        """A TokenRequest token of a service account (what a pod's projected volume holds)."""
        from kubernetes import client

        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
        )
        return (
            client.CoreV1Api(self.client())
            .create_namespaced_service_account_token(service_account, namespace, request)
            .status.token
        )

    def _start_controller_manager(self) -> None:
        pki = self.pki
        kubeconfig = self.identities["controller-manager"].kubeconfig(
            self.state / "controller-manager.kubeconfig", self.inside_server
        )
        manager = self._run(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--controllers=garbage-collector-controller,serviceaccount-controller,"
                "root-ca-certificate-publisher-controller",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki.ca}",
                f"--service-account-private-key-file={pki.sa_key}",
                "--secure-port=0",
            ],
        )
        manager.wait_for("All resource monitors have synced")

    def _start_operator(self) -> None:
        from kubernetes import client

        token = Identity("training-operator", self.pki.ca, token=self.token(OPERATOR_NAMESPACE, "training-operator"))
        kubeconfig = token.kubeconfig(self.state / "operator.kubeconfig", self.inside_server)
        # Its own /tmp, so the rotator's fixed certificate folder is private to it; the state folder stays at its path.
        private_tmp = self.state / "operator-tmp"
        certs = private_tmp / pathlib.Path(OPERATOR_CERT_DIR).relative_to("/tmp")
        certs.mkdir(parents=True)
        binds = []
        if self.state.is_relative_to("/tmp"):
            inner = private_tmp / self.state.relative_to("/tmp")
            inner.mkdir(parents=True)
            binds.append(f"mount --bind {self.state} {inner}")
        script = " && ".join(binds + [f"mount --rbind {private_tmp} /tmp", 'exec "$@"'])
        self.operator = self._run(
            "training-operator",
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "training-operator",
                str(self.bin / "training-operator.v1"),
                f"--kubeconfig={kubeconfig}",
                "--enable-scheme=tfjob",
                "--metrics-bind-address=127.0.0.1:8080",
                "--health-probe-bind-address=127.0.0.1:8081",
                f"--webhook-server-port={WEBHOOK_PORT}",
                "--zap-log-level=info",
            ],
        )
        # What a kubelet's Secret volume does: the rotator's key, then its certificate (it takes the
        # certificate's arrival as "mounted" and then loads both), each written whole.
        core = client.CoreV1Api(self.client())
        [secret] = self.wait_until(
            core.list_namespaced_secret,
            lambda items: [i for i in items if i.data and i.data.get("tls.crt")],
            namespace=OPERATOR_NAMESPACE,
            field_selector="metadata.name=training-operator-webhook-cert",
        )
        for key in ("tls.key", "tls.crt"):
            partial = certs / f".{key}.partial"
            partial.write_bytes(base64.b64decode(secret.data[key]))
            partial.rename(certs / key)
        self.operator.wait_for(r"Serving webhook server")
        self.operator.wait_for(r"Starting workers.*tfjob")
        admission = client.AdmissionregistrationV1Api(self.client())
        self.wait_until(
            admission.list_validating_webhook_configuration,
            lambda items: items and all(w.client_config.ca_bundle for w in items[0].webhooks),
            field_selector="metadata.name=validator.training-operator.kubeflow.org",
        )

    # -- waiting on the API ------------------------------------------------------------------------

    def wait_until(
        self, list_fn: Callable, predicate: Callable[[List[Any]], Any], timeout: float = STARTUP_SECONDS, **kwargs
    ) -> Any:
        """Lists, then watches from there, until predicate(items) is truthy; returns its value."""
        return wait_until(list_fn, predicate, timeout, **kwargs)

    # -- stop --------------------------------------------------------------------------------------

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.namespaces:
            self.namespaces.close()
        for api in self._clients.values():
            api.close()

    def pids(self) -> List[int]:
        return [p.pid for p in self.processes] + ([self.namespaces.pid] if self.namespaces else [])


def call(
    api_client,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    query: Sequence[tuple] = (),
) -> Any:
    """One request through a kubernetes ApiClient with a content type of our choice (the 26.1 client sends every
    dict PATCH as a strategic merge patch); returns the decoded JSON body, raises ApiException on errors."""
    data = api_client.call_api(
        path,
        method,
        query_params=list(query),
        body=body,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
    )[0]
    return json.loads(data.data or b"null")


def wait_until(
    list_fn: Callable, predicate: Callable[[List[Any]], Any], timeout: float = STARTUP_SECONDS, **kwargs
) -> Any:
    """Lists with `list_fn(**kwargs)`, then watches from that resource version, until predicate(items) is truthy.

    `items` is the current list of objects (dicts for custom objects), kept up to date from the watch events.
    """
    from kubernetes import watch

    listing = list_fn(**kwargs)
    custom = isinstance(listing, dict)
    items = listing["items"] if custom else listing.items
    key = (lambda o: o["metadata"]["name"]) if custom else (lambda o: o.metadata.name)
    current = {key(o): o for o in items}
    value = predicate(list(current.values()))
    if value:
        return value
    version = listing["metadata"]["resourceVersion"] if custom else listing.metadata.resource_version
    stream = watch.Watch()
    for event in stream.stream(list_fn, resource_version=version, timeout_seconds=int(timeout), **kwargs):
        obj = event["object"]
        if event["type"] == "DELETED":
            current.pop(key(obj), None)
        elif event["type"] in ("ADDED", "MODIFIED"):
            current[key(obj)] = obj
        value = predicate(list(current.values()))
        if value:
            stream.stop()
            return value
    raise TimeoutError(f"not seen within {timeout} s through {getattr(list_fn, '__name__', list_fn)}({kwargs})")


@contextlib.contextmanager
def running(state: pathlib.Path) -> Iterator[Cluster]:
    cluster = Cluster(state)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def host_listeners(pids: Sequence[int]) -> List[str]:
    """`address:port` of every TCP socket listening in the host's network namespace that one of `pids` holds."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    found = []
    for table, width in (("/proc/self/net/tcp", 8), ("/proc/self/net/tcp6", 32)):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # LISTEN
                    address, port = local.split(":")
                    found.append(f"{_address(address, width)}:{int(port, 16)}")
    return sorted(found)


def _address(hexed: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hexed)
    if width == 8:
        return str(ipaddress.IPv4Address(raw[::-1]))
    return str(ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))


def audit(path: pathlib.Path, predicate: Callable[[Dict[str, Any]], bool] = lambda e: True) -> List[Dict[str, Any]]:
    """The audit log's events (stage ResponseComplete) that match."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("stage") == "ResponseComplete" and predicate(e)]

"""TF_CONFIG as the Training Operator gives each TFJob replica, and a private network to run replicas on.

Mirrors `pkg/controller.v1/tensorflow/tensorflow.go` of kubeflow/training-operator v1.8.1
(`genClusterSpec`, `genTFConfigJSONStr` without `enableDynamicWorker`) and `common.GenGeneralName`.
"""

import json
import subprocess
from typing import Dict, List, Mapping, Optional, Sequence

# kubeflowv1.TFJobDefaultPort: the `tfjob-port` of the `tensorflow` container unless the job names one.
DEFAULT_PORT = 2222


def replica_host(job_name: str, replica_type: str, index: int, namespace: str, cluster_domain: str = "") -> str:
    """The headless Service name of one replica: `<job>-<type>-<index>.<namespace>.svc[.<domain>]`."""
    host = f"{job_name}-{replica_type.lower()}-{index}".replace("/", "-")
    return f"{host}.{namespace}.svc" + (f".{cluster_domain}" if cluster_domain else "")


def cluster_spec(job_name: str, namespace: str, replicas: Mapping[str, int], port: int = DEFAULT_PORT,
                 cluster_domain: str = "") -> Dict[str, List[str]]:
    """Replica type (lower-cased, e.g. `chief`, `worker`) -> `host:port` of each of its replicas."""
    return {replica_type.lower(): [f"{replica_host(job_name, replica_type, i, namespace, cluster_domain)}:{port}"
                                   for i in range(count)]
            for replica_type, count in replicas.items()}


def tf_config(job_name: str, namespace: str, replicas: Mapping[str, int], replica_type: str, index: int,
              port: int = DEFAULT_PORT, cluster_domain: str = "") -> Optional[str]:
    """TF_CONFIG of one replica, byte for byte as the operator writes it; None for a one-replica job.

    The operator sets no TF_CONFIG when the job has a single replica in all (`isDistributed`). Go's
    encoding/json writes struct fields in declaration order (cluster, task, environment), map keys
    sorted, and no spaces.
    """
    if sum(replicas.values()) == 1:
        return None
    cluster = cluster_spec(job_name, namespace, replicas, port, cluster_domain)
    return json.dumps({"cluster": dict(sorted(cluster.items())),
                       "task": {"type": replica_type.lower(), "index": index},
                       "environment": "cloud"}, separators=(",", ":"))


def on_loopback(config: str, ports: Mapping[str, int]) -> str:
    """`config` with each `host:port` of the cluster replaced by `127.0.0.1:<ports[host:port]>`.

    Plays the cluster DNS: every TensorFlow server binds 0.0.0.0:<its port>, so replicas sharing one
    network need distinct ports where the real pods all use the same one.
    """
    parsed = json.loads(config)
    parsed["cluster"] = {kind: [f"127.0.0.1:{ports[address]}" for address in addresses]
                         for kind, addresses in parsed["cluster"].items()}
    return json.dumps(parsed, separators=(",", ":"))


class PrivateNetwork:
    """A network namespace of its own (loopback only) for processes started with `command()`.

    No other process on the machine binds a port in it, so the cluster's ports are free by construction:
    nothing is probed for a free port and bound later. Needs `unshare` / `nsenter` (util-linux) and
    user namespaces (or root).
    """

    def __init__(self):
        # The holder keeps the namespace alive until its stdin closes; it says "up" once loopback is up.
        self._holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", "ip link set lo up && echo up && exec cat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self._holder.stdout.readline()
        if line.strip() != "up":
            self._holder.kill()
            raise RuntimeError(f"cannot create a network namespace: {self._holder.communicate()[1].strip()}")

    def command(self, argv: Sequence[str]) -> List[str]:
        """`argv` run inside the namespace; nsenter execs it, so the process id is argv's own."""
        return ["nsenter", f"--target={self._holder.pid}", "--user", "--net", "--preserve-credentials", *argv]

    def close(self) -> None:
        self._holder.stdin.close()
        self._holder.wait()

    def __enter__(self) -> "PrivateNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

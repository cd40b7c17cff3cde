"""A private network namespace for processes of a multi-worker TensorFlow cluster on one machine (test_strategy.py).

The Training Operator's own TF_CONFIG and pods are tested on the loopback Kubernetes (support/kube_cluster.py).
"""

import subprocess
from typing import List, Sequence

# kubeflowv1.TFJobDefaultPort: the port each replica's TensorFlow server listens on.
DEFAULT_PORT = 2222


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
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
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

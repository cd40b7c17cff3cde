"""Runs open-source KFP's own backend compiler (kubeflow/kfpcheck, built by `make kfpcheck`) on a PipelineSpec."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from typing import Any, Dict, Optional

ROOT = pathlib.Path(__file__).resolve().parents[2]
# `make kfpcheck` builds it here (.venv is gitignored); KFP_BACKEND_CHECK names another build.
BINARY = pathlib.Path(os.environ.get("KFP_BACKEND_CHECK", ROOT / ".venv" / "bin" / "kfp-backend-check"))


class BackendRejected(RuntimeError):
    """The KFP backend refused the spec; the message is the compiler's own (stderr)."""


def check(spec: os.PathLike, pipeline_root: Optional[str] = None) -> Dict[str, Any]:
    """Compiles `spec` as the KFP API server does at run creation; returns the JSON report.

    `pipeline_root` is the run's root (runtimeConfig); None leaves it to the cluster's default.
    """
    command = [str(_built())]
    if pipeline_root:
        command += ["-pipeline-root", pipeline_root]
    proc = subprocess.run(command + [os.fspath(spec)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BackendRejected(proc.stderr.strip() or f"exit status {proc.returncode}")
    return json.loads(proc.stdout)


def _built() -> pathlib.Path:
    """The checker; `make kfpcheck` builds it first when it is missing, so any tier of the tests can run it."""
    if not BINARY.is_file():
        done = subprocess.run(["make", "-s", "kfpcheck"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not BINARY.is_file():
            raise RuntimeError(
                f"`make kfpcheck` could not build {BINARY} (it needs Go >= 1.24):\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
    return BINARY

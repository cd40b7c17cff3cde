"""Runs the Training Operator's own TFJob checks (kubeflow/tfjobcheck, built by `make tfjobcheck`) on a manifest."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from typing import Any, Dict, Union

ROOT = pathlib.Path(__file__).resolve().parents[2]
# `make tfjobcheck` builds it here (.venv is gitignored); TFJOB_CHECK names another build.
BINARY = pathlib.Path(os.environ.get("TFJOB_CHECK", ROOT / ".venv" / "bin" / "tfjob-check"))


class Rejected(RuntimeError):
    """The operator's code refused the manifest; the message lists every problem (the checker's stderr)."""


def check(manifest: Union[os.PathLike, Dict[str, Any]]) -> Dict[str, Any]:
    """The checker's report on a TFJob (a file, or a dict sent as JSON): the defaulted job and each pod's TF_CONFIG."""
    if not BINARY.is_file():
        raise FileNotFoundError(f"{BINARY} is missing: run `make tfjobcheck` (needs Go)")
    if isinstance(manifest, dict):
        command, stdin = [str(BINARY), "-"], json.dumps(manifest)
    else:
        command, stdin = [str(BINARY), os.fspath(manifest)], None
    proc = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode == 1:
        raise Rejected(proc.stderr.strip())
    if proc.returncode != 0:
        raise RuntimeError(f"tfjob-check exited {proc.returncode}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)

"""Real petseg processes for tests: `petseg run` and the summary.json it writes, or a fresh interpreter on our code."""

import json
import os
import pathlib
import subprocess
import sys
from typing import Dict, Optional

REPO = pathlib.Path(__file__).resolve().parents[2]
# Per run; a shared 2-core machine can be several times slower than an idle one.
TIMEOUT = 1800


def command(output: pathlib.Path, *args: str) -> list:
    return [sys.executable, "-m", "cli.main", "run", "--output-dir", str(output), *args]


def summary(output: pathlib.Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def run(output: pathlib.Path, *args: str, env: Optional[Dict[str, str]] = None) -> dict:
    """Runs `petseg run --output-dir OUTPUT ARGS` to completion (it must succeed); returns its summary.

    The console is kept in OUTPUT/run.stdout and OUTPUT/run.stderr for tests that read what a user sees.
    """
    proc = subprocess.run(
        command(output, *args),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (output / "run.stdout").write_text(proc.stdout)
    (output / "run.stderr").write_text(proc.stderr)
    return summary(output)


def python(code: str, env: Optional[Dict[str, str]] = None) -> str:
    """Runs `python -c CODE` in a fresh interpreter at the repo root (it must succeed); returns its last stdout line."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def start(output: pathlib.Path, *args: str) -> subprocess.Popen:
    """Starts `petseg run` in its own process group (so the group can be killed); console to a file.

    The file is `proc.console_path`, next to OUTPUT and numbered per start, so reruns keep their own.
    """
    output.mkdir(parents=True, exist_ok=True)
    path = output.parent / f"{output.name}.{len(list(output.parent.glob(output.name + '.*')))}.console"
    with open(path, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            command(output, *args), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    proc.console_path = path
    return proc


def compile_argv(output: pathlib.Path, *args: str, **flags: str) -> list:
    """`kubeflow compile --output-file OUTPUT --profile tiny`, each keyword as its flag (`pipeline_root=` is
    `--pipeline-root`), then ARGS."""
    argv = ["kubeflow", "compile", "--output-file", str(output), "--profile", "tiny"]
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, *args]

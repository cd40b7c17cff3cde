"""Installs Flink 1.19 from PyPI and Beam's Flink job server from Maven Central into the tool folder."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
from typing import List

ENGINE_DIR = pathlib.Path(__file__).resolve().parent
PROJECT_DIR = ENGINE_DIR.parent
FLINK_VERSION = "1.19.3"
# Maven Central serves no Beam Flink job server at 2.61.0 (our SDK); 2.62.0 is the nearest runner served.
JOB_SERVER_BEAM_VERSION = "2.62.0"
FLINK_REQUIREMENTS = ENGINE_DIR / "flink-requirements.txt"
JOB_SERVER_POM = ENGINE_DIR / "job-server" / "pom.xml"
JOB_SERVER_SUMS = ENGINE_DIR / "job-server" / "sha256sums.txt"
JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"


class InstallError(RuntimeError):
    """A tool could not be installed; the message says which and where the log is."""


def tools_dir() -> pathlib.Path:
    """Outside the venv and gitignored; PETSEG_TOOLS moves it (e.g. to share it between checkouts)."""
    return pathlib.Path(os.environ.get("PETSEG_TOOLS") or PROJECT_DIR / ".tools").resolve()


def flink_home() -> pathlib.Path:
    return tools_dir() / f"flink-{FLINK_VERSION}" / "pyflink"


def job_server_lib() -> pathlib.Path:
    return tools_dir() / f"beam-flink-job-server-{JOB_SERVER_BEAM_VERSION}" / "lib"


def ensure_flink(log: pathlib.Path) -> pathlib.Path:
    """FLINK_HOME of the pinned distribution, installed with hash checks on first use."""
    home = flink_home()
    stamp = home.parent / ".installed"
    if stamp.exists() and stamp.read_text() == _digest(FLINK_REQUIREMENTS):
        return home
    shutil.rmtree(home.parent, ignore_errors=True)
    # --target keeps it out of every venv; uv checks the hashes and caches the built sdist.
    _run(
        _uv()
        + [
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--target",
            str(home.parent),
            "--python",
            sys.executable,
            "-r",
            str(FLINK_REQUIREMENTS),
        ],
        log,
        "Flink from PyPI",
    )
    if not (home / "bin" / "jobmanager.sh").exists() or not (home / "lib" / f"flink-dist-{FLINK_VERSION}.jar").exists():
        raise InstallError(f"Flink installed into {home.parent} lacks bin/jobmanager.sh or lib/flink-dist; see {log}")
    for script in (home / "bin").glob("*.sh"):
        script.chmod(0o755)
    stamp.write_text(_digest(FLINK_REQUIREMENTS))
    return home


def ensure_job_server(log: pathlib.Path) -> List[pathlib.Path]:
    """The job server's jars, resolved by Maven and checked against the pinned SHA-256 sums."""
    lib = job_server_lib()
    stamp = lib.parent / ".installed"
    if not (stamp.exists() and stamp.read_text() == _digest(JOB_SERVER_SUMS)):
        shutil.rmtree(lib.parent, ignore_errors=True)
        mvn = shutil.which("mvn")
        if not mvn:
            raise InstallError("Maven (mvn) is needed to fetch Beam's Flink job server from Maven Central")
        _run(
            [mvn, "-B", "-q", "-f", str(JOB_SERVER_POM), "dependency:copy-dependencies", f"-DoutputDirectory={lib}"],
            log,
            "Beam's Flink job server from Maven Central",
        )
        _verify_jars(lib)
        stamp.write_text(_digest(JOB_SERVER_SUMS))
    return sorted(lib.glob("*.jar"))


def _verify_jars(lib: pathlib.Path) -> None:
    expected = {}
    for line in JOB_SERVER_SUMS.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            expected[name] = digest
    found = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lib.glob("*.jar")}
    wrong = sorted(n for n in expected if found.get(n) != expected[n])
    extra = sorted(set(found) - set(expected))
    if wrong or extra:
        shutil.rmtree(lib.parent, ignore_errors=True)
        raise InstallError(
            f"job server jars differ from {JOB_SERVER_SUMS}: missing or changed {wrong[:5]}, unexpected {extra[:5]}"
        )


def _uv() -> List[str]:
    uv = shutil.which("uv")
    if uv:
        return [uv]
    for python in ("python3", sys.executable):
        if subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "uv"]
    raise InstallError("uv is needed to install Flink from PyPI (`make setup` installs it)")


def _run(command: List[str], log: pathlib.Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[petseg] installing {what} (once) ...", file=sys.stderr, flush=True)
    with open(log, "a") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise InstallError(f"installing {what} failed (exit {proc.returncode}); see {log}")


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

"""StatisticsGen, Transform and the Evaluator on a real local Flink cluster, against DirectRunner on the same data."""

import dataclasses
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
from typing import Dict, List

import pytest

from config import names
from engine import flink, install
from report.artifacts import RunArtifacts
from support import flink_equality, petseg
from support.events import wait_for_path
from support.tfjob import PrivateNetwork

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BEAM_COMPONENTS = (names.STATISTICS_GEN_ID, names.TRANSFORM_ID, names.EVALUATOR_ID)
# Smaller than the tiny profile: these tests are about the engine, and every image is work for both
# the cluster and the DirectRunner rerun it is compared with.
SMALL = ("model.image_size=32", "data.synthetic_train_images=16", "data.synthetic_test_images=8", "train.epochs=1")
# Metrics of the same model on the same eval split, DirectRunner vs Flink: only float summation order
# differs (per-worker partial confusion matrices merged in another order).
METRIC_TOLERANCE = 1e-6
# The folder Beam's file sink opens when Transform's job starts writing its examples (a Beam task on a
# TaskManager makes it): the job is running on the cluster then.
TRANSFORM_SINK_OPENED = f"pipeline_root/{names.TRANSFORM_ID}/transformed_examples/*/Split-*/beam-temp-*"
# A listening socket in /proc/net/tcp's state column (TCP_LISTEN in the kernel's tcp_states.h).
TCP_LISTEN = "0A"
REST_GET = (
    "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=60).read().decode())"
)
STATUS = (
    "import json, sys; from engine import flink; "
    "print(json.dumps(flink.status(flink.ClusterSpec(state_dir=sys.argv[1]))))"
)


@pytest.fixture(scope="module")
def network():
    """A network namespace of the cluster's own, for it and everything that talks to it: its default ports
    are free there whatever else listens on the machine (a developer's `petseg flink up` included)."""
    with PrivateNetwork() as private:
        yield private


def _inside(network, *argv: str, timeout: float = 900) -> str:
    """Runs `argv` in the cluster's network from the repo root (it must succeed); returns its stdout."""
    proc = subprocess.run(network.command(argv), capture_output=True, text=True, timeout=timeout, cwd=petseg.REPO)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _petseg_flink(network, *args: str) -> str:
    return _inside(network, sys.executable, "-m", "cli.main", "flink", *args)


def _rest(network, cluster, path: str):
    """Flink's REST API, asked from inside the cluster's network."""
    return json.loads(_inside(network, sys.executable, "-c", REST_GET, cluster.rest_url + path, timeout=120))


def _status(network, cluster) -> dict:
    """What `petseg flink status` reports, as data."""
    return json.loads(_inside(network, sys.executable, "-c", STATUS, cluster.state_dir, timeout=120).splitlines()[-1])


def _listening(network) -> List[int]:
    """The ports of every listening TCP socket in the cluster's network."""
    ports = []
    for line in _inside(network, "cat", "/proc/net/tcp", "/proc/net/tcp6", timeout=60).splitlines():
        fields = line.split()
        if fields[3] == TCP_LISTEN:
            ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module")
def cluster(network, tmp_path_factory):
    """A real cluster on the default ports, started and stopped with `petseg flink up` / `down` in its network."""
    spec = flink.ClusterSpec(state_dir=str(tmp_path_factory.mktemp("flink")))
    # Installed out here: the private network reaches no package registry.
    install.ensure_flink(spec.dir / "logs" / "install.log")
    install.ensure_job_server(spec.dir / "logs" / "install.log")
    _petseg_flink(network, "up", "--dir", spec.state_dir)
    started = {p["pid"] for p in flink.read_state(spec.dir)["processes"]}
    try:
        # Each process listens on the port it was given.
        ports = [getattr(spec, field) for field in flink.PORT_FIELDS]
        assert set(ports) <= set(_listening(network)), (ports, _listening(network))
        yield spec
    finally:
        started |= {p["pid"] for p in (flink.read_state(spec.dir) or {"processes": []})["processes"]}
        _petseg_flink(network, "down", "--dir", spec.state_dir)
        # Nothing left: no process of any group `up` started (SDK workers included), none whose command
        # line names the cluster's folder, no port open in the cluster's network.
        assert not [pid for pid in started if flink._group_alive(pid)]
        assert not _processes_naming(str(spec.dir))
        assert not _listening(network)


def _processes_naming(text):
    found = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


def _beam_sets(spec):
    return [
        "--set",
        "beam.runner=flink",
        "--set",
        f"beam.job_endpoint={spec.job_endpoint}",
        "--set",
        f"beam.environment_config={spec.worker_pool}",
        "--set",
        f"beam.flink_master=127.0.0.1:{spec.rest_port}",
    ]


@dataclasses.dataclass
class FlinkRun:
    output: pathlib.Path
    console: str  # the console of the one `petseg run`, whose TaskManager was killed
    returncode: int
    victim: int
    transform_job: str  # the Flink job id that was running when the TaskManager died
    jobs: List[dict]  # every job of the run, from Flink's REST API


@pytest.fixture(scope="module")
def flink_run(network, cluster, tmp_path_factory):
    """One small `petseg run` on the cluster; a TaskManager is SIGKILLed once Transform's job writes.

    One run serves every check: the job list, the equality with DirectRunner and Flink's recovery.
    Killing inside it costs one Transform job attempt more, not a second pipeline run.
    """
    output = tmp_path_factory.mktemp("flink_run")
    before = {j["jid"] for j in _rest(network, cluster, "/jobs/overview")["jobs"]}
    small = [a for s in SMALL for a in ("--set", s)]
    proc = _start_run(network, output, "--profile", "tiny", *small, *_beam_sets(cluster))
    try:
        wait_for_path(output, TRANSFORM_SINK_OPENED, proc, timeout=3000)
        running = [j for j in _rest(network, cluster, "/jobs/overview")["jobs"] if j["state"] == "RUNNING"]
        assert len(running) == 1, running
        victim = _taskmanagers(network, cluster)[0]
        _kill_and_wait(victim)
        # What Kubernetes or a supervisor would do: bring the TaskManager back (`up` starts what is missing).
        _petseg_flink(network, "up", "--dir", cluster.state_dir)
        proc.wait(timeout=3600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    jobs = [j for j in _rest(network, cluster, "/jobs/overview")["jobs"] if j["jid"] not in before]
    return FlinkRun(
        output, proc.console_path.read_text(errors="replace"), proc.returncode, victim, running[0]["jid"], jobs
    )


def _start_run(network, output: pathlib.Path, *args: str) -> subprocess.Popen:
    """`petseg run` in the cluster's network and a process group of its own (to kill); console to a file."""
    output.mkdir(parents=True, exist_ok=True)
    console = output.parent / f"{output.name}.console"
    with open(console, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            network.command(petseg.command(output, *args)),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=petseg.REPO,
            start_new_session=True,
        )
    proc.console_path = console
    return proc


def _kill_and_wait(pid: int) -> None:
    """SIGKILLs `pid` and returns once it has died (its pidfd turns readable), so `up` sees it dead."""
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        readable, _, _ = select.select([pidfd], [], [], 60)
        assert readable, f"TaskManager {pid} outlived SIGKILL by a minute"
    finally:
        os.close(pidfd)


def test_beam_components_run_on_flink_with_parallelism_2(network, cluster, flink_run):
    print(flink_run.console)  # the console of `petseg run`, shown with `pytest -s`
    assert flink_run.returncode == 0, flink_run.console[-4000:]
    summary = json.loads((flink_run.output / "summary.json").read_text())
    assert set(BEAM_COMPONENTS) <= set(summary["components"])
    # One finished Flink job per Beam component: Flink restarts a job in place, under the same id.
    assert sorted(j["state"] for j in flink_run.jobs) == ["FINISHED"] * len(BEAM_COMPONENTS), flink_run.jobs
    hosts = set()
    for job in flink_run.jobs:
        detail = _rest(network, cluster, f"/jobs/{job['jid']}")
        print(
            job["name"],
            job["state"],
            f"{job['duration'] / 1000:.0f} s",
            len(detail["vertices"]),
            "vertices,",
            "parallelism",
            sorted({v["parallelism"] for v in detail["vertices"]}),
        )
        assert min(v["parallelism"] for v in detail["vertices"]) >= 2, job["name"]
        vertex = detail["vertices"][0]["id"]
        tms = _rest(network, cluster, f"/jobs/{job['jid']}/vertices/{vertex}/taskmanagers")
        hosts |= {tm["taskmanager-id"] for tm in tms["taskmanagers"]}
    # Both TaskManagers did work: each ran subtasks of the jobs.
    assert len(hosts) >= 2, hosts
    # The console keeps to petseg's own lines: no Java or Flink output.
    assert "org.apache" not in flink_run.console and "log4j" not in flink_run.console


def test_transformed_examples_and_metrics_equal_a_direct_runner_run(flink_run, tmp_path):
    report = flink_equality.compare_with_direct(flink_run.output, str(tmp_path), SMALL)
    print(json.dumps(report, indent=1))
    assert report["transformed_examples"]["flink"] == report["transformed_examples"]["direct"] > 0
    assert report["transformed_examples"]["identical"], report["transformed_examples"]
    assert report["metrics"]["keys"] and report["metrics"]["max_abs_diff"] <= METRIC_TOLERANCE, report["metrics"]


def _taskmanagers(network, cluster) -> list:
    """Pids of the TaskManagers `petseg flink status` reports alive."""
    return [
        p["pid"] for p in _status(network, cluster)["processes"] if p["name"].startswith("taskmanager") and p["alive"]
    ]


def test_flink_restarts_the_transform_job_when_a_taskmanager_dies(network, cluster, flink_run):
    """Flink's own failover: the job that lost a TaskManager ran again as new attempts and finished; petseg ran once."""
    assert flink_run.victim not in _taskmanagers(network, cluster)
    assert len(_taskmanagers(network, cluster)) == cluster.taskmanagers
    job = _rest(network, cluster, f"/jobs/{flink_run.transform_job}")
    assert job["state"] == "FINISHED", job["state"]
    # Each restart of the whole job ("full" failover) starts every subtask as a new attempt (0 is the first).
    attempts: Dict[str, List[int]] = {}
    for vertex in job["vertices"]:
        subtasks = _rest(network, cluster, f"/jobs/{flink_run.transform_job}/vertices/{vertex['id']}")
        attempts[vertex["name"][:60]] = [s["attempt"] for s in subtasks["subtasks"]]
    assert all(min(a) >= 1 for a in attempts.values()), attempts
    history = _rest(network, cluster, f"/jobs/{flink_run.transform_job}/exceptions")
    assert history["exceptionHistory"]["entries"], history
    # One petseg run, one Transform execution: the recovery was Flink's, not a rerun of the component.
    assert flink_run.returncode == 0, flink_run.console[-4000:]
    assert "[petseg] Transform done" in flink_run.console and "Transform failed" not in flink_run.console
    with RunArtifacts(str(flink_run.output / "metadata.sqlite")) as run:
        assert len(run.executions(names.TRANSFORM_ID)) == 1
    # The killed attempt's sink folder (it was open: the kill waited for it) is gone: the Trainer globs `Split-*/*`.
    splits = flink_run.output / "pipeline_root" / names.TRANSFORM_ID / "transformed_examples"
    assert not list(splits.rglob("beam-temp-*")), sorted(splits.rglob("*"))


# Last: the pool's spare workers are still importing TF right after `up`, and the pipeline run
# overlaps that wait with its own first components, where this one-stage job would only wait.
def test_a_python_error_in_a_flink_task_reaches_the_caller_as_its_traceback(network, cluster, tmp_path):
    shown_path = tmp_path / "shown.txt"
    _inside(network, sys.executable, "-c", ERROR_JOB, str(shown_path), *_beam_sets(cluster)[1::2])
    shown = shown_path.read_text()
    assert "Traceback (most recent call last):" in shown
    # The worker's last traceback only: Beam's message chains the function's own one before it.
    assert "During handling of the above exception" not in shown, shown
    assert "ValueError: invalid literal for int() with base 10: 'two'" in shown
    assert "\tat org.apache" not in shown and "at org.apache.flink" not in shown


# A pipeline whose task fails, submitted from the cluster's network; writes what the caller shows to argv[1].
ERROR_JOB = """
import pathlib, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from config.profiles import load_config
from engine import errors
from engine.beam_args import beam_pipeline_args

config = load_config("tiny", overrides=sys.argv[2:])
options = PipelineOptions(beam_pipeline_args(config.beam) + ["--job_name=petseg-error-test"])
try:
    with beam.Pipeline(options=options) as pipeline:
        # A builtin: the SDK worker cannot import this script.
        _ = pipeline | beam.Create(["1", "two", "3"]) | beam.Map(int)
except Exception as failure:
    pathlib.Path(sys.argv[1]).write_text(errors.readable(str(failure)))
else:
    sys.exit("the pipeline succeeded")
"""

"""StatisticsGen, Transform and the Evaluator on a real local Flink cluster, against DirectRunner on the same data."""

import dataclasses
import json
import os
import pathlib
import select
import signal
from typing import Dict, List

import pytest

from config import names
from engine import errors, flink
from report.artifacts import RunArtifacts
from support import flink_equality, petseg
from support.events import wait_for_path

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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real cluster whose processes bind free loopback ports themselves (a developer's `petseg flink up` may
    hold the defaults); `up` reads back the ports they bound."""
    spec = flink.ClusterSpec(state_dir=str(tmp_path_factory.mktemp("flink")), **dict.fromkeys(flink.PORT_FIELDS, 0))
    spec = flink.ClusterSpec(**flink.up(spec, timeout=600)["spec"])
    ports = [getattr(spec, field) for field in flink.PORT_FIELDS]
    assert all(ports) and len(set(ports)) == len(ports), ports
    started = {p["pid"] for p in flink.read_state(spec.dir)["processes"]}
    try:
        yield spec
    finally:
        started |= {p["pid"] for p in (flink.read_state(spec.dir) or {"processes": []})["processes"]}
        flink.down(spec)
        # Nothing left: no process of any group `up` started (SDK workers included), none whose command
        # line names the cluster's folder, no port open.
        assert not [pid for pid in started if flink._group_alive(pid)]
        assert not _processes_naming(str(spec.dir))
        assert not [p for p in ports if flink._port_open(p)]


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
    return ["--set", "beam.runner=flink", "--set", f"beam.job_endpoint={spec.job_endpoint}",
            "--set", f"beam.environment_config={spec.worker_pool}",
            "--set", f"beam.flink_master=127.0.0.1:{spec.rest_port}"]


@dataclasses.dataclass
class FlinkRun:
    output: pathlib.Path
    console: str  # the console of the one `petseg run`, whose TaskManager was killed
    returncode: int
    victim: int
    transform_job: str  # the Flink job id that was running when the TaskManager died
    jobs: List[dict]  # every job of the run, from Flink's REST API


@pytest.fixture(scope="module")
def flink_run(cluster, tmp_path_factory):
    """One small `petseg run` on the cluster; a TaskManager is SIGKILLed once Transform's job writes.

    One run serves every check: the job list, the equality with DirectRunner and Flink's recovery.
    Killing inside it costs one Transform job attempt more, not a second pipeline run.
    """
    output = tmp_path_factory.mktemp("flink_run")
    before = {j["jid"] for j in flink.rest_get(cluster.rest_url, "/jobs/overview")["jobs"]}
    small = [a for s in SMALL for a in ("--set", s)]
    proc = petseg.start(output, "--profile", "tiny", *small, *_beam_sets(cluster))
    try:
        wait_for_path(output, TRANSFORM_SINK_OPENED, proc, timeout=3000)
        running = [j for j in flink.rest_get(cluster.rest_url, "/jobs/overview")["jobs"] if j["state"] == "RUNNING"]
        assert len(running) == 1, running
        victim = flink.taskmanager_pids(cluster.dir)[0]
        _kill_and_wait(victim)
        # What Kubernetes or a supervisor would do: bring the TaskManager back (`up` starts what is missing).
        flink.up(cluster, timeout=600)
        proc.wait(timeout=3600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    jobs = [j for j in flink.rest_get(cluster.rest_url, "/jobs/overview")["jobs"] if j["jid"] not in before]
    return FlinkRun(output, proc.console_path.read_text(errors="replace"), proc.returncode, victim,
                    running[0]["jid"], jobs)


def _kill_and_wait(pid: int) -> None:
    """SIGKILLs `pid` and returns once it has died (its pidfd turns readable), so `up` sees it dead."""
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        readable, _, _ = select.select([pidfd], [], [], 60)
        assert readable, f"TaskManager {pid} outlived SIGKILL by a minute"
    finally:
        os.close(pidfd)


def test_beam_components_run_on_flink_with_parallelism_2(cluster, flink_run):
    print(flink_run.console)  # the console of `petseg run`, shown with `pytest -s`
    assert flink_run.returncode == 0, flink_run.console[-4000:]
    summary = json.loads((flink_run.output / "summary.json").read_text())
    assert set(BEAM_COMPONENTS) <= set(summary["components"])
    # One finished Flink job per Beam component: Flink restarts a job in place, under the same id.
    assert sorted(j["state"] for j in flink_run.jobs) == ["FINISHED"] * len(BEAM_COMPONENTS), flink_run.jobs
    hosts = set()
    for job in flink_run.jobs:
        detail = flink.rest_get(cluster.rest_url, f"/jobs/{job['jid']}")
        print(job["name"], job["state"], f"{job['duration'] / 1000:.0f} s", len(detail["vertices"]), "vertices,",
              "parallelism", sorted({v["parallelism"] for v in detail["vertices"]}))
        assert min(v["parallelism"] for v in detail["vertices"]) >= 2, job["name"]
        vertex = detail["vertices"][0]["id"]
        tms = flink.rest_get(cluster.rest_url, f"/jobs/{job['jid']}/vertices/{vertex}/taskmanagers")
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


def test_flink_restarts_the_transform_job_when_a_taskmanager_dies(cluster, flink_run):
    """Flink's own failover: the job that lost a TaskManager ran again as new attempts and finished; petseg ran once."""
    assert flink_run.victim not in flink.taskmanager_pids(cluster.dir)
    assert len(flink.taskmanager_pids(cluster.dir)) == cluster.taskmanagers
    job = flink.rest_get(cluster.rest_url, f"/jobs/{flink_run.transform_job}")
    assert job["state"] == "FINISHED", job["state"]
    # Each restart of the whole job ("full" failover) starts every subtask as a new attempt (0 is the first).
    attempts: Dict[str, List[int]] = {}
    for vertex in job["vertices"]:
        subtasks = flink.rest_get(cluster.rest_url, f"/jobs/{flink_run.transform_job}/vertices/{vertex['id']}")
        attempts[vertex["name"][:60]] = [s["attempt"] for s in subtasks["subtasks"]]
    assert all(min(a) >= 1 for a in attempts.values()), attempts
    history = flink.rest_get(cluster.rest_url, f"/jobs/{flink_run.transform_job}/exceptions")
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
def test_a_python_error_in_a_flink_task_reaches_the_caller_as_its_traceback(cluster):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from engine.beam_args import beam_pipeline_args
    from config.profiles import load_config

    config = load_config("tiny", overrides=_beam_sets(cluster)[1::2])
    options = PipelineOptions(beam_pipeline_args(config.beam) + ["--job_name=petseg-error-test"])
    with pytest.raises(Exception) as failure:
        with beam.Pipeline(options=options) as pipeline:
            # A builtin: the SDK worker cannot import this test module (pytest loads it by path).
            _ = pipeline | beam.Create(["1", "two", "3"]) | beam.Map(int)
    shown = errors.readable(str(failure.value))
    assert "Traceback (most recent call last):" in shown
    assert "ValueError: invalid literal for int() with base 10: 'two'" in shown
    assert "\tat org.apache" not in shown and "at org.apache.flink" not in shown

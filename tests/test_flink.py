"""StatisticsGen, Transform and the Evaluator on a real local Flink cluster, against DirectRunner on the same data."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import List, Optional

import pytest

from engine import errors, flink
from support import flink_equality

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = pathlib.Path(__file__).resolve().parent.parent
BEAM_COMPONENTS = ("StatisticsGen", "Transform", "Evaluator")
# Smaller than the tiny profile: these tests are about the engine, and every image is work for both
# the cluster and the DirectRunner rerun it is compared with.
SMALL = ("model.image_size=32", "data.synthetic_train_images=16", "data.synthetic_test_images=8", "train.epochs=1")
# Metrics of the same model on the same eval split, DirectRunner vs Flink: only float summation order
# differs (per-worker partial confusion matrices merged in another order).
METRIC_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real cluster on free loopback ports (a developer's own `petseg flink up` may hold the defaults)."""
    rest, rpc, job, artifact, expansion, pool = flink.free_ports(6)
    spec = flink.ClusterSpec(state_dir=str(tmp_path_factory.mktemp("flink")), rest_port=rest, rpc_port=rpc,
                             job_port=job, artifact_port=artifact, expansion_port=expansion,
                             worker_pool_port=pool)
    flink.up(spec, timeout=600)
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
        assert not [p for p in (rest, rpc, job, artifact, expansion, pool) if flink._port_open(p)]


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


def _command(output, spec):
    small = [a for s in SMALL for a in ("--set", s)]
    return [sys.executable, "-m", "cli.main", "run", "--profile", "tiny", "--output", str(output),
            *small, *_beam_sets(spec)]


@dataclasses.dataclass
class FlinkRun:
    output: pathlib.Path
    console: str  # stderr of the run whose TaskManager was killed
    victim: int
    rerun_console: Optional[str]  # stderr of the same command again, when the first run failed
    jobs: List[dict]

    @property
    def recovered(self) -> bool:
        return self.rerun_console is None


@pytest.fixture(scope="module")
def flink_run(cluster, tmp_path_factory):
    """One small `petseg run` on the cluster; a TaskManager is SIGKILLed while Transform's job runs.

    One run serves every check: the job list, the equality with DirectRunner and the recovery. Killing
    inside it costs one Transform job more, not a second pipeline run.
    """
    output = tmp_path_factory.mktemp("flink_run")
    started = time.time() * 1000
    proc = subprocess.Popen(_command(output, cluster), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        seen, victim = _kill_a_taskmanager_once_transform_runs(cluster, proc)
        # What Kubernetes or a supervisor would do: bring the TaskManager back (`up` starts what is missing).
        flink.up(cluster, timeout=600)
        console = (seen + proc.stderr.read()).decode(errors="replace")
        proc.wait(timeout=3600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rerun = None
    if proc.returncode != 0:
        again = subprocess.run(_command(output, cluster), capture_output=True, text=True, timeout=3600, cwd=REPO)
        assert again.returncode == 0, again.stderr[-6000:]
        rerun = again.stderr
    jobs = [j for j in flink.rest_get(cluster.rest_url, "/jobs/overview")["jobs"] if j["start-time"] >= started]
    return FlinkRun(output, console, victim, rerun, jobs)


def test_beam_components_run_on_flink_with_parallelism_2(cluster, flink_run):
    print(flink_run.console)  # the console of `petseg run`, shown with `pytest -s`
    summary = json.loads((flink_run.output / "summary.json").read_text())
    assert set(BEAM_COMPONENTS) <= set(summary["components"])
    # One finished Flink job per Beam component; the only other one allowed is the Transform job that
    # lost its TaskManager, when Flink could not restart it.
    finished = [j for j in flink_run.jobs if j["state"] == "FINISHED"]
    others = [j for j in flink_run.jobs if j["state"] != "FINISHED"]
    assert len(finished) >= len(BEAM_COMPONENTS), flink_run.jobs
    assert len(others) <= (0 if flink_run.recovered else 1), others
    hosts = set()
    for job in finished:
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
    for console in (flink_run.console, flink_run.rerun_console or ""):
        assert "org.apache" not in console and "log4j" not in console


def test_transformed_examples_and_metrics_equal_a_direct_runner_run(flink_run, tmp_path):
    report = flink_equality.compare_with_direct(flink_run.output, str(tmp_path), SMALL)
    print(json.dumps(report, indent=1))
    assert report["transformed_examples"]["flink"] == report["transformed_examples"]["direct"] > 0
    assert report["transformed_examples"]["identical"], report["transformed_examples"]
    assert report["metrics"]["keys"] and report["metrics"]["max_abs_diff"] <= METRIC_TOLERANCE, report["metrics"]


def test_a_taskmanager_killed_during_transform(cluster, flink_run):
    """Flink restarts the job once the TaskManager is back, or the component fails clearly and a rerun resumes."""
    assert flink_run.victim not in flink.taskmanager_pids(cluster.dir)
    assert len(flink.taskmanager_pids(cluster.dir)) == cluster.taskmanagers
    print(f"recovered by Flink's restart strategy: {flink_run.recovered}")
    if flink_run.recovered:
        assert "[petseg] Transform done" in flink_run.console
    else:
        assert "petseg: Transform failed:" in flink_run.console, flink_run.console[-4000:]
        assert "[petseg] StatisticsGen from cache" in flink_run.rerun_console
        assert "[petseg] Transform done" in flink_run.rerun_console
    summary = json.loads((flink_run.output / "summary.json").read_text())
    assert summary["components"]["Transform"]["cached"] is False
    # The killed attempt's sink folder, if it had opened one, is gone: the Trainer globs `Split-*/*`.
    splits = flink_run.output / "pipeline_root" / "Transform" / "transformed_examples"
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


def _kill_a_taskmanager_once_transform_runs(cluster, proc, timeout=3000):
    """SIGKILLs a TaskManager while Transform's job runs; returns the stderr read so far and the pid."""
    deadline = time.monotonic() + timeout
    seen = b""
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline:
        chunk = proc.stderr.read()
        seen += chunk or b""
        if b"[petseg] Transform running" in seen:
            running = [j for j in flink.rest_get(cluster.rest_url, "/jobs/overview")["jobs"]
                       if j["state"] == "RUNNING" and j["tasks"]["running"] > 0]
            if running:
                victim = flink.taskmanager_pids(cluster.dir)[0]
                os.kill(victim, signal.SIGKILL)
                # SIGKILL lands a moment later; `up` must see it dead, or it finds the cluster complete.
                while flink._alive(victim):
                    time.sleep(0.1)
                os.set_blocking(proc.stderr.fileno(), True)
                return seen, victim
        assert proc.poll() is None, seen.decode(errors="replace")[-4000:]
        time.sleep(0.5)
    raise AssertionError("Transform never ran on the cluster")

"""StatisticsGen, Transform and the Evaluator on a real local Flink cluster, against DirectRunner on the same data."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from engine import errors, flink
from support import flink_equality

pytestmark = pytest.mark.cluster

REPO = pathlib.Path(__file__).resolve().parent.parent
BEAM_COMPONENTS = ("StatisticsGen", "Transform", "Evaluator")
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


def _petseg_run(output, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--profile", "tiny", "--output", str(output),
                           *args], capture_output=True, text=True, timeout=3600, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def flink_run(cluster, tmp_path_factory):
    output = tmp_path_factory.mktemp("flink_run")
    started = time.time() * 1000
    proc = _petseg_run(output, *_beam_sets(cluster))
    jobs = [j for j in flink.rest_get(cluster.rest_url, "/jobs/overview")["jobs"] if j["start-time"] >= started]
    return output, proc, jobs


def test_beam_components_run_on_flink_with_parallelism_2(cluster, flink_run):
    output, proc, jobs = flink_run
    print(proc.stderr)  # the console of `petseg run`, shown with `pytest -s`
    summary = json.loads((output / "summary.json").read_text())
    assert set(BEAM_COMPONENTS) <= set(summary["components"])
    # One Flink job per Beam component, each finished, every vertex at parallelism 2 or more.
    assert len(jobs) >= len(BEAM_COMPONENTS), jobs
    for job in jobs:
        assert job["state"] == "FINISHED", job
        detail = flink.rest_get(cluster.rest_url, f"/jobs/{job['jid']}")
        print(job["name"], job["state"], f"{job['duration'] / 1000:.0f} s", len(detail["vertices"]), "vertices,",
              "parallelism", sorted({v["parallelism"] for v in detail["vertices"]}))
        assert min(v["parallelism"] for v in detail["vertices"]) >= 2, job["name"]
    # Both TaskManagers did work: each ran subtasks of the jobs.
    hosts = set()
    for job in jobs:
        detail = flink.rest_get(cluster.rest_url, f"/jobs/{job['jid']}")
        vertex = detail["vertices"][0]["id"]
        tms = flink.rest_get(cluster.rest_url, f"/jobs/{job['jid']}/vertices/{vertex}/taskmanagers")
        hosts |= {tm["taskmanager-id"] for tm in tms["taskmanagers"]}
    assert len(hosts) >= 2, hosts
    # The console keeps to petseg's own lines: no Java or Flink output.
    assert "org.apache" not in proc.stderr and "log4j" not in proc.stderr


def test_transformed_examples_and_metrics_equal_a_direct_runner_run(flink_run, tmp_path):
    output, _, _ = flink_run
    report = flink_equality.compare_with_direct(output, str(tmp_path))
    print(json.dumps(report, indent=1))
    assert report["transformed_examples"]["flink"] == report["transformed_examples"]["direct"] > 0
    assert report["transformed_examples"]["identical"], report["transformed_examples"]
    assert report["metrics"]["keys"] and report["metrics"]["max_abs_diff"] <= METRIC_TOLERANCE, report["metrics"]


def test_a_python_error_in_a_flink_task_reaches_the_caller_as_its_traceback(cluster):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from engine.beam_args import beam_pipeline_args
    from pipeline.config import load_config

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



def test_a_taskmanager_killed_during_transform(cluster, flink_run):
    """Flink restarts the job once the TaskManager is back, or the component fails clearly and a rerun resumes."""
    output, _, _ = flink_run
    # Another image size changes only Transform's inputs: upstream components come from cache.
    sets = [*_beam_sets(cluster), "--set", "model.image_size=32", "--set", "train.epochs=1"]
    command = [sys.executable, "-m", "pipeline.cli", "run", "--profile", "tiny", "--output", str(output), *sets]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    seen, victim = _kill_a_taskmanager_once_transform_runs(cluster, proc)
    # What Kubernetes or a supervisor would do: bring the TaskManager back (`up` starts what is missing).
    flink.up(cluster, timeout=600)
    assert victim not in flink.taskmanager_pids(cluster.dir)
    stderr = (seen + proc.stderr.read()).decode(errors="replace")
    proc.wait(timeout=3600)
    recovered = proc.returncode == 0
    if not recovered:
        assert "petseg: Transform failed:" in stderr, stderr[-4000:]
        stderr = _petseg_run(output, *sets).stderr
        assert "[petseg] StatisticsGen from cache" in stderr
    print(f"recovered by Flink's restart strategy: {recovered}")
    assert "[petseg] Transform done" in stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["components"]["Transform"]["cached"] is False


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
                os.set_blocking(proc.stderr.fileno(), True)
                return seen, victim
        assert proc.poll() is None, seen.decode(errors="replace")[-4000:]
        time.sleep(0.5)
    raise AssertionError("Transform never ran on the cluster")

"""choose_strategy and "auto" precision under it: mirrored == single device, multi-worker sync, resume, bf16 forced."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from support import tfjob
from trainer import strategy as strategy_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "support" / "strategy_worker.py"
# Only guards against a hung multi-worker peer; the shared 2-core machine can be 10x oversubscribed.
TIMEOUT = 600
FORCED_BF16 = ["--precision", "auto", "--cpu-bf16", "yes", "--bf16-min-speedup", "0"]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _start(out, *args, env=None, network=None):
    # Each run is its own process: logical devices and cluster membership can be set once per process.
    argv = [sys.executable, str(WORKER), "--out", str(out), *map(str, args)]
    return subprocess.Popen(
        network.command(argv) if network else argv,
        cwd=REPO,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc, expect_rc=0):
    """Waits for a worker (once; later calls reuse its output) and checks its exit code."""
    if not hasattr(proc, "output"):
        try:
            proc.output, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.output = proc.communicate()[0] + "\n[timed out]"
    assert proc.returncode == expect_rc, proc.output[-4000:]


def _weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def _result(out, task=0):
    return json.loads((out / f"result-{task}.json").read_text())


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts every independent worker at once: on 2 cores, mostly TF import time, which overlaps."""
    root = tmp_path_factory.mktemp("strategy")
    # Its own network namespace: nothing else can hold these ports.
    network = tfjob.PrivateNetwork()
    started = {
        "single": _start(root / "single", "--cpu-replicas", 1, "--then-split-cpu"),
        "mirrored": _start(root / "mirrored", "--cpu-replicas", 2),
        "resume": _start(
            root / "resume", "--epochs", 3, "--backup-dir", root / "resume" / "backup", "--kill-after-epoch", 0
        ),
        # The bf16 branch of "auto" on any CPU: the flags forced, the real step timed, bfloat16 chosen.
        "mirrored_bf16": _start(root / "mirrored_bf16", "--cpu-replicas", 2, *FORCED_BF16),
    }
    # Two clusters: float32, and "auto" where only the chief's CPU has bf16 instructions.
    flags = {"mwms": [[], []], "mwms_bf16": [FORCED_BF16, ["--precision", "auto", "--cpu-bf16", "no"]]}
    for c, (name, per_task) in enumerate(flags.items()):
        cluster = {"worker": [f"127.0.0.1:{tfjob.DEFAULT_PORT + 2 * c + i}" for i in range(2)]}
        for i in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            started[f"{name}{i}"] = _start(root / name, *per_task[i], env=_env(TF_CONFIG=tf_config), network=network)
    yield root, started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    network.close()


def test_mirrored_on_two_logical_cpus_matches_one_device(runs, record_property):
    root, started = runs
    single, mirrored = root / "single", root / "mirrored"
    _finish(started["single"])
    _finish(started["mirrored"])

    # The default strategy: BackupAndRestore rejects OneDeviceStrategy.
    assert (_result(single)["strategy"], _result(single)["replicas"]) == ("_DefaultDistributionStrategy", 1)
    assert (_result(mirrored)["strategy"], _result(mirrored)["replicas"]) == ("MirroredStrategy", 2)
    np.testing.assert_allclose(_result(mirrored)["loss"], _result(single)["loss"], rtol=1e-4)
    a, b = _weights(single / "weights-0.npz"), _weights(mirrored / "weights-0.npz")
    diff = _max_abs_diff(a, b)
    record_property("max_abs_weight_diff", diff)
    print(
        f"mirrored vs single: max |w diff| = {diff:.3g}; step s: single {_result(single)['step_seconds']:.4f}, "
        f"mirrored {_result(mirrored)['step_seconds']:.4f}"
    )
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def test_multi_worker_mirrored_keeps_workers_in_sync(runs):
    root, started = runs
    tmp_path = root / "mwms"
    _finish(started["mwms0"])
    _finish(started["mwms1"])

    for task in range(2):
        assert _result(tmp_path, task)["strategy"] == "CollectiveAllReduceStrategy"  # MultiWorkerMirroredStrategy
        assert _result(tmp_path, task)["replicas"] == 2
    w0, w1 = _weights(tmp_path / "weights-0.npz"), _weights(tmp_path / "weights-1.npz")
    assert _max_abs_diff(w0, w1) == 0.0  # all-reduced gradients: the replicas cannot drift
    assert _result(tmp_path, 0)["loss"] == _result(tmp_path, 1)["loss"]


def test_backup_and_restore_resumes_after_a_kill(runs):
    root, started = runs
    tmp_path = root / "resume"
    backup = tmp_path / "backup"
    _finish(started["resume"], expect_rc=17)
    assert (tmp_path / "epochs.txt").read_text().split() == ["0"]
    assert backup.exists() and not (tmp_path / "weights-0.npz").exists()

    _finish(_start(tmp_path, "--epochs", 3, "--backup-dir", backup))
    # The rerun starts at epoch index 1, the one after the last backed-up epoch, and completes.
    assert (tmp_path / "epochs.txt").read_text().split() == ["0", "1", "2"]
    assert len(_result(tmp_path)["loss"]) == 2
    assert not backup.exists() or not any(backup.iterdir())  # removed after a finished run


def test_auto_times_the_model_inside_a_mirrored_scope_and_trains_in_bfloat16(runs):
    root, started = runs
    _finish(started["mirrored"])
    _finish(started["mirrored_bf16"])
    result = _result(root / "mirrored_bf16")
    assert (result["policy"], result["compute_dtype"], result["replicas"]) == ("mixed_bfloat16", "bfloat16", 2)
    # The configured model's step, timed once in each dtype from inside the MirroredStrategy scope.
    assert [sorted(t) for t in result["timed_steps"]] == [["bfloat16", "float32"]]
    # The float32 run's model and data: bfloat16 steps train it to nearly the same losses.
    print(f"losses: float32 {_result(root / 'mirrored')['loss']}, bfloat16 {result['loss']}")
    np.testing.assert_allclose(result["loss"], _result(root / "mirrored")["loss"], rtol=0.02)


def test_multi_worker_auto_is_decided_on_the_chief_and_shared(runs):
    root, started = runs
    _finish(started["mwms_bf160"])
    _finish(started["mwms_bf161"])
    chief, worker = _result(root / "mwms_bf16", 0), _result(root / "mwms_bf16", 1)
    # Alone, the worker (no bf16 instructions) would train in float32 without timing anything.
    assert worker["timed_steps"] == [] and len(chief["timed_steps"]) == 1
    assert chief["policy"] == worker["policy"] == "mixed_bfloat16"
    assert chief["compute_dtype"] == worker["compute_dtype"] == "bfloat16"
    w0, w1 = _weights(root / "mwms_bf16" / "weights-0.npz"), _weights(root / "mwms_bf16" / "weights-1.npz")
    assert _max_abs_diff(w0, w1) == 0.0


def test_splitting_cpu_after_tf_started_fails_clearly(runs):
    root, started = runs
    _finish(started["single"])
    assert "before any other TensorFlow work" in (root / "single" / "split-error.txt").read_text()


def test_tf_config_worker_count():
    assert strategy_lib._tf_config_workers("") == 0
    one = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert strategy_lib._tf_config_workers(json.dumps(one)) == 1
    two = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}
    assert strategy_lib._tf_config_workers(json.dumps(two)) == 2

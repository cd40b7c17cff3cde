"""TFX's Trainer executor with our run_fn as a TFJob's chief and worker: one export, resume after a replica dies.

Each replica is its own process with the TF_CONFIG the Training Operator gives its pod, its Service
names mapped to loopback ports of a private network namespace.
"""

import dataclasses
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import pytest
import tensorflow as tf

from support import tfjob, trainer_fixtures
from support.trainer_fixtures import transform_run  # noqa: F401 (pytest fixture)
from trainer import run
from transform import features
from config import names

JOB, NAMESPACE, REPLICAS = "petseg-trainer", "kubeflow", {"Chief": 1, "Worker": 1}
# Only guards against a hung peer; the shared 2-core machine can be 10x oversubscribed.
TIMEOUT = 900
EPOCHS = 3
# The chief says when this many epochs are backed up; the worker is killed then.
KILL_AFTER = 1


@dataclasses.dataclass
class Replica:
    name: str
    proc: subprocess.Popen
    log: pathlib.Path
    started: float
    seconds: Optional[float] = None

    def wait(self) -> int:
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.seconds = time.perf_counter() - self.started
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text()


def _tf_configs() -> Dict[str, str]:
    """Replica name -> TF_CONFIG as the operator writes it, then with its hosts on loopback ports."""
    addresses = [a for hosts in tfjob.cluster_spec(JOB, NAMESPACE, REPLICAS).values() for a in hosts]
    ports = {address: tfjob.DEFAULT_PORT + i for i, address in enumerate(addresses)}
    return {f"{kind.lower()}-{i}": tfjob.on_loopback(tfjob.tf_config(JOB, NAMESPACE, REPLICAS, kind, i), ports)
            for kind, count in REPLICAS.items() for i in range(count)}


def _start(name: str, metadata: str, execution_id: int, root: pathlib.Path, network=None, tf_config=None,
           extra: List[str] = (), pass_fds=()) -> Replica:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    # Each replica's scratch (e.g. a worker's own export) stays where the test can look.
    env["TMPDIR"] = str(root / f"tmp-{name}")
    os.makedirs(env["TMPDIR"], exist_ok=True)
    argv = [sys.executable, trainer_fixtures.__file__, "--executor", "--metadata", metadata,
            "--execution-id", str(execution_id), "--overrides", json.dumps({"train.epochs": EPOCHS}), *extra]
    log = root / f"{name}.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(network.command(argv) if network else argv, cwd=trainer_fixtures.REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds)
    return Replica(name, proc, log, time.perf_counter())


def _cluster(metadata: str, execution_id: int, root: pathlib.Path, network, extra: Dict[str, List[str]] = None,
             pass_fds=()) -> Dict[str, Replica]:
    return {name: _start(name, metadata, execution_id, root, network, config, (extra or {}).get(name, ()),
                         pass_fds if name in (extra or {}) else ())
            for name, config in _tf_configs().items()}


def _exports(*folders: pathlib.Path) -> List[pathlib.Path]:
    return sorted(path.parent for folder in folders for path in folder.rglob("saved_model.pb"))


@pytest.fixture(scope="module")
def runs(transform_run, tmp_path_factory):
    """One process, then chief + worker, then chief + worker with the worker killed and both restarted."""
    root = tmp_path_factory.mktemp("cluster")
    for folder in ("single", "cluster", "killed"):
        (root / folder).mkdir()
    results = {}
    single = _start("single", transform_run, 61, root / "single")
    single.wait()
    results["single"] = {"single": single}
    with tfjob.PrivateNetwork() as network:
        replicas = _cluster(transform_run, 62, root / "cluster", network)
        for replica in replicas.values():
            replica.wait()
        results["cluster"] = replicas

        read_end, write_end = os.pipe()
        replicas = _cluster(transform_run, 63, root / "killed", network,
                            extra={"chief-0": ["--signal-after-epoch", str(KILL_AFTER), "--signal-fd", str(write_end)]},
                            pass_fds=(write_end,))
        os.close(write_end)  # the chief holds the only write end: its exit means end of file here
        ready, _, _ = select.select([read_end], [], [], TIMEOUT)
        signalled = bool(ready) and os.read(read_end, 1) == b"1"
        os.close(read_end)
        replicas["worker-0"].proc.send_signal(signal.SIGKILL)
        first = {name: (replica.wait(), replica.seconds) for name, replica in replicas.items()}
        # restartPolicy OnFailure: the operator starts each failed replica's pod again, same TF_CONFIG.
        restarted = {name: _start(name, transform_run, 63, root / "killed", network, _tf_configs()[name])
                     for name, (code, _) in first.items() if code != 0}
        for replica in restarted.values():
            replica.wait()
        results["killed"] = {"signalled": signalled, "first": first, "restarted": restarted,
                             "logs": {name: replica.log for name, replica in replicas.items()}}
    # Wall seconds per replica against one process, for the record (pytest -s shows them).
    print(json.dumps({"single": single.seconds,
                      **{f"cluster.{n}": r.seconds for n, r in results["cluster"].items()},
                      **{f"killed.first.{n}": s for n, (_, s) in first.items()},
                      **{f"killed.restarted.{n}": r.seconds for n, r in restarted.items()}}))
    return root, results


def _fn_args(metadata: str, execution_id: int):
    return trainer_fixtures.fn_args(metadata, execution_id, trainer_fixtures.tiny_config(**{"train.epochs": EPOCHS}))


def _history(fn_args) -> dict:
    return json.loads((pathlib.Path(fn_args.model_run_dir) / "history.json").read_text())


def test_tf_config_is_the_operators():
    # The operator's own example shape (tensorflow.go's genTFConfig comment), for our Chief + Worker job.
    assert tfjob.tf_config(JOB, NAMESPACE, REPLICAS, "Worker", 0) == (
        '{"cluster":{"chief":["petseg-trainer-chief-0.kubeflow.svc:2222"],'
        '"worker":["petseg-trainer-worker-0.kubeflow.svc:2222"]},'
        '"task":{"type":"worker","index":0},"environment":"cloud"}')
    assert tfjob.tf_config(JOB, NAMESPACE, {"Chief": 1}, "Chief", 0) is None  # a one-pod job gets none


def test_chief_and_worker_train_together_and_export_once(runs, transform_run):
    root, results = runs
    assert results["single"]["single"].proc.returncode == 0, results["single"]["single"].text()[-4000:]
    replicas = results["cluster"]
    for name, replica in replicas.items():
        assert replica.proc.returncode == 0, f"{name}:\n{replica.text()[-4000:]}"
        assert "Strategy: MultiWorkerMirroredStrategy, 2 workers, 2 replicas in sync" in replica.text(), name
        assert "Training complete. Model written to" in replica.text(), name  # TFX's own check passed
    fn_args = _fn_args(transform_run, 62)
    # One export: the chief's, at serving_model_dir; the worker's scratch copy is gone.
    assert _exports(pathlib.Path(fn_args.serving_model_dir).parent, root / "cluster") == [
        pathlib.Path(fn_args.serving_model_dir)]
    # Only the chief writes the run's logs: TensorBoard's two folders and the history, nothing else.
    assert sorted(p.name for p in pathlib.Path(fn_args.model_run_dir).iterdir()) == [
        "history.json", "train", "validation"]
    assert _history(fn_args)["epoch"] == list(range(EPOCHS))
    assert not tf.io.gfile.exists(run.backup_dir(fn_args))

    served = tf.saved_model.load(fn_args.serving_model_dir).signatures[names.SERVING_SIGNATURE]
    raw = trainer_fixtures.split_records(trainer_fixtures.raw_examples(transform_run), "eval")[0]
    jpeg = tf.train.Example.FromString(raw).features.feature[features.RAW_IMAGE_KEY].bytes_list.value[0]
    assert tf.io.is_jpeg(jpeg)
    outputs = served(image_bytes=tf.constant([jpeg]))
    size = trainer_fixtures.tiny_config().model.image_size
    assert outputs["mask"].shape == (1, size, size) and outputs["mask"].dtype == tf.uint8
    assert np.isfinite(outputs["probabilities"].numpy()).all()


def test_a_killed_worker_restarts_and_the_run_resumes_from_the_backup(runs, transform_run):
    root, results = runs
    killed = results["killed"]
    logs = "\n".join(f"--- {name}\n{path.read_text()[-3000:]}" for name, path in killed["logs"].items())
    assert killed["signalled"], logs
    assert killed["first"]["worker-0"][0] == -signal.SIGKILL
    assert "worker-0" in killed["restarted"]
    for name, replica in killed["restarted"].items():
        assert replica.proc.returncode == 0, logs
    fn_args = _fn_args(transform_run, 63)
    # The restarted run trained only the epochs after the chief's last backup, and exported once.
    assert _history(fn_args)["epoch"] == list(range(KILL_AFTER, EPOCHS))
    assert _exports(pathlib.Path(fn_args.serving_model_dir).parent, root / "killed") == [
        pathlib.Path(fn_args.serving_model_dir)]
    assert not tf.io.gfile.exists(run.backup_dir(fn_args))

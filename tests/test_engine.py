"""Engine helpers that need no cluster: the readable error, the bench's crossover, status of nothing, ports."""

import json
import os
import select
import signal
import socket
import subprocess
import sys
from concurrent import futures

import grpc
import pytest

from bench import engines
from cli import main as cli
from engine import errors, flink, install

JOB_SERVER_MESSAGE = """java.lang.RuntimeException: Error received from SDK harness for instruction 7: Traceback (most recent call last):
  File "/venv/lib/python3.10/site-packages/apache_beam/runners/worker/sdk_worker.py", line 311, in _execute
    response = task()
  File "/work/transform/preprocessing.py", line 40, in decode_image
    raise ValueError("Unknown image file format")
ValueError: Unknown image file format [while running 'Transform/Decode']

\tat org.apache.beam.runners.fnexecution.control.FnApiControlClient$ResponseStreamObserver.onNext(FnApiControlClient.java:180)
\tat org.apache.beam.vendor.grpc.v1p60p1.io.grpc.stub.ServerCalls$StreamingServerCallHandler.onMessage(ServerCalls.java:262)
Caused by: java.util.concurrent.ExecutionException: boom
\t... 12 more"""


def test_readable_keeps_the_python_traceback_and_drops_the_java_stack():
    shown = errors.readable("Pipeline x failed in state FAILED: " + JOB_SERVER_MESSAGE)
    assert shown.startswith("Pipeline x failed in state FAILED: java.lang.RuntimeException")
    assert "Traceback (most recent call last):" in shown and "in decode_image" in shown
    assert shown.rstrip().endswith("ValueError: Unknown image file format [while running 'Transform/Decode']")
    assert "\tat org.apache" not in shown and "Caused by" not in shown


def test_readable_leaves_a_plain_python_message_alone():
    assert errors.readable("split 'test' is empty: none of the 3 lines") == "split 'test' is empty: none of the 3 lines"


def test_crossover_from_fixed_cost_and_marginal_rate():
    direct = {"marginal_images_per_second": 10.0, "fixed_seconds": 20.0}
    faster = {"marginal_images_per_second": 20.0, "fixed_seconds": 120.0}
    # 20 + n/10 = 120 + n/20  ->  n = 2000
    assert engines._crossover(direct, faster) == 2000
    assert engines._crossover(direct, {"marginal_images_per_second": 8.0, "fixed_seconds": 1.0}) is None


def test_status_and_down_of_a_folder_without_a_cluster(tmp_path):
    spec = flink.ClusterSpec(state_dir=str(tmp_path))
    assert flink.status(spec)["running"] is False
    assert flink.down(spec) == []


@pytest.fixture
def no_install(monkeypatch):
    """`up` must refuse before it installs (or starts) anything."""

    def install(log):
        raise AssertionError("up went on to install Flink")

    monkeypatch.setattr(flink.install, "ensure_flink", install)


def test_up_takes_only_real_distinct_ports(no_install, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["flink", "up", "--dir", str(tmp_path), "--rest-port", "0"])
    assert exit_.value.code == 2
    assert "--rest-port: '0' is not a port from 1 to 65535" in capsys.readouterr().err
    assert cli.main(["flink", "up", "--dir", str(tmp_path), "--job-port", "8081"]) == 2  # the default REST port
    assert "rest_port and job_port are the same port" in capsys.readouterr().err
    with pytest.raises(ValueError, match="worker_pool_port 70000 is not a port"):
        flink.ClusterSpec(worker_pool_port=70000)


def test_up_refuses_a_port_in_use_before_installing_anything(no_install, tmp_path):
    with socket.socket() as taken:
        taken.bind((flink.HOST, 0))  # this test's own socket: the kernel's choice, held while `up` looks
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(flink.ClusterError, match=f"{flink.HOST}:{port}.* already in use"):
            flink.up(flink.ClusterSpec(state_dir=str(tmp_path), rest_port=port))
    assert flink.read_state(tmp_path) is None


def test_a_worker_pool_refuses_a_port_another_grpc_server_holds():
    """gRPC servers bind with SO_REUSEPORT by default, so a second pool would share the port; ours refuses it."""
    other = grpc.server(futures.ThreadPoolExecutor(1))  # gRPC's defaults, as Beam's own pool binds
    port = other.add_insecure_port(f"{flink.HOST}:0")
    other.start()
    pool = subprocess.Popen(
        [sys.executable, "-m", "engine.worker_pool", f"--port={port}", "--spares=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=install.PROJECT_DIR,
    )
    try:
        output, _ = pool.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        pool.kill()
        output, _ = pool.communicate()
    finally:
        other.stop(0)
    assert pool.returncode not in (None, 0, -signal.SIGKILL), output[-2000:]
    assert "Failed to bind" in output, output[-2000:]


def test_down_returns_only_once_every_thread_of_its_processes_ended(tmp_path):
    """A process whose main thread has ended shows as a zombie while its other threads still run (a JVM
    shutting down, its sockets still open): `down` waits for those threads too."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LINGERING], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pidfd = os.pidfd_open(proc.pid)
    try:
        assert proc.stdout.readline() == "main thread ended\n"
        (tmp_path / flink.STATE_FILE).write_text(json.dumps({"processes": [{"name": "x", "pid": proc.pid}]}))
        assert flink.down(flink.ClusterSpec(state_dir=str(tmp_path))) == [proc.pid]
        ended, _, _ = select.select([pidfd], [], [], 0)
        assert ended, "down returned while a thread of its process still ran"
    finally:
        os.close(pidfd)
        proc.kill()
        proc.wait()


# A process that ignores SIGTERM and whose main thread ends while another one runs on for 3 s.
LINGERING = """
import ctypes, signal, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
libc, main = ctypes.CDLL(None), threading.get_ident()

def linger():
    libc.pthread_join(ctypes.c_ulong(main), None)  # returns once the main thread has ended
    print("main thread ended", flush=True)
    time.sleep(3)

threading.Thread(target=linger).start()
libc.pthread_exit(None)
"""

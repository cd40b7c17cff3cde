"""A Python SDK worker pool for Beam's portable runners, handing jobs workers that imported TF ahead."""

from __future__ import annotations

import argparse
import atexit
import logging
import subprocess
import sys
import threading
import traceback
from typing import Dict, List

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.utils import thread_pool_executor

WORKER = [sys.executable, "-m", "engine.sdk_worker"]


class WorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """The Fn API's external worker pool service, each worker `engine.sdk_worker` from this interpreter.

    It serves the same gRPC service as Beam's `worker_pool_main`, whose pool starts `python` from PATH
    with stdout piped and never read (a chatty worker blocks) and keys workers by worker id alone: one
    pool serving several TaskManagers sees the same id ("1-1") from each, so a StopWorker from the
    TaskManager that finished first would kill another one's busy worker and fail its tasks. Here
    StopWorker stops nothing: a worker exits by itself once its TaskManager closes the control
    channel, and `petseg flink down` ends the pool's whole process group.

    `spares` workers wait with TensorFlow and the TFX libraries already imported (tens of seconds of
    CPU each); a job's StartWorker takes one and a new one starts importing in the background, so a
    job waits for an import only when it asks for more workers at once than there are spares.
    """

    def __init__(self, spares: int = 0):
        self._worker_processes: Dict[str, subprocess.Popen] = {}
        self._spare_count = spares
        self._spares: List[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._refill()

    def StartWorker(self, request, unused_context):
        try:
            endpoint, worker_id = request.control_endpoint.url, request.worker_id
            process = self._take_spare()
            if process is not None:
                try:
                    process.stdin.write(f"{endpoint} {worker_id}\n".encode())
                    process.stdin.close()
                except OSError:  # it died while waiting: start a worker of its own instead
                    process = None
            if process is None:
                process = subprocess.Popen(WORKER + [endpoint, worker_id], close_fds=True)
            logging.info("SDK worker %s (pid %d) for %s", worker_id, process.pid, endpoint)
            self._worker_processes[f"{worker_id}@{endpoint}"] = process
            self._reap()
            self._refill()
            return beam_fn_api_pb2.StartWorkerResponse()
        except Exception:  # reported to the runner, which fails the job with it
            return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())

    def StopWorker(self, request, unused_context):
        logging.info("worker %s released; it exits when its control channel closes", request.worker_id)
        self._reap()
        return beam_fn_api_pb2.StopWorkerResponse()

    def stop_spares(self) -> None:
        with self._lock:
            spares, self._spares = self._spares, []
        for process in spares:
            _stop(process)

    def _take_spare(self):
        with self._lock:
            while self._spares:
                process = self._spares.pop(0)
                if process.poll() is None:
                    return process
        return None

    def _refill(self) -> None:
        with self._lock:
            self._spares = [p for p in self._spares if p.poll() is None]
            while len(self._spares) < self._spare_count:
                self._spares.append(subprocess.Popen(WORKER, stdin=subprocess.PIPE, close_fds=True))

    def _reap(self) -> None:
        for key, process in list(self._worker_processes.items()):
            if process.poll() is not None:
                del self._worker_processes[key]

    def stop_workers(self) -> None:
        for process in list(self._worker_processes.values()):
            _stop(process)


def _stop(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; waited for, so no zombie is left."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--spares",
        type=int,
        default=1,
        help="workers kept ready with TF imported: the TaskManagers (slots) this pool serves",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # No SO_REUSEPORT (gRPC's default): with it a second pool binds a port a first one holds, and the
    # two share its connections; without it the second fails to start, saying the port is in use.
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.so_reuseport", 0),
        ],
    )
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    # One worker process per StartWorker: one per TaskManager and job.
    pool = WorkerPool(spares=args.spares)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    atexit.register(pool.stop_workers)
    atexit.register(pool.stop_spares)
    logging.info("SDK worker pool listening on %s:%d, %d spare workers", args.host, port, args.spares)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Beam's Python SDK worker pool (`worker_pool_main`) on loopback, starting workers that import TF first."""

from __future__ import annotations

import argparse
import atexit
import logging
import subprocess
import sys
import time
import traceback

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor
from apache_beam.runners.worker.worker_pool_main import kill_process_gracefully


class WorkerPool(BeamFnExternalWorkerPoolServicer):
    """Beam's pool, but each worker is `engine.sdk_worker` from this interpreter, its output in our log.

    Beam's own pool starts `python` from PATH with stdout piped and never read (a chatty worker blocks),
    and keys workers by worker id alone. One pool serving several TaskManagers sees the same id ("1-1")
    from each, so a StopWorker from the TaskManager that finished first killed another one's busy worker
    and failed its tasks. Here StopWorker stops nothing: a worker exits by itself once its TaskManager
    closes the control channel, and `petseg flink down` ends the pool's whole process group.
    """

    def StartWorker(self, request, unused_context):
        try:
            command = [sys.executable, "-m", "engine.sdk_worker", request.control_endpoint.url, request.worker_id]
            logging.info("starting SDK worker %s for %s", request.worker_id, request.control_endpoint.url)
            process = subprocess.Popen(command, close_fds=True)
            self._worker_processes[f"{request.worker_id}@{request.control_endpoint.url}"] = process
            self._reap()
            return beam_fn_api_pb2.StartWorkerResponse()
        except Exception:  # reported to the runner, which fails the job with it
            return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())

    def StopWorker(self, request, unused_context):
        logging.info("worker %s released; it exits when its control channel closes", request.worker_id)
        self._reap()
        return beam_fn_api_pb2.StopWorkerResponse()

    def _reap(self) -> None:
        for key, process in list(self._worker_processes.items()):
            if process.poll() is not None:
                del self._worker_processes[key]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)])
    server.add_insecure_port(f"{args.host}:{args.port}")
    # One worker process per StartWorker: one per TaskManager and job.
    pool = WorkerPool(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    atexit.register(lambda: [kill_process_gracefully(p) for p in pool._worker_processes.values()])
    logging.info("SDK worker pool listening on %s:%d", args.host, args.port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

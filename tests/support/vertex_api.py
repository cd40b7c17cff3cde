"""A loopback Vertex AI JobService (gRPC) that records CustomJob requests, and the Trainer task run against it.

The server speaks the real wire protocol (`google.cloud.aiplatform.v1.JobService`, the request and
response messages of the installed google-cloud-aiplatform), so TFX's client builds, converts and
sends its requests exactly as it would to Vertex. Run as a script, this module is the Trainer task:
it maps the regional endpoint TFX's client asks for to the loopback server (what DNS and TLS would
do) and runs the compiled task command (`python -m kubeflow.entrypoint ...`) unchanged.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import runpy
import sys
import threading
from typing import Dict, List, Optional, Sequence

import grpc
from google.cloud.aiplatform_v1.types import CustomJob, JobState, job_service
from google.protobuf import empty_pb2, json_format, timestamp_pb2
from google.rpc import status_pb2

SERVICE = "google.cloud.aiplatform.v1.JobService"


@dataclasses.dataclass
class Recorded:
    method: str
    request: object  # the decoded request message
    metadata: Dict[str, str]


class JobService:
    """Answers CreateCustomJob with the job (PENDING), then GetCustomJob with `states` in turn (the last repeats)."""

    def __init__(self, states: Sequence[str], error: str = ""):
        self.states = [JobState[s] for s in states]
        self.error = error
        self.requests: List[Recorded] = []
        self.job: Optional[CustomJob] = None
        self._lock = threading.Lock()
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "CreateCustomJob": grpc.unary_unary_rpc_method_handler(
                self._create,
                request_deserializer=job_service.CreateCustomJobRequest.deserialize,
                response_serializer=CustomJob.serialize,
            ),
            "GetCustomJob": grpc.unary_unary_rpc_method_handler(
                self._get,
                request_deserializer=job_service.GetCustomJobRequest.deserialize,
                response_serializer=CustomJob.serialize,
            ),
            "CancelCustomJob": grpc.unary_unary_rpc_method_handler(
                self._cancel,
                request_deserializer=job_service.CancelCustomJobRequest.deserialize,
                response_serializer=empty_pb2.Empty.SerializeToString,
            ),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "JobService":
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(grace=None)

    def _record(self, method: str, request, context) -> None:
        with self._lock:
            self.requests.append(Recorded(method, request, dict(context.invocation_metadata())))

    def calls(self, method: str) -> List[Recorded]:
        return [r for r in self.requests if r.method == method]

    def _create(self, request, context):
        self._record("CreateCustomJob", request, context)
        job = CustomJob(request.custom_job)
        job.name = f"{request.parent}/customJobs/1234567890"
        job.state = JobState.JOB_STATE_PENDING
        job.create_time = timestamp_pb2.Timestamp(seconds=1_790_000_000)
        self.job = job
        return job

    def _get(self, request, context):
        self._record("GetCustomJob", request, context)
        if self.job is None or request.name != self.job.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"CustomJob {request.name} not found")
        answered = len(self.calls("GetCustomJob")) - 1
        job = CustomJob(self.job)
        job.state = self.states[min(answered, len(self.states) - 1)]
        if job.state == JobState.JOB_STATE_FAILED:
            job.error = status_pb2.Status(code=3, message=self.error)
        return job

    def _cancel(self, request, context):
        self._record("CancelCustomJob", request, context)
        return empty_pb2.Empty()


def as_dict(message) -> dict:
    """A proto-plus message as the JSON Vertex's REST API shows (camelCase, enums by name, no defaults)."""
    return json_format.MessageToDict(type(message).pb(message))


def _route_to_loopback(hosts: Dict[str, str]) -> None:
    """Makes TFX's `gapic.JobServiceClient(client_options=...)` reach `hosts[api_endpoint]` without TLS."""
    from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
    from google.cloud.aiplatform_v1.services.job_service.transports import JobServiceGrpcTransport
    from tfx.extensions.google_cloud_ai_platform import runner, training_clients

    def client(client_options=None, **kwargs):
        endpoint = (client_options or {}).get("api_endpoint")
        if endpoint not in hosts:
            raise ConnectionError(f"no route to {endpoint!r} (only {sorted(hosts)})")
        print(f"vertex_api: {endpoint} -> {hosts[endpoint]}", flush=True)
        return JobServiceClient(transport=JobServiceGrpcTransport(channel=grpc.insecure_channel(hosts[endpoint])))

    training_clients.gapic.JobServiceClient = client
    # TFX sleeps 30 s between polls of a running job; the loopback service answers at once.
    runner._POLLING_INTERVAL_IN_SECONDS = 0  # pylint: disable=protected-access


def main(argv: List[str]) -> None:
    import config  # noqa: F401  the Keras switch, which the task's own module sets first as well

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", action="append", default=[], metavar="ENDPOINT=ADDRESS")
    parser.add_argument("module", help="the task's module, e.g. kubeflow.entrypoint")
    ours, rest = parser.parse_known_args(argv)
    _route_to_loopback(dict(h.split("=", 1) for h in ours.host))
    sys.argv = [ours.module] + rest
    runpy.run_module(ours.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

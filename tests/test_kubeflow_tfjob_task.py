"""The TFJob Trainer task (kubeflow/tfjob_task.py) through the real kubernetes client against a loopback API server."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest
import yaml

from kubeflow import tfjob, tfjob_task
from support.kube_api import KubeApi

REPO = pathlib.Path(__file__).resolve().parent.parent
NS = "team-a"
IMAGE = "registry.example.com/petseg:1"
SETTINGS = {"image": IMAGE, "workers": 3, "cpu": 4, "memory_gb": 16, "gpus": 1, "gpu_type": "nvidia.com/gpu"}
INPUTS_SPEC = {"artifacts": {"examples": {"artifactType": {"schemaTitle": "tfx.Examples"}}}}
BEAM_ARGS = ["--runner=DirectRunner"]
CHIEF_LINES = ["Epoch 1/2", "MultiWorkerMirroredStrategy with 3 workers", "Epoch 2/2"]


def executor_input(bucket: pathlib.Path, output_file: pathlib.Path):
    """The Trainer's ExecutorInput; the bucket is a folder every 'pod' of the test sees, as gs:// is on a cluster."""
    task = bucket / "petseg" / "run-1" / "Trainer"
    return {
        "inputs": {"parameterValues": {"run_fn": "trainer.run.run_fn"},
                   "artifacts": {"examples": {"artifacts": [{
                       "name": "7", "uri": str(bucket / "petseg" / "run-1" / "Transform" / "transformed_examples"),
                       "type": {"schemaTitle": "tfx.Examples"}}]}}},
        "outputs": {"artifacts": {key: {"artifacts": [{"uri": str(task / key), "type": {"schemaTitle": title}}]}
                                  for key, title in (("model", "tfx.Model"), ("model_run", "tfx.ModelRun"))},
                    "outputFile": str(output_file)},
    }


def argv(payload):
    return tfjob_task.task_args(SETTINGS) + [
        "--json_serialized_invocation_args", json.dumps(payload),
        "--json_serialized_inputs_spec_args", json.dumps(INPUTS_SPEC), *BEAM_ARGS]


def chief_input(job):
    """The ExecutorInput the chief's container is started with."""
    args = job["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["args"]
    return json.loads(args[args.index("--json_serialized_invocation_args") + 1])


def earlier_job(payload):
    """The job an earlier pod of the same task created."""
    name = tfjob_task.job_name(payload)
    return tfjob_task.manifest(argv(payload), name=name, namespace=NS, service_account=None,
                               annotations={tfjob_task.TASK_ANNOTATION: name})


def play_chief_writes_outputs(job):
    """What TFX's Trainer executor on the chief writes, where the job's arguments tell it to."""
    staged = chief_input(job)
    for key, artifact_list in staged["outputs"]["artifacts"].items():
        folder = pathlib.Path(artifact_list["artifacts"][0]["uri"])
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "file.txt").write_text(f"{key} written by the chief")
    model = staged["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"]
    output = {"artifacts": {"model": {"artifacts": [{"uri": model, "metadata": {"serving_dir": model + "/sub"}}]}}}
    pathlib.Path(staged["outputs"]["outputFile"]).write_text(json.dumps(output))


class Operator(threading.Thread):
    """Plays the Training Operator and the kubelet for the job the task creates."""

    def __init__(self, server, outcome, lines=CHIEF_LINES, before_end=None):
        super().__init__(daemon=True)
        self.server, self.outcome, self.lines, self.before_end = server, outcome, lines, before_end
        self.error = None

    def run(self):
        try:
            server = self.server
            job = server.wait_for(lambda: server.job(NS))
            name, chief = job["metadata"]["name"], tfjob.chief_pod(job["metadata"]["name"])
            server.set_condition(NS, name, "Created", "TFJobCreated", f"TFJob {name} is created.")
            # The pod starts after the task first looked for it, as a scheduled pod does.
            server.wait_for(lambda: any(r["verb"] == "list" and r["resource"] == "pods" for r in server.requests))
            server.set_container(NS, chief, {"running": {"startedAt": "2026-12-04T00:00:00Z"}})
            server.set_condition(NS, name, "Running", "TFJobRunning", f"TFJob {NS}/{name} is running.")
            # The task follows the chief's log while it runs.
            server.wait_for(lambda: any(r["resource"] == "pods/log" for r in server.requests))
            server.log(NS, chief, *self.lines)
            if self.before_end:
                self.before_end(server, job)
            if self.outcome == "Succeeded":
                play_chief_writes_outputs(job)
                server.log(NS, chief, None)
                server.set_container(NS, chief, {"terminated": {"exitCode": 0, "reason": "Completed"}})
                server.set_condition(NS, name, "Succeeded", "TFJobSucceeded", f"TFJob {NS}/{name} successfully completed.")
            elif self.outcome == "Failed":
                server.log(NS, chief, "Traceback (most recent call last):", "ValueError: boom", None)
                server.set_container(NS, chief, {"terminated": {"exitCode": 1, "reason": "Error"}})
                server.set_condition(NS, name, "Failed", "TFJobFailed",
                                     f"TFJob {NS}/{name} has failed because 1 Chief replica(s) failed.")
        except BaseException as exc:  # reported when the test's block ends
            self.error = exc

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, *rest):
        self.join(30)
        if exc_type is None:
            assert self.error is None, self.error


class Lines:
    """A text stream the task writes its log to, read by the test."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_the_task_creates_the_job_follows_the_chief_and_hands_its_outputs_to_the_launcher(tmp_path):
    payload = executor_input(tmp_path / "bucket", tmp_path / "task" / "executor_output.json")
    out = Lines()
    with KubeApi() as server:
        with Operator(server, "Succeeded"):
            output = tfjob_task.run(argv(payload), server.client(), NS, out=out)

    [create] = [r for r in server.requests if r["verb"] == "create"]
    job = create["body"]
    assert create["path"] == f"/apis/kubeflow.org/v1/namespaces/{NS}/tfjobs"
    name = job["metadata"]["name"]
    assert name == tfjob_task.job_name(payload) and job["metadata"]["namespace"] == NS
    assert tfjob.replica_counts(job) == {"Chief": 1, "Worker": 2}
    for container in tfjob.containers(job):
        assert container["name"] == "tensorflow" and container["image"] == IMAGE
        assert container["command"] == ["python", "-m", "kubeflow.entrypoint"]
        assert container["args"][-1:] == BEAM_ARGS
        assert container["resources"] == {"limits": {"cpu": "4", "memory": "16G", "nvidia.com/gpu": "1"}}
    # The replicas run as the task's own service account (read from its pod), for the same bucket rights.
    assert job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["serviceAccountName"] == "pipeline-runner"
    # Outputs staged beside the real ones; the executor output file with them.
    staged = chief_input(job)
    real_model = payload["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"]
    assert staged["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"] == tfjob_task.staging_uri(real_model)
    assert staged["inputs"] == payload["inputs"]

    # The chief's log lines reached the task's log, in order, while it waited.
    shown = [line[len("[chief] "):] for line in out.text.splitlines() if line.startswith("[chief] ")]
    assert shown == CHIEF_LINES
    assert f"TFJob {NS}/{name} succeeded" in out.text
    # The outputs are where the launcher (here: the task's own output file) expects them, the staging is gone.
    model = pathlib.Path(real_model)
    assert (model / "sub" / "file.txt").read_text() == "model written by the chief"
    assert (model.parent / "model_run" / "sub" / "file.txt").read_text() == "model_run written by the chief"
    assert not (model.parent / tfjob_task.STAGING).exists()
    written = json.loads(pathlib.Path(payload["outputs"]["outputFile"]).read_text())
    assert written == output
    artifact = written["artifacts"]["model"]["artifacts"][0]
    assert artifact == {"uri": real_model, "metadata": {"serving_dir": real_model + "/sub"}}
    # A finished job stays for its pods' logs until its TTL.
    assert not [r for r in server.requests if r["verb"] == "delete"]
    # It waited with watches, and followed the chief's container log.
    watches = {r["resource"] for r in server.requests if r["verb"] == "watch"}
    assert watches == {"tfjobs", "pods"}
    [log] = [r for r in server.requests if r["resource"] == "pods/log"]
    assert log["query"]["follow"].lower() == "true" and log["query"]["container"] == "tensorflow"
    assert log["path"].startswith(f"/api/v1/namespaces/{NS}/pods/{name}-chief-0/log")


def test_a_failed_job_fails_the_task_with_the_jobs_reason_and_message(tmp_path):
    payload = executor_input(tmp_path / "bucket", tmp_path / "task" / "executor_output.json")
    out = Lines()
    with KubeApi() as server:
        with Operator(server, "Failed"):
            with pytest.raises(tfjob_task.TaskFailed) as failed:
                tfjob_task.run(argv(payload), server.client(), NS, out=out)
    name = tfjob_task.job_name(payload)
    assert str(failed.value) == (f"TFJob {NS}/{name} failed: TFJobFailed: "
                                 f"TFJob {NS}/{name} has failed because 1 Chief replica(s) failed.")
    assert "[chief] Epoch 1/2" in out.text
    assert not pathlib.Path(payload["outputs"]["outputFile"]).exists()
    assert not [r for r in server.requests if r["verb"] == "delete"]


def test_a_cancelled_task_deletes_its_job(tmp_path):
    payload = executor_input(tmp_path / "bucket", tmp_path / "task" / "executor_output.json")
    with KubeApi() as server:
        with Operator(server, "Running"):
            env = {**os.environ, "KUBECONFIG": server.kubeconfig(tmp_path / "kubeconfig", NS)}
            proc = subprocess.Popen([sys.executable, "-m", "kubeflow.tfjob_task", *argv(payload)], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                # Running and followed: the task is waiting on its watch.
                server.wait_for(lambda: any(r["resource"] == "pods/log" for r in server.requests)
                                and any(r["verb"] == "watch" and r["resource"] == "tfjobs" for r in server.requests))
                proc.send_signal(signal.SIGTERM)  # what a terminated run sends the task
                stdout, stderr = proc.communicate(timeout=60)
            finally:
                proc.kill()
        name = tfjob_task.job_name(payload)
        [delete] = [r for r in server.requests if r["verb"] == "delete"]
        assert delete["path"].startswith(f"/apis/kubeflow.org/v1/namespaces/{NS}/tfjobs/{name}")
        assert server.job(NS) is None
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert f"deleted TFJob {NS}/{name}" in stdout
    assert "cancelled" in stderr
    # The kubeconfig's credentials were used, as in-cluster ones are in a pod.
    assert {r["authorization"] for r in server.requests} == {"Bearer loopback-token"}


def test_a_retried_pod_follows_the_job_its_task_already_created(tmp_path):
    payload = executor_input(tmp_path / "bucket", tmp_path / "task" / "executor_output.json")
    out = Lines()
    with KubeApi() as server:
        server.put("tfjobs", NS, earlier_job(payload), "ADDED")
        with Operator(server, "Succeeded"):
            tfjob_task.run(argv(payload), server.client(), NS, out=out)
    assert [r["verb"] for r in server.requests if r["resource"] == "tfjobs"][:3] == ["create", "get", "list"]
    assert "created by an earlier attempt" in out.text


def test_a_job_of_the_same_name_from_elsewhere_is_not_adopted(tmp_path):
    payload = executor_input(tmp_path / "bucket", tmp_path / "task" / "executor_output.json")
    with KubeApi() as server:
        name = tfjob_task.job_name(payload)
        server.put("tfjobs", NS, {"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
                                  "metadata": {"name": name, "namespace": NS}}, "ADDED")
        with pytest.raises(tfjob_task.TaskFailed, match="exists and was not created by this task"):
            tfjob_task.run(argv(payload), server.client(), NS, out=Lines())


def test_minio_and_s3_artifacts_are_refused_before_anything_is_created(tmp_path):
    payload = executor_input(tmp_path / "bucket", tmp_path / "task" / "executor_output.json")
    payload["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"] = "minio://mlpipeline/v2/artifacts/x"
    with KubeApi() as server:
        with pytest.raises(tfjob_task.TaskFailed, match="TensorFlow cannot open minio:// or s3://"):
            tfjob_task.run(argv(payload), server.client(), NS, out=Lines())
    assert server.requests == []


def test_open_source_launcher_input_is_staged_for_the_replicas():
    """Typed inputs, no launcher outputs, gs:// outputs moved to staging, the output file beside them."""
    task = "gs://bucket/root/petseg/run-1/Trainer/abc"
    payload = {
        "inputs": {"artifacts": {"examples": {"artifacts": [
            {"name": "7", "uri": "gs://bucket/root/petseg/run-1/Transform/x/transformed_examples",
             "type": {"instanceSchema": ""}}]}}},
        "outputs": {"artifacts": {
            "model": {"artifacts": [{"uri": f"{task}/model", "type": {"schemaTitle": "tfx.Model"}}]},
            "executor-logs": {"artifacts": [{"uri": f"{task}/executor-logs", "type": {"schemaTitle": "system.Artifact"}}]}},
            "outputFile": "/tmp/kfp_outputs/output_metadata.json"}}
    p = tfjob_task.plan(payload, INPUTS_SPEC, mirror_root="/pod")
    replica = p.replica_input
    assert replica["inputs"]["artifacts"]["examples"]["artifacts"][0]["type"] == {"schemaTitle": "tfx.Examples"}
    assert replica["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"].startswith("gs://bucket/")
    assert set(replica["outputs"]["artifacts"]) == {"model"}
    assert replica["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"] == f"{task}/tfjob-staging/model"
    assert replica["outputs"]["outputFile"] == f"{task}/tfjob-staging/executor_output.json"
    # Back to the launcher: its mirror path of the real URI, and the real URI in its output file.
    assert p.mirror.local(f"{task}/model") == "/pod/gcs/bucket/root/petseg/run-1/Trainer/abc/model"
    assert p.real(f"{task}/tfjob-staging/model/Format-Serving") == f"{task}/model/Format-Serving"
    assert p.output_file == "/tmp/kfp_outputs/output_metadata.json"
    assert payload["outputs"]["artifacts"]["model"]["artifacts"][0]["uri"] == f"{task}/model"  # not changed


def test_the_task_needs_exactly_the_rights_in_kubeflow_rbac_yaml(tmp_path):
    """Every call of every path (create, adopt, wait, follow, cancel) against the Role's rules."""
    used = set()
    for scenario in ("succeeded", "adopted", "cancelled"):
        payload = executor_input(tmp_path / scenario, tmp_path / scenario / "executor_output.json")
        with KubeApi() as server:
            name = tfjob_task.job_name(payload)
            if scenario == "adopted":
                server.put("tfjobs", NS, earlier_job(payload), "ADDED")
            if scenario == "cancelled":
                # A real SIGTERM to this process, handled in the main thread as in the task's own process.
                cancel = lambda *_: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
                with Operator(server, "Running", before_end=cancel), pytest.raises(tfjob_task.Cancelled), \
                        tfjob_task.cancel_on_sigterm():
                    tfjob_task.run(argv(payload), server.client(), NS, out=Lines())
            else:
                with Operator(server, "Succeeded"):
                    tfjob_task.run(argv(payload), server.client(), NS, out=Lines())
            used |= server.verbs()
    assert ("kubeflow.org", "tfjobs", "delete") in used and ("kubeflow.org", "tfjobs", "get") in used

    role, binding = list(yaml.safe_load_all((REPO / "kubeflow" / "rbac.yaml").read_text()))
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == used
    assert role["kind"] == "Role" and binding["kind"] == "RoleBinding"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"][0]["kind"] == "ServiceAccount"

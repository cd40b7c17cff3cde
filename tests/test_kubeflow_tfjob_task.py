"""The Trainer task with train.workers > 1 on a real Kubernetes control plane, the Training Operator and a test node.

The task runs as KFP runs it: a pod in `kubeflow` as `pipeline-runner`, kubeflow/rbac.yaml applied unchanged,
the compiled Trainer command and arguments. Every replica pod and service comes from the operator, every
deletion from the task, the operator, the garbage collector or the node finishing a graceful deletion, and
every job condition from the operator: the tests only start and stop the task's pod, kill a replica's process
(a lost machine), and watch. The audit log says who did each.
"""

import json
import pathlib
import signal
import threading

import pytest
import tensorflow as tf

from config import names
from kubeflow import staging, tfjob
from report.training_history import training_history
from support import kube_cluster, kube_trainer, trainer_fixtures
from support.kube_trainer import NAMESPACE, SERVICE_ACCOUNT, Events, Task
from support.trainer_fixtures import transform_run  # noqa: F401 (pytest fixture)
from transform import features

pytestmark = pytest.mark.kube

TASK_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:training-operator"
GC_USER = "system:serviceaccount:kube-system:generic-garbage-collector"
NODE_USER = f"system:node:{kube_cluster.NODE_NAME}"


@pytest.fixture
def events(cluster):
    recorder = Events(cluster)
    yield recorder
    recorder.close()


def bucket(kube, case: str) -> pathlib.Path:
    """The folder standing for the gs:// bucket of one test: every pod reads and writes it directly."""
    folder = kube.cluster.state / "buckets" / case
    folder.mkdir(parents=True)
    return folder


def finished(events: Events, pod: str) -> str:
    return events.wait_for(lambda: events.phase(pod) in ("Succeeded", "Failed") and events.phase(pod))


def last_status(events: Events, pod: str) -> dict:
    """The pod's container status as last reported before it went."""
    for _, obj in reversed(events.pod_events(pod)):
        statuses = (obj.get("status") or {}).get("containerStatuses")
        if statuses:
            return statuses[0]
    raise AssertionError(f"{pod} never reported a container status")


def audited(kube, **match):
    """Audit events whose fields (user, verb, resource, name, subresource) match."""

    def ok(event):
        ref = event.get("objectRef") or {}
        fields = {
            "user": event["user"]["username"],
            "verb": event["verb"],
            "resource": ref.get("resource"),
            "name": ref.get("name"),
            "subresource": ref.get("subresource"),
            "code": event["responseStatus"]["code"],
        }
        return all(fields.get(key) == value for key, value in match.items())

    return kube_cluster.audit(kube.cluster.audit_log, ok)


def test_the_control_plane_is_real_and_listens_on_the_hosts_loopback_only(cluster):
    version = cluster.cluster.version()
    print(f"\nServer Version: {version['git_version']} ({version['platform']}, {version['go_version']})")
    assert version["git_version"] == "v1.29.15"
    # The servers live in the cluster's own network namespace; on the host only the API relay listens.
    host_net = pathlib.Path("/proc/self/ns/net").resolve()
    for process in cluster.cluster.processes:
        if process.name != "relay-host":
            assert pathlib.Path(f"/proc/{process.pid}/ns/net").resolve() != host_net, process.name
    pids = cluster.cluster.pids() + cluster.node.pids() + [__import__("os").getpid()]
    assert kube_cluster.host_listeners(pids) == [cluster.cluster.host_server[len("https://") :]]


def test_two_replicas_train_and_the_task_hands_over_one_export(cluster, events, transform_run):
    task = Task(cluster, "success", transform_run, bucket(cluster, "success"))
    job = task.job
    chief, worker = tfjob.pod_name(job, "Chief", 0), tfjob.pod_name(job, "Worker", 0)
    task.start("trainer-success")
    phase = finished(events, "trainer-success")
    log = kube_trainer.pod_log(cluster, "trainer-success")  # through the API server: pods/log -> the node
    assert phase == "Succeeded", log[-6000:]

    # The operator's work, seen through the watch: its pods, with its TF_CONFIG, owned by the job.
    assert sorted(events.replica_pods(job)) == [chief, worker]
    for pod in (chief, worker):
        created = next(obj for kind, obj in events.pod_events(pod) if kind == "ADDED")
        config = json.loads(kube_trainer.env(created, "TF_CONFIG"))
        print(f"{pod} TF_CONFIG={kube_trainer.env(created, 'TF_CONFIG')}")
        kind, index = ("chief", 0) if pod == chief else ("worker", 0)
        assert config == {
            "cluster": {"chief": [f"{chief}.{NAMESPACE}.svc:2222"], "worker": [f"{worker}.{NAMESPACE}.svc:2222"]},
            "task": {"type": kind, "index": index},
            "environment": "cloud",
        }
        [owner] = created["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("TFJob", job, True)
        # The task gave the replicas its own service account, read from its pod.
        assert created["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
        assert created["spec"]["containers"][0]["ports"] == [
            {"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"}
        ]
    assert [c[:2] for c in events.conditions(job)] == [
        ("Created", "TFJobCreated"),
        ("Running", "TFJobRunning"),
        ("Succeeded", "TFJobSucceeded"),
    ]
    print("conditions:", events.conditions(job))
    assert {e["objectRef"]["name"] for e in audited(cluster, user=OPERATOR_USER, verb="create", resource="pods")} == {
        chief,
        worker,
    }
    assert {
        e["objectRef"]["name"] for e in audited(cluster, user=OPERATOR_USER, verb="create", resource="services")
    } == {chief, worker}
    # The task created it with strict field validation, as pipeline-runner.
    [create] = audited(cluster, user=TASK_USER, verb="create", resource="tfjobs", name=job)
    assert "fieldValidation=Strict" in create["requestURI"] and create["responseStatus"]["code"] == 201

    # The task's own console: the chief's lines as they came, the outcome.
    print("\n".join(line for line in log.splitlines() if line.startswith("petseg:")))
    chief_lines = [line for line in log.splitlines() if line.startswith("[chief] ")]
    assert any("Strategy: MultiWorkerMirroredStrategy, 2 workers, 2 replicas in sync" in line for line in chief_lines)
    assert f"petseg: TFJob {NAMESPACE}/{job}: 1 chief + 1 worker(s); waiting for it to finish" in log
    assert f"petseg: TFJob {NAMESPACE}/{job} succeeded" in log
    # One export, the chief's, where the launcher's output file says; the staging folder is gone.
    written = json.loads(task.output_file.read_text())
    model = task.uri("model")
    assert written["artifacts"]["model"]["artifacts"][0]["uri"] == str(model)
    assert sorted(p.parent for p in task.bucket.rglob("saved_model.pb")) == [model / "Format-Serving"]
    assert not (model.parent / staging.STAGING).exists()
    # Only the chief wrote the run's logs; the backup is gone once every replica finished.
    assert sorted(p.name for p in task.uri("model_run").iterdir()) == ["train", "validation"]
    assert training_history(str(task.uri("model_run")))["epoch"] == [0, 1, 2]
    assert not [p for p in task.bucket.rglob("*") if "backup" in p.parts and p.is_file()]
    served = tf.saved_model.load(str(model / "Format-Serving")).signatures[names.SERVING_SIGNATURE]
    raw = trainer_fixtures.split_records(trainer_fixtures.raw_examples(transform_run), "eval")[0]
    jpeg = tf.train.Example.FromString(raw).features.feature[features.RAW_IMAGE_KEY].bytes_list.value[0]
    size = json.loads(task.executor_input["inputs"]["parameterValues"]["custom_config"])["model"]["image_size"]
    assert served(image_bytes=tf.constant([jpeg]))["mask"].shape == (1, size, size)


def _epochs_per_events_file(model_run: pathlib.Path) -> list:
    """The epochs each TensorBoard writer logged (one writer per chief process), oldest first."""
    files = sorted((model_run / "train").glob("events.out.tfevents.*"), key=lambda f: int(f.name.split(".")[3]))
    return [
        sorted(
            {
                event.step
                for event in tf.compat.v1.train.summary_iterator(str(f))
                for value in event.summary.value
                if value.tag == "epoch_loss"
            }
        )
        for f in files
    ]


def test_a_killed_replica_restarts_in_place_and_training_resumes_from_the_backup(cluster, events, transform_run):
    task = Task(cluster, "restart", transform_run, bucket(cluster, "restart"))
    job = task.job
    chief, worker = tfjob.pod_name(job, "Chief", 0), tfjob.pod_name(job, "Worker", 0)
    task.start("trainer-restart")
    # Epoch 2 begins once epoch 1's backup is written (BackupAndRestore saves at each epoch's end).
    kube_trainer.follow_log(cluster, events, chief, lambda line: line.startswith("Epoch 2/"), task="trainer-restart")
    cluster.node.kill(NAMESPACE, worker, signal.SIGKILL)  # the worker's machine dies
    phase = finished(events, "trainer-restart")
    log = kube_trainer.pod_log(cluster, "trainer-restart")
    assert phase == "Succeeded", log[-6000:]

    restarts = {pod: events.restarts(pod) for pod in (chief, worker)}
    print("restart counts as reported:", restarts)
    # OnFailure: the node restarted the killed container in place; the operator created no pod anew.
    assert restarts[worker][:2] == [0, 1]
    # One lost machine restarted every replica (the chief's collectives aborted on the worker's new
    # incarnation): the operator counts each against backoffLimit, which therefore scales with the replicas.
    assert restarts[chief][-1] >= 1 and restarts[worker][-1] >= 1, restarts
    assert sum(counts[-1] for counts in restarts.values()) < tfjob.backoff_limit(2)
    assert [kind for kind, _ in events.pod_events(worker)].count("ADDED") == 1
    killed = next(
        s["lastState"]["terminated"]
        for _, obj in events.pod_events(worker)
        for s in (obj.get("status") or {}).get("containerStatuses") or []
        if s.get("restartCount") == 1 and (s.get("lastState") or {}).get("terminated")
    )
    assert (killed["exitCode"], killed["reason"]) == (128 + signal.SIGKILL, "Error")
    conditions = events.conditions(job)
    print("conditions:", conditions)
    assert conditions[-1][:2] == ("Succeeded", "TFJobSucceeded")
    assert "Failed" not in [c[0] for c in conditions]
    # The chief after the restart (its own TensorBoard writer, its own events file) trained only the epochs
    # after the last backup; the run's history has each epoch once. It exported once.
    assert _epochs_per_events_file(task.uri("model_run"))[-1] == [1, 2]
    assert training_history(str(task.uri("model_run")))["epoch"] == [0, 1, 2]
    assert sorted(p.parent for p in task.bucket.rglob("saved_model.pb")) == [task.uri("model") / "Format-Serving"]


def test_a_replica_that_keeps_failing_fails_the_job_and_the_task_with_the_operators_reason(
    cluster, events, transform_run
):
    task = Task(
        cluster, "fails", transform_run, bucket(cluster, "fails"), parameters={"run_fn": "trainer.run.no_such_run_fn"}
    )
    job = task.job
    task.start("trainer-fails")
    phase = finished(events, "trainer-fails")
    log = kube_trainer.pod_log(cluster, "trainer-fails")
    assert phase == "Failed", log[-6000:]
    failed = [c for c in events.conditions(job) if c[0] == "Failed"]
    print("conditions:", events.conditions(job))
    assert failed == [
        ("Failed", "TFJobFailed", f"Job {job} has failed because it has reached the specified backoff limit")
    ]
    line = f"TaskFailed: TFJob {NAMESPACE}/{job} failed: TFJobFailed: {failed[0][2]}"
    assert line in log
    print(line)
    assert last_status(events, "trainer-fails")["state"]["terminated"]["exitCode"] == 1
    # The replicas' own error is in their logs (the chief's lines reach the task's log too).
    assert "no_such_run_fn" in log
    # The operator stopped the replicas it had left running.
    for pod in events.replica_pods(job):
        assert events.gone(pod) or events.phase(pod) in ("Failed", "Succeeded"), pod


def test_a_retried_task_pod_adopts_its_job_and_cancelling_it_deletes_the_job_and_its_pods(
    cluster, events, transform_run
):
    # Long enough that the job is still training when the run is terminated.
    task = Task(cluster, "cancel", transform_run, bucket(cluster, "cancel"), epochs=200)
    job = task.job
    task.start("trainer-cancel-1")
    kube_trainer.follow_log(cluster, events, "trainer-cancel-1", lambda line: line.startswith("[chief] "))
    # The first pod of the task is lost (no clean-up: SIGKILL); its job runs on. KFP's retry starts another.
    cluster.node.kill(NAMESPACE, "trainer-cancel-1", signal.SIGKILL)
    assert finished(events, "trainer-cancel-1") == "Failed"
    task.start("trainer-cancel-2")
    seen, following = [], threading.Event()

    def read(line):
        seen.append(line)
        if line.startswith("[chief] Epoch "):
            following.set()
        return "cancelled" in line

    def follow():
        try:
            kube_trainer.follow_log(cluster, events, "trainer-cancel-2", read)
        finally:
            following.set()  # the log ended: no need to wait any longer

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    following.wait()
    assert any(line.startswith("[chief] Epoch ") for line in seen), seen[-40:]
    replicas = events.replica_pods(job)
    # Terminating the run: KFP deletes the task's pod; the node gives its process SIGTERM.
    from kubernetes import client

    client.CoreV1Api(cluster.client()).delete_namespaced_pod("trainer-cancel-2", NAMESPACE, grace_period_seconds=60)
    events.wait_for(lambda: events.gone("trainer-cancel-2"))
    follower.join(60)
    print("\n".join(line for line in seen if line.startswith("petseg:")))
    assert f"petseg: following TFJob {NAMESPACE}/{job}, created by an earlier attempt of this task" in seen
    assert f"petseg: deleted TFJob {NAMESPACE}/{job}" in seen
    assert "petseg: the run was cancelled" in seen
    assert last_status(events, "trainer-cancel-2")["state"]["terminated"]["exitCode"] == 128 + signal.SIGTERM
    # The task deleted the job before its process ended; the garbage collector deletes the pods it owned.
    assert [e["user"]["username"] for e in audited(cluster, verb="delete", resource="tfjobs", name=job)] == [TASK_USER]
    events.wait_for(lambda: events.gone(job, "job") and all(events.gone(p) for p in replicas))
    assert not any(c[0] in ("Succeeded", "Failed") for c in events.conditions(job))

    # Who deleted the replicas: the garbage collector (or the operator); the running chief's deletion is
    # graceful, so the node ends its process and then deletes it for good. A replica that had already
    # ended by then (the worker, once the chief's collectives broke) is deleted at once, by the API server.
    deleters = {
        pod: [e["user"]["username"] for e in audited(cluster, verb="delete", resource="pods", name=pod, code=200)]
        for pod in replicas
    }
    assert all(users and users[0] in (GC_USER, OPERATOR_USER) for users in deleters.values()), deleters
    assert deleters[tfjob.chief_pod(job)][-1] == NODE_USER, deleters
    assert GC_USER in {
        e["user"]["username"] for p in replicas for e in audited(cluster, verb="delete", resource="pods", name=p)
    }

    # Every right kubeflow/rbac.yaml grants was used by the task's two pods, and nothing else was asked for.
    role = kube_trainer.rbac_objects()[0]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    used = {
        (
            e["objectRef"].get("apiGroup", ""),
            e["objectRef"]["resource"]
            + (f"/{e['objectRef']['subresource']}" if e["objectRef"].get("subresource") else ""),
            e["verb"],
        )
        for e in audited(cluster, user=TASK_USER)
    }
    assert used == granted


def test_a_right_taken_out_of_the_role_fails_the_task_with_the_servers_403(cluster, events, transform_run):
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(cluster.client())
    role = kube_trainer.rbac_objects()[0]
    name = role["metadata"]["name"]
    reduced = json.loads(json.dumps(role))
    reduced["rules"][0]["verbs"].remove("create")
    rbac.replace_namespaced_role(name, NAMESPACE, reduced)
    try:
        task = Task(cluster, "rbac", transform_run, bucket(cluster, "rbac"))
        job = task.job
        task.start("trainer-rbac")
        assert finished(events, "trainer-rbac") == "Failed"
        log = kube_trainer.pod_log(cluster, "trainer-rbac")
    finally:
        rbac.replace_namespaced_role(name, NAMESPACE, role)
    line = (
        f'TaskFailed: creating TFJob {NAMESPACE}/{job}: tfjobs.kubeflow.org is forbidden: User "{TASK_USER}" '
        f'cannot create resource "tfjobs" in API group "kubeflow.org" in the namespace "{NAMESPACE}"'
    )
    print(line)
    assert line in log
    assert not events.replica_pods(job)
    assert "deleted TFJob" not in log  # there was none to delete
    # Restored, the same identity may create TFJobs again.
    review = client.AuthorizationV1Api(cluster.client()).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=TASK_USER,
                resource_attributes=client.V1ResourceAttributes(
                    namespace=NAMESPACE, group="kubeflow.org", resource="tfjobs", verb="create"
                ),
            )
        )
    )
    assert review.status.allowed

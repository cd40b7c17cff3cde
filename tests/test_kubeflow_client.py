"""`petseg kubeflow submit|schedule` through the real kfp client against a loopback KFP API that records requests."""

import http.server
import json
import threading
import urllib.parse

import pytest
import yaml

from cli import main as cli
from support.petseg import compile_argv

ROOT = "gs://petseg-bucket/pipeline_root"
RUN_ROOT = "gs://petseg-bucket/another_root"


class RecordingKfpApi(http.server.BaseHTTPRequestHandler):
    """Answers the few KFP v2beta1 calls the client makes, like an empty server would."""

    def _reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        url = urllib.parse.urlparse(self.path)
        self.server.requests.append(
            {
                "method": self.command,
                "path": url.path,
                "query": urllib.parse.parse_qs(url.query),
                "body": body,
                "authorization": self.headers.get("Authorization"),
            }
        )
        return url.path, body

    def do_GET(self):
        path, _ = self._record()
        self._reply({"multi_user": False} if path.endswith("/healthz") else {})  # no experiments yet

    def do_POST(self):
        path, body = self._record()
        replies = {
            "/apis/v2beta1/experiments": {"experiment_id": "exp-1", "display_name": body.get("display_name")},
            "/apis/v2beta1/runs": {"run_id": "run-1", "display_name": body.get("display_name")},
            "/apis/v2beta1/recurringruns": {"recurring_run_id": "rr-1"},
        }
        self._reply(replies[path])

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingKfpApi)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    assert cli.main(compile_argv(path, image="registry.example.com/petseg:1", pipeline_root=ROOT)) == 0
    return path


def posts(server, path):
    return [r for r in server.requests if r["method"] == "POST" and r["path"] == path]


def test_submit_posts_the_compiled_spec_as_a_run(api, package, monkeypatch):
    server, host = api
    monkeypatch.setenv("PETSEG_TEST_TOKEN", "t0ken-from-env")
    assert (
        cli.main(
            [
                "kubeflow",
                "submit",
                "--host",
                host,
                "--package",
                str(package),
                "--run-name",
                "nightly",
                "--experiment",
                "petseg-exp",
                "--pipeline-root",
                RUN_ROOT,
                "--token-env",
                "PETSEG_TEST_TOKEN",
            ]
        )
        == 0
    )

    [experiment] = posts(server, "/apis/v2beta1/experiments")
    assert experiment["body"]["display_name"] == "petseg-exp"
    [run] = posts(server, "/apis/v2beta1/runs")
    body = run["body"]
    assert body["experiment_id"] == "exp-1" and body["display_name"] == "nightly"
    assert body["pipeline_spec"] == yaml.safe_load(package.read_text())  # the spec as compiled, caching kept
    assert body["runtime_config"]["pipeline_root"] == RUN_ROOT
    assert not body["runtime_config"].get("parameters")
    # The token travels in a header, read from the environment, never in the body.
    assert run["authorization"] == "Bearer t0ken-from-env"
    assert "t0ken" not in json.dumps(body)


def test_submit_compiles_from_options_when_no_package_is_given(api):
    server, host = api
    assert (
        cli.main(
            [
                "kubeflow",
                "submit",
                "--host",
                host,
                "--profile",
                "tiny",
                "--image",
                "img:2",
                "--pipeline-root",
                ROOT,
                "--gpus",
                "1",
            ]
        )
        == 0
    )
    [run] = posts(server, "/apis/v2beta1/runs")
    spec = run["body"]["pipeline_spec"]
    assert spec["defaultPipelineRoot"] == ROOT and run["body"]["runtime_config"]["pipeline_root"] == ROOT
    trainer = spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
    assert trainer["image"] == "img:2" and trainer["resources"]["accelerator"]["count"] == "1"


def test_schedule_posts_a_recurring_run_with_cron_and_one_run_at_a_time(api, package):
    server, host = api
    assert (
        cli.main(
            [
                "kubeflow",
                "schedule",
                "--host",
                host,
                "--package",
                str(package),
                "--cron",
                "0 0 3 * * 0",
                "--job-name",
                "weekly-retrain",
            ]
        )
        == 0
    )
    [recurring] = posts(server, "/apis/v2beta1/recurringruns")
    body = recurring["body"]
    assert body["display_name"] == "weekly-retrain"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["experiment_id"] == "exp-1"
    assert body["pipeline_spec"] == yaml.safe_load(package.read_text())
    # No --pipeline-root: the compiled root travels as the run's (the API server ignores the spec's).
    assert body["runtime_config"]["pipeline_root"] == ROOT
    assert body["pipeline_spec"]["defaultPipelineRoot"] == ROOT


def test_a_spec_compiled_without_a_root_runs_under_the_clusters_default(api, tmp_path):
    server, host = api
    package = tmp_path / "p.yaml"
    assert cli.main(compile_argv(package, serving_dir="gs://models/petseg")) == 0
    assert cli.main(["kubeflow", "submit", "--host", host, "--package", str(package)]) == 0
    [run] = posts(server, "/apis/v2beta1/runs")
    assert not run["body"]["runtime_config"].get("pipeline_root")


def test_schedule_refuses_a_five_field_crontab_line_before_calling_the_server(api, package, capsys):
    server, host = api
    assert cli.main(["kubeflow", "schedule", "--host", host, "--package", str(package), "--cron", "0 3 * * 0"]) == 2
    assert "6 (seconds first)" in capsys.readouterr().err
    assert server.requests == []


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_compile_flags_beside_a_package_are_refused_not_ignored(api, package, command):
    server, host = api
    cron = ["--cron", "0 0 3 * * 0"] if command == "schedule" else []
    with pytest.raises(
        SystemExit,
        match=r"^petseg: --set, --image, --gpus: shape the compiled pipeline, and "
        r"--package .* is compiled already",
    ):
        cli.main(
            [
                "kubeflow",
                command,
                "--host",
                host,
                "--package",
                str(package),
                *cron,
                "--gpus",
                "1",
                "--set",
                "train.epochs=3",
                "--image",
                "other:1",
            ]
        )
    assert server.requests == []
    # The run's own root is not a compile flag: it goes with the run.
    assert (
        cli.main(["kubeflow", command, "--host", host, "--package", str(package), *cron, "--pipeline-root", RUN_ROOT])
        == 0
    )

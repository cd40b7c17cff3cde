"""`petseg kubeflow compile`: the PipelineSpec / Vertex PipelineJob it writes, its errors, and the image it expects."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml
from apache_beam.options import pipeline_options as beam_options
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from config import names
from kubeflow import entrypoint, runner
from cli import main as cli
from support.beam_options import parse as parse_beam_args
from support.petseg import compile_argv

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE = "registry.example.com/team/petseg:1.2.3"
ROOT = "gs://petseg-bucket/pipeline_root"
BEAM_ARGS = [
    "--runner=DataflowRunner",
    "--project=demo-project",
    "--region=europe-west4",
    "--temp_location=gs://petseg-bucket/tmp",
]
TASKS = {
    "TfdsExampleGen",
    "ImportSchemaGen",
    "StatisticsGen",
    "ExampleValidator",
    "ValidationGate",
    "Transform",
    "LatestBlessedModel",
    "DistributionValidator",
    "DriftGate",
    "Trainer",
    "Evaluator",
    "Pusher",
}
RUN_EXECUTOR = ["python", "-m", "kubeflow.entrypoint"]


def compile_args(output, *extra):
    return compile_argv(
        output,
        "--set",
        "train.warm_start=true",
        *[f"--beam-arg={a}" for a in BEAM_ARGS],
        *extra,
        image=IMAGE,
        pipeline_root=ROOT,
        gpus=2,
        cpu=4,
        memory=16,
        oxford_raw_dir="/mnt/pets/span-{SPAN}",
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp")
    assert cli.main(compile_args(out / "pipeline.yaml")) == 0
    assert cli.main(compile_args(out / "pipeline.json", "--target", "vertex", "--gpu-type", "NVIDIA_TESLA_T4")) == 0
    return out


@pytest.fixture(scope="module")
def spec(compiled):
    return yaml.safe_load((compiled / "pipeline.yaml").read_text())


def container(spec, task):
    label = spec["components"][spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def task_beam_options(spec, task):
    """What the task's entrypoint hands Beam: its container args split as the entrypoint splits them."""
    args = ["{}" if a == "{{$}}" else a for a in container(spec, task)["args"]]
    _, beam_args, _, _ = entrypoint._parse(["entrypoint", *args])
    # TFX's split leaves the program name first; Beam discards it as a stray positional.
    assert beam_args[0] == "entrypoint"
    return parse_beam_args(beam_args[1:])


def constant(spec, task, parameter):
    return spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"][parameter]["runtimeValue"]["constant"]


def test_yaml_is_a_kfp_2_1_pipeline_spec(compiled, spec):
    proto = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # unknown fields fail
    assert proto.schema_version == "2.1.0"
    assert proto.sdk_version == "tfx-1.16.0"
    assert proto.default_pipeline_root == ROOT
    assert set(proto.root.dag.tasks) == TASKS


def test_json_is_a_pipeline_job_with_the_root(compiled):
    job = json_format.ParseDict(json.loads((compiled / "pipeline.json").read_text()), pipeline_spec_pb2.PipelineJob())
    assert job.runtime_config.gcs_output_directory == ROOT
    assert set(job.pipeline_spec["root"]["dag"]["tasks"]) == TASKS


def test_every_task_is_a_container_running_our_entrypoint_in_the_image_with_the_beam_args(spec):
    executors = spec["deploymentSpec"]["executors"]
    images = {label: executor["container"]["image"] for label, executor in executors.items() if "container" in executor}
    assert len(images) == len(TASKS) and set(images.values()) == {IMAGE}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        # Open-source KFP's backend compiles only container and importer executors, and ignores
        # lifecycle hooks (TFX's pre-cache-check driver for file-based ExampleGens) silently.
        assert set(executor) == {"container"}, label
        assert "lifecycle" not in executor["container"], label
        assert executor["container"]["command"] == RUN_EXECUTOR
    for task in TASKS:
        options = task_beam_options(spec, task)
        cloud = options.view_as(beam_options.GoogleCloudOptions)
        assert options.view_as(beam_options.StandardOptions).runner == "DataflowRunner", task
        assert (cloud.project, cloud.region, cloud.temp_location) == (
            "demo-project",
            "europe-west4",
            "gs://petseg-bucket/tmp",
        ), task


def test_only_the_trainer_asks_for_gpus_cpu_and_memory(spec):
    resources = container(spec, "Trainer")["resources"]
    assert resources["accelerator"] == {"type": "nvidia.com/gpu", "count": "2"}
    assert (resources["cpuLimit"], resources["memoryLimit"]) == (4.0, 16.0)
    others = TASKS - {"Trainer"}
    assert not any("resources" in container(spec, t) for t in others)


def test_paths_point_into_the_image_and_the_pipeline_root(spec):
    assert constant(spec, "ImportSchemaGen", "schema_file") == "/app/transform/schema.pbtxt"
    assert (REPO / "transform" / "schema.pbtxt").is_file()
    assert constant(spec, "TfdsExampleGen", "data_dir") == runner.DEFAULT_DATA_DIR
    assert constant(spec, "TfdsExampleGen", "raw_dir") == "/mnt/pets/span-{SPAN}"
    assert json.loads(constant(spec, "Pusher", "push_destination")) == {
        "filesystem": {"base_directory": f"{ROOT}/serving"}
    }
    # User code by dotted path, importable in the image; nothing staged at compile time.
    assert constant(spec, "Trainer", "run_fn") == "trainer.run.run_fn"
    assert constant(spec, "Transform", "preprocessing_fn") == "transform.preprocessing.preprocessing_fn"
    assert "module_file" not in json.dumps(spec) and "module_path" not in json.dumps(spec)


def test_latest_span_and_latest_pushed_model_are_read_every_run(spec):
    tasks = spec["root"]["dag"]["tasks"]
    # Both read what changes between runs of one compiled spec: never a cache hit. The rest may be.
    uncached = {"TfdsExampleGen", "LatestBlessedModel"}
    assert all(tasks[t]["cachingOptions"] == {} for t in uncached)
    assert constant(spec, "TfdsExampleGen", "span") == -1
    assert all(tasks[t]["cachingOptions"] == {"enableCache": True} for t in TASKS - uncached)
    assert constant(spec, "LatestBlessedModel", "serving_dir") == f"{ROOT}/serving"
    for task, key in (("Trainer", "base_model"), ("Evaluator", "baseline_model")):
        assert tasks[task]["inputs"]["artifacts"][key]["taskOutputArtifact"] == {
            "producerTask": "LatestBlessedModel",
            "outputArtifactKey": "model",
        }


def test_a_pinned_baseline_keeps_latest_blessed_model_cached(tmp_path):
    assert cli.main(compile_args(tmp_path / "p.yaml", "--set", "eval.baseline_version=1700000000")) == 0
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert spec["root"]["dag"]["tasks"]["LatestBlessedModel"]["cachingOptions"] == {"enableCache": True}
    assert constant(spec, "LatestBlessedModel", "version") == 1700000000


def test_pinned_span_keeps_example_gen_cached(tmp_path):
    assert cli.main(compile_args(tmp_path / "p.yaml", "--set", "data.span=3")) == 0
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert spec["root"]["dag"]["tasks"]["TfdsExampleGen"]["cachingOptions"] == {"enableCache": True}
    assert constant(spec, "TfdsExampleGen", "span") == 3


def test_the_drift_gate_sits_between_the_statistics_and_transform(spec):
    tasks = spec["root"]["dag"]["tasks"]
    validator = tasks[names.DRIFT_VALIDATOR_ID]["inputs"]
    assert validator["artifacts"]["statistics"]["taskOutputArtifact"] == {
        "producerTask": names.STATISTICS_GEN_ID,
        "outputArtifactKey": "statistics",
    }
    # The served model's training statistics: LatestBlessedModel reads them beside it, no resolver.
    assert validator["artifacts"]["baseline_statistics"]["taskOutputArtifact"] == {
        "producerTask": names.LATEST_BLESSED_MODEL_ID,
        "outputArtifactKey": "statistics",
    }
    config = json.loads(constant(spec, names.DRIFT_VALIDATOR_ID, "distribution_validator_config"))
    compared = {entry["path"]["step"][0] for entry in config["defaultSliceConfig"]["feature"]}
    assert compared == {"species", "label", "image_height", "image_width", "image_brightness"}
    assert json.loads(constant(spec, names.DRIFT_VALIDATOR_ID, "include_split_pairs")) == [["train", "train"]]
    assert container(spec, names.DRIFT_VALIDATOR_ID)["args"][:2] == [
        "--executor_class_path",
        "components.drift.Executor",
    ]
    assert constant(spec, names.DRIFT_GATE_ID, "action") == "stop"
    assert set(tasks[names.TRANSFORM_ID]["dependentTasks"]) >= {names.DRIFT_GATE_ID, names.VALIDATION_GATE_ID}
    assert (
        tasks[names.PUSHER_ID]["inputs"]["artifacts"]["statistics"]["taskOutputArtifact"]["producerTask"]
        == names.STATISTICS_GEN_ID
    )


def test_a_span_window_is_read_anew_at_every_scheduled_run(tmp_path):
    assert cli.main(compile_args(tmp_path / "p.yaml", "--set", "data.span_window=4", "--set", "drift.action=warn")) == 0
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert constant(spec, "TfdsExampleGen", "span_window") == 4
    assert constant(spec, "TfdsExampleGen", "span") == -1
    assert spec["root"]["dag"]["tasks"]["TfdsExampleGen"]["cachingOptions"] == {}
    assert constant(spec, names.DRIFT_GATE_ID, "action") == "warn"


def test_no_credentials_or_local_paths_in_the_spec(compiled):
    for name in ("pipeline.yaml", "pipeline.json"):
        text = (compiled / name).read_text()
        assert not re.search(
            r"token|passw|secret|private.key|credential|AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*KEY", text, re.IGNORECASE
        ), name
        assert str(REPO) not in text and str(pathlib.Path.home()) not in text, name
        assert '"env"' not in text and "\nenv:" not in text


def test_without_a_root_the_clusters_default_applies(tmp_path):
    assert cli.main(compile_argv(tmp_path / "p.yaml", serving_dir="gs://models/petseg")) == 0
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert "defaultPipelineRoot" not in spec
    assert json.loads(constant(spec, "Pusher", "push_destination")) == {
        "filesystem": {"base_directory": "gs://models/petseg"}
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--serving-dir: needed when the pipeline root is the cluster's default"),
        (["--pipeline-root", "minio://mlpipeline/petseg"], "--serving-dir: needed"),
        (["--serving-dir", "s3://models/petseg"], "TensorFlow cannot write minio:// or s3://"),
        (["--target", "vertex", "--serving-dir", "gs://m/s"], "Vertex AI Pipelines needs a gs:// pipeline root"),
        (["--target", "vertex", "--pipeline-root", "minio://x/y"], "needs a gs:// pipeline root"),
        (["--pipeline-root", "/local/root"], "not a URI the launcher can store artifacts under"),
        (["--pipeline-root", ROOT, "--gpus", "-1"], "--gpus: must be >= 0"),
        (["--pipeline-root", ROOT, "--memory", "0"], "--memory: must be > 0"),
        # Vertex names its GPUs; Kubernetes' nvidia.com/gpu would be refused by Vertex at run time.
        (
            ["--target", "vertex", "--pipeline-root", ROOT, "--gpus", "1"],
            "--gpu-type: Vertex names GPUs by type, one of NVIDIA_TESLA_K80, NVIDIA_TESLA_P100",
        ),
        (
            ["--target", "vertex", "--pipeline-root", ROOT, "--gpus", "1", "--gpu-type", "nvidia.com/gpu"],
            "got 'nvidia.com/gpu'",
        ),
    ],
)
def test_settings_the_target_cannot_use_are_clear_errors(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        cli.main(compile_argv(tmp_path / "p.yaml", *extra))


def test_vertex_gets_its_own_gpu_name(compiled):
    job = json.loads((compiled / "pipeline.json").read_text())
    resources = container(job["pipelineSpec"], "Trainer")["resources"]
    assert resources["accelerator"] == {"type": "NVIDIA_TESLA_T4", "count": "2"}


def test_a_flag_error_comes_before_tfx_is_imported(tmp_path):
    """The one-line refusal, without TensorFlow's start-up lines before it."""
    code = (
        "import sys\nfrom cli import main\ntry:\n    main.main(sys.argv[1:])\nexcept SystemExit as exc:\n"
        "    print(exc)\nprint(sorted({'tensorflow', 'tfx'} & set(sys.modules)))"
    )
    args = compile_argv(tmp_path / "p.json", "--set", "train.workers=2", target="vertex", pipeline_root=ROOT)
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines() == [
        "petseg: --project: required for --target vertex with train.workers=2 (the Google Cloud project the "
        "Trainer's CustomJob runs in)",
        "[]",
    ], done.stdout + done.stderr
    assert done.stderr == ""


def test_compile_keeps_tensorflow_and_tfx_off_the_console(tmp_path):
    package, scratch = tmp_path / "p.yaml", tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *compile_args(package)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, TMPDIR=str(scratch)),
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"petseg: wrote {package}\n", "")
    assert list(scratch.iterdir()) == []  # the full log is kept only when compiling fails


def test_bad_target_and_file_names_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["kubeflow", "compile", "--output-file", str(tmp_path / "p.yaml"), "--target", "argo"])
    assert "invalid choice: 'argo'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"\.yaml"):
        cli.main(compile_argv(tmp_path / "p.txt", pipeline_root=ROOT))
    with pytest.raises(SystemExit, match="a PipelineJob .json is for --target vertex"):
        cli.main(compile_argv(tmp_path / "p.json", pipeline_root=ROOT))


# ---------------------------------------------------------------- the image


def dockerfile_instructions(path):
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [tuple(item.split(None, 1)) for item in logical]


def test_dockerfile_installs_the_lock_into_the_tfx_image_and_runs_as_non_root():
    instructions = dockerfile_instructions(REPO / "kubeflow" / "Dockerfile")
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    final = instructions[stages[-1] :]
    lock = (REPO / "uv.lock").read_text()
    tfx_version = re.search(r'name = "tfx"\nversion = "([^"]+)"', lock).group(1)
    assert final[0] == ("FROM", f"tensorflow/tfx:{tfx_version}")

    ops = {}
    for op, args in final:
        ops.setdefault(op, []).append(args)
    assert ops["WORKDIR"] == [runner.APP_DIR]
    env = " ".join(ops["ENV"])
    assert f"PYTHONPATH={runner.APP_DIR}" in env
    run = " ".join(ops["RUN"])
    assert "uv export --frozen --no-dev" in run and "--require-hashes" in run and "--no-deps" in run
    # Every package pyproject ships is copied to where the spec expects it (APP_DIR/<package>).
    packages = re.search(r"include = \[([^\]]*)\]", (REPO / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"{package}/ {package}/" in ops["COPY"], package
    for copy in ops["COPY"]:
        sources = [s for s in copy.split()[:-1] if not s.startswith("--")]
        if not copy.startswith("--from"):
            assert all((REPO / s).exists() for s in sources), copy
    assert ops["USER"][-1].split(":")[0] not in ("0", "root")
    assert final[-1][0] == "USER"  # nothing after it runs as root


def test_dockerignore_keeps_what_the_dockerfile_copies():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    ignore = [line for line in lines if line and not line.startswith("#")]
    assert ignore[0] == "*"  # an allow-list: .venv, runs/ and .git never reach the build context
    packages = re.search(r"include = \[([^\]]*)\]", (REPO / "pyproject.toml").read_text()).group(1)
    for needed in ["pyproject.toml", "uv.lock"] + [f"{p}/" for p in re.findall(r'"(\w+)\*"', packages)]:
        assert f"!{needed}" in ignore, needed


def test_flink_settings_reach_every_beam_task_of_the_compiled_spec(tmp_path):
    # The same `beam` section as `petseg run`: a job server service and a worker-pool sidecar on localhost.
    out = tmp_path / "flink.yaml"
    assert (
        cli.main(
            compile_argv(
                out,
                "--set",
                "beam.runner=flink",
                "--set",
                "beam.job_endpoint=flink-jobserver:8099",
                "--set",
                "beam.parallelism=4",
                "--set",
                f"beam.sdk_image={IMAGE}",
                "--beam-arg=--max_parallelism=16",
                "--beam-arg=--parallelism=6",
                image=IMAGE,
                pipeline_root=ROOT,
            )
        )
        == 0
    )
    spec = yaml.safe_load(out.read_text())
    for task in (names.STATISTICS_GEN_ID, names.TRANSFORM_ID, names.EVALUATOR_ID):
        options = task_beam_options(spec, task)
        portable = options.view_as(beam_options.PortableOptions)
        assert options.view_as(beam_options.StandardOptions).runner == "PortableRunner", task
        assert (portable.job_endpoint, portable.environment_type, portable.environment_config) == (
            "flink-jobserver:8099",
            "EXTERNAL",
            "127.0.0.1:50000",
        ), task
        assert options.view_as(beam_options.WorkerOptions).sdk_container_image == IMAGE, task
        # The user's --beam-arg values come last and win over the `beam` section's.
        flink_options = options.view_as(beam_options.FlinkRunnerOptions)
        assert (flink_options.parallelism, flink_options.max_parallelism) == (6, 16), task


def test_a_beam_runner_flag_in_beam_args_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            [
                "kubeflow",
                "compile",
                "--output-file",
                str(tmp_path / "x.yaml"),
                "--pipeline-root",
                ROOT,
                "--beam-arg=--runner=SamzaRunner",
            ]
        )
    assert exit_info.value.code == 2

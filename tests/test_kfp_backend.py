"""Open-source KFP's backend compiler (kubeflow/kfpcheck) on what `petseg kubeflow compile` and TFX write."""

import pathlib
import subprocess
import sys

import pytest
import yaml

from config import names
from support import kfp_backend
from support.petseg import compile_argv

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE = "example.com/petseg:test"
PIPELINE_ROOT = "gs://bucket/root"
REJECTION = "non-container and non-importer executor not implemented"


def _effective_requests(task):
    """What the pod asks Kubernetes for: an explicit request, else the limit (Kubernetes' default)."""
    return {**task.get("limits", {}), **task.get("requests", {})}


@pytest.fixture(scope="module")
def tiny_tfx_specs(tmp_path_factory):
    """Two PipelineSpecs from TFX's own compiler: with and without a latest-blessed-model Resolver."""
    from tfx import v1 as tfx
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2
    from kfp.pipeline_spec import pipeline_spec_pb2

    out = tmp_path_factory.mktemp("tiny_tfx")
    resources = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    specs = {}
    for name, with_resolver in (("plain", False), ("resolver", True)):
        # ImportSchemaGen, not an ExampleGen: TFX drops the platform config of file-based ExampleGens.
        schema_gen = tfx.components.ImportSchemaGen(schema_file="gs://bucket/schema.pbtxt")
        schema_gen.with_platform_config(
            resources(
                cpu_limit=2, memory_limit=4, accelerator=resources.AcceleratorConfig(type="nvidia.com/gpu", count=1)
            )
        )
        components = [schema_gen]
        if with_resolver:
            components.append(
                tfx.dsl.Resolver(
                    strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
                    model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
                    model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
                ).with_id("latest_blessed_model_resolver")
            )
        specs[name] = out / f"{name}.yaml"
        pipeline = tfx.dsl.Pipeline(pipeline_name=f"tiny-{name}", pipeline_root=PIPELINE_ROOT, components=components)
        v2.KubeflowV2DagRunner(
            v2.KubeflowV2DagRunnerConfig(default_image=IMAGE, use_pipeline_spec_2_1=True),
            output_filename=str(specs[name]),
        ).run(pipeline)
    return specs


def test_backend_compiler_rejects_a_resolver_executor(tiny_tfx_specs):
    with pytest.raises(kfp_backend.BackendRejected) as rejected:
        kfp_backend.check(tiny_tfx_specs["resolver"], pipeline_root=PIPELINE_ROOT)
    message = str(rejected.value)
    assert "Failed to compile job" in message
    assert REJECTION in message
    # The executor it names is one of the two the Resolver compiles to.
    assert "latest_blessed_model_resolver-model" in message and "-resolver_executor" in message


def test_report_reads_images_resources_and_root_back_from_the_workflow(tiny_tfx_specs):
    report = kfp_backend.check(tiny_tfx_specs["plain"])
    assert report["pipeline"] == "tiny-plain"
    # No run root: the driver takes the kfp-launcher ConfigMap's defaultPipelineRoot, else MinIO.
    assert report["pipelineRoot"] == "minio://mlpipeline/v2/artifacts"
    assert "kfp-launcher" in report["pipelineRootSource"]
    [task] = report["tasks"]
    assert task["name"] == "ImportSchemaGen" and task["executor"] == "container" and task["dag"] == "root"
    assert task["images"] == [IMAGE]
    assert task["command"][:3] == ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
    assert task["limits"] == {"cpu": "2", "memory": "4G", "nvidia.com/gpu": "1"}
    kinds = {t["kind"] for t in report["templates"]}
    assert "dag" in kinds and any(kind.startswith("executor") for kind in kinds)


def test_backend_compiler_accepts_the_petseg_pipeline(tmp_path):
    spec = tmp_path / "p.yaml"
    # No --pipeline-root: the run names it. The Pusher then needs its own gs:// destination. A window of
    # spans on gs://, read anew at each run, and the drift gate in front of Transform.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            *compile_argv(
                spec,
                "--set",
                "data.span_window=3",
                image=IMAGE,
                gpus=2,
                cpu=4,
                memory=16,
                serving_dir="gs://bucket/serving",
                oxford_raw_dir="gs://bucket/pets/span-{SPAN}",
            ),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    report = kfp_backend.check(spec, pipeline_root=PIPELINE_ROOT)

    assert report["pipelineRoot"] == PIPELINE_ROOT
    assert report["pipelineRootSource"] == "runtimeConfig.gcsOutputDirectory"
    tasks = {task["name"]: task for task in report["tasks"]}
    assert {"Trainer", "Evaluator", "Pusher", names.DRIFT_VALIDATOR_ID, names.DRIFT_GATE_ID} <= set(tasks)
    for name, task in tasks.items():
        assert task["executor"] == "container", name
        assert task["images"] == [IMAGE], name
    assert _effective_requests(tasks[names.TRAINER_ID]) == {"cpu": "4", "memory": "16G", "nvidia.com/gpu": "2"}
    for name, task in tasks.items():
        if name != names.TRAINER_ID:
            assert _effective_requests(task) == {}, name


def test_argo_refuses_a_task_name_it_cannot_depend_on(tiny_tfx_specs, tmp_path):
    """Argo's own validation, which its controller runs before starting a workflow: no `_` in a task's name.

    The KFP compile accepts the spec; a task depending on one named `schema_gen` is refused.
    """
    spec = yaml.safe_load(tiny_tfx_specs["plain"].read_text())
    tasks = spec["root"]["dag"]["tasks"]
    tasks["schema_gen"] = tasks.pop("ImportSchemaGen")
    tasks["follower"] = dict(tasks["schema_gen"], dependentTasks=["schema_gen"], taskInfo={"name": "follower"})
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(spec))
    with pytest.raises(kfp_backend.BackendRejected, match="Argo workflow validation: .*invalid dependency schema"):
        kfp_backend.check(edited, pipeline_root=PIPELINE_ROOT)

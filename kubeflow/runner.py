"""Compiles `create_pipeline(config)` with KubeflowV2DagRunner for open-source KFP 2.x or Vertex AI Pipelines."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import posixpath
from typing import Any, Dict, Optional

from config import names
from config.settings import PipelineConfig
from kubeflow import vertex
from kubeflow.resources import Resources

# Where kubeflow/Dockerfile copies the project; every path a task reads from the code lives here.
APP_DIR = "/app"
DEFAULT_IMAGE = "petseg:latest"
# Container scratch: TfdsExampleGen copies the records into its Examples artifact under the
# pipeline root, so nothing downstream reads this folder and it may vanish with the pod.
DEFAULT_DATA_DIR = "/tmp/petseg/tfds"
TARGETS = ("kfp", "vertex")
# Every task runs TFX's executor through our entrypoint, which also speaks open-source KFP's launcher.
TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
ENTRYPOINT = "kubeflow.entrypoint"
# Schemes tf.io.gfile cannot write; the launcher mirrors them for artifacts, nothing does for other paths.
_NOT_WRITABLE_BY_TF = ("minio://", "s3://")
_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A Kubeflow setting the chosen target cannot use; the message names the flag."""


@dataclasses.dataclass
class KubeflowSettings:
    """What differs between the local run and a cluster run of the same pipeline."""

    # "kfp": open-source Kubeflow Pipelines 2.x; "vertex": Vertex AI Pipelines.
    target: str = "kfp"
    # gs://, minio://, s3://: where the orchestrator keeps artifacts. None (kfp only): the cluster's
    # defaultPipelineRoot (kfp-launcher ConfigMap), or the run's own when submitted with one.
    pipeline_root: Optional[str] = None
    image: str = DEFAULT_IMAGE
    # None: <pipeline_root>/serving. The tasks write and read it themselves (not through the launcher).
    serving_dir: Optional[str] = None
    # A filesystem path inside the container (TFDS builds with local paths), e.g. a mounted volume.
    data_dir: str = DEFAULT_DATA_DIR
    # Where the project sits in the image (the Dockerfile's WORKDIR).
    app_dir: str = APP_DIR
    # The Trainer task's machine; with train.workers > 1, each replica's.
    trainer: Resources = Resources()
    # Vertex with train.workers > 1: the Trainer's CustomJob runs in this project and region, each
    # replica on this machine type (None: the smallest N1 machine with the trainer's cpu/memory).
    project: Optional[str] = None
    region: Optional[str] = None
    machine_type: Optional[str] = None

    def validate(self, config: PipelineConfig) -> "KubeflowSettings":
        """Raises SettingsError, naming the flag, for anything the target cannot run `config` with.

        Everything is checked here, before TFX is imported, so a wrong flag fails in a line.
        """
        try:
            self._validate(config)
        except ValueError as exc:  # ResourcesError, VertexError, TFJobError
            if isinstance(exc, SettingsError):
                raise
            raise SettingsError(str(exc)) from None
        return self

    def _validate(self, config: PipelineConfig) -> None:
        if self.target not in TARGETS:
            raise SettingsError(f"--target: {self.target!r} is not one of {', '.join(TARGETS)}")
        root = self.pipeline_root
        if self.target == "vertex" and not (root or "").startswith("gs://"):
            raise SettingsError(f"--pipeline-root: Vertex AI Pipelines needs a gs:// pipeline root, got {root!r}")
        if root is not None and "://" not in root:
            raise SettingsError(
                f"--pipeline-root: {root!r} is not a URI the launcher can store artifacts "
                "under; use gs://, minio:// or s3://"
            )
        if self.serving_dir is None and (root is None or root.startswith(_NOT_WRITABLE_BY_TF)):
            raise SettingsError(
                "--serving-dir: needed when the pipeline root is the cluster's default or minio:// / s3://: "
                "the Pusher writes served versions itself, so give a gs:// URI or a path on a volume mounted "
                "into every task"
            )
        if self.serving.startswith(_NOT_WRITABLE_BY_TF):
            raise SettingsError(
                f"--serving-dir: {self.serving!r}: TensorFlow cannot write minio:// or s3:// "
                "paths; use gs:// or a path on a mounted volume"
            )
        self.trainer.checked()
        if self.target == "vertex" and self.trainer.gpus:
            self.trainer.vertex_gpu()
        if _trainer_is_a_custom_job(config, self):
            self.custom_job(config)
            return
        unused = [
            flag
            for flag, value in (
                ("--project", self.project),
                ("--region", self.region),
                ("--machine-type", self.machine_type),
            )
            if value
        ]
        if unused:
            raise SettingsError(
                f"{'/'.join(unused)}: only used by --target vertex with train.workers > 1 (the "
                f"Trainer's CustomJob); this is --target {self.target} with "
                f"train.workers={config.train.workers}"
            )
        if _trainer_is_a_tfjob(config, self) and not (root or "").startswith("gs://"):
            raise SettingsError(
                f"--pipeline-root: train.workers={config.train.workers} runs the Trainer as a TFJob whose replicas "
                f"read and write artifacts themselves, so it needs a gs:// root, got "
                f"{root or 'the cluster default (MinIO)'}: TensorFlow cannot open minio:// or s3:// (that needs "
                "tensorflow-io's S3 filesystem in the image and credentials in every replica)"
            )

    def custom_job(self, config: PipelineConfig) -> Dict[str, Any]:
        """The Vertex CustomJob of train.workers replicas that runs the Trainer."""
        return vertex.training_job(
            project=self.project,
            region=self.region,
            image=self.image,
            workers=config.train.workers,
            display_name=f"{config.name}-trainer",
            replica=vertex.Replica(machine_type=self.machine_type, resources=self.trainer),
        )

    @property
    def serving(self) -> str:
        return self.serving_dir or posixpath.join(self.pipeline_root or "", "serving")

    def in_image(self, local_path: str) -> str:
        """The path of a project file (e.g. transform/schema.pbtxt) inside the image."""
        relative = pathlib.Path(local_path).resolve().relative_to(_REPO_ROOT)
        return posixpath.join(self.app_dir, relative.as_posix())


def build_pipeline(config: PipelineConfig, settings: KubeflowSettings):
    """The local pipeline, relocated into the image and the pipeline root, with the Trainer's resources."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipeline.pipeline import SCHEMA_FILE, create_pipeline

    pipeline = create_pipeline(
        # TFX needs a root to compile; the spec leaves it out when the cluster's default applies.
        config,
        pipeline_root=settings.pipeline_root or "",
        serving_dir=settings.serving,
        schema_file=settings.in_image(SCHEMA_FILE),
        data_dir=settings.data_dir,
    )
    resource_spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    resources = resource_spec()
    trainer = settings.trainer
    if trainer.cpu:
        resources.cpu_limit = trainer.cpu
    if trainer.memory_gb:
        resources.memory_limit = trainer.memory_gb
    if trainer.gpus:
        gpu = trainer.vertex_gpu() if settings.target == "vertex" else trainer.kubernetes_gpu
        resources.accelerator.CopyFrom(resource_spec.AcceleratorConfig(type=gpu, count=trainer.gpus))
    # With train.workers > 1 the replicas of a TFJob or CustomJob get these; the task itself only waits.
    if resources.ByteSize() and config.train.workers == 1:
        component(pipeline, names.TRAINER_ID).with_platform_config(resources)
    # Several machines: the Trainer's executor is swapped for one that runs TFX's on a job of replicas
    # (kubeflow/replicas.py), a Vertex CustomJob or a TFJob.
    if _trainer_is_a_custom_job(config, settings):
        vertex.run_on_worker_pools(
            component(pipeline, names.TRAINER_ID), region=settings.region, job=settings.custom_job(config)
        )
    elif _trainer_is_a_tfjob(config, settings):
        from kubeflow import tfjob_executor

        # The GPU type as the replicas' pods will ask for it, spelled out in the compiled spec.
        tfjob_executor.run_on_tfjob(
            component(pipeline, names.TRAINER_ID),
            image=settings.image,
            workers=config.train.workers,
            resources=dataclasses.replace(trainer, gpu_type=trainer.kubernetes_gpu),
        )
    return pipeline


def component(pipeline, node_id: str):
    found = [c for c in pipeline.components if c.id == node_id]
    if not found:
        raise KeyError(f"the pipeline has no component {node_id!r}")
    return found[0]


def compile_pipeline(config: PipelineConfig, settings: KubeflowSettings, output: str) -> Dict[str, Any]:
    """Writes `output` (.yaml/.yml: PipelineSpec; .json: Vertex PipelineJob); returns the job dict."""
    import yaml
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

    from pipeline import freshness

    settings.validate(config)
    check_output(output, settings)
    pipeline = build_pipeline(config, settings)
    runner = v2.KubeflowV2DagRunner(
        v2.KubeflowV2DagRunnerConfig(display_name=config.name, default_image=settings.image, use_pipeline_spec_2_1=True)
    )
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    if settings.pipeline_root:
        # Vertex reads it from here; open-source KFP only from the run, so `submit`/`schedule` pass it on.
        spec["defaultPipelineRoot"] = settings.pipeline_root
    else:
        spec.pop("defaultPipelineRoot", None)
        job.get("runtimeConfig", {}).pop("gcsOutputDirectory", None)
    for executor in spec["deploymentSpec"]["executors"].values():
        command = executor.get("container", {}).get("command", [])
        if command[-2:] == ["-m", TFX_ENTRYPOINT]:
            command[-1] = ENTRYPOINT
    tasks = spec["root"]["dag"]["tasks"]
    # Compiled once, run on a schedule: nothing can pin the newest span or served model before each run.
    for task in freshness.resolved_when_run(config):
        tasks[task]["cachingOptions"] = {}
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output.endswith(".json"):
        path.write_text(json.dumps(job, indent=2, sort_keys=True) + "\n")
    else:
        path.write_text(yaml.safe_dump(spec, sort_keys=True))
    return job


def check_output(output: str, settings: KubeflowSettings) -> None:
    """Raises SettingsError unless `output` names the file the target takes."""
    if not output.endswith((".yaml", ".yml", ".json")):
        raise SettingsError(
            f"--output-file: {output}: the file name must end in .yaml (PipelineSpec) or .json (Vertex PipelineJob)"
        )
    if output.endswith(".json") and settings.target != "vertex":
        raise SettingsError(
            f"--output-file: {output}: a PipelineJob .json is for --target vertex; open-source "
            "KFP takes the PipelineSpec .yaml"
        )


def _trainer_is_a_tfjob(config: PipelineConfig, settings: KubeflowSettings) -> bool:
    return config.train.workers > 1 and settings.target == "kfp"


def _trainer_is_a_custom_job(config: PipelineConfig, settings: KubeflowSettings) -> bool:
    return config.train.workers > 1 and settings.target == "vertex"


def load_spec(path: str) -> Dict[str, Any]:
    """The PipelineSpec dict of a compiled file, YAML or PipelineJob JSON."""
    import yaml

    text = pathlib.Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)["pipelineSpec"]
    return yaml.safe_load(text)

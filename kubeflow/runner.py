"""Compiles `create_pipeline(config)` with KubeflowV2DagRunner: PipelineSpec YAML (KFP 2.x) or PipelineJob JSON."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import posixpath
from typing import Any, Dict, Optional

from components import tfds_data
from pipeline.config import PipelineConfig

# Where kubeflow/Dockerfile copies the project; every path a task reads from the code lives here.
APP_DIR = "/app"
DEFAULT_IMAGE = "petseg:latest"
# Container scratch: TfdsExampleGen copies the records into its Examples artifact under the
# pipeline root, so nothing downstream reads this folder and it may vanish with the pod.
DEFAULT_DATA_DIR = "/tmp/petseg/tfds"
GPU_TYPE = "nvidia.com/gpu"
EXAMPLE_GEN_ID = "TfdsExampleGen"
TRAINER_ID = "Trainer"
_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class KubeflowSettings:
    """What differs between the local run and a cluster run of the same pipeline."""

    # gs://, s3://, minio:// ...: where KFP writes artifacts; the tasks must be able to write there.
    pipeline_root: str
    image: str = DEFAULT_IMAGE
    # None: <pipeline_root>/serving.
    serving_dir: Optional[str] = None
    # A filesystem path inside the container (TFDS builds with local paths), e.g. a mounted volume.
    data_dir: str = DEFAULT_DATA_DIR
    # Where the project sits in the image (the Dockerfile's WORKDIR).
    app_dir: str = APP_DIR
    trainer_cpu: Optional[float] = None  # vCPUs
    trainer_memory_gb: Optional[float] = None
    trainer_gpus: int = 0
    gpu_type: str = GPU_TYPE

    @property
    def serving(self) -> str:
        return self.serving_dir or posixpath.join(self.pipeline_root, "serving")

    def in_image(self, local_path: str) -> str:
        """The path of a project file (e.g. transform/schema.pbtxt) inside the image."""
        relative = pathlib.Path(local_path).resolve().relative_to(_REPO_ROOT)
        return posixpath.join(self.app_dir, relative.as_posix())


def build_pipeline(config: PipelineConfig, settings: KubeflowSettings):
    """The local pipeline, relocated into the image and the pipeline root, with the Trainer's resources."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipeline.pipeline import SCHEMA_FILE, create_pipeline

    pipeline = create_pipeline(
        config, pipeline_root=settings.pipeline_root, serving_dir=settings.serving,
        schema_file=settings.in_image(SCHEMA_FILE), data_dir=settings.data_dir)
    resource_spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    resources = resource_spec()
    if settings.trainer_cpu:
        resources.cpu_limit = settings.trainer_cpu
    if settings.trainer_memory_gb:
        resources.memory_limit = settings.trainer_memory_gb
    if settings.trainer_gpus:
        resources.accelerator.CopyFrom(resource_spec.AcceleratorConfig(
            type=settings.gpu_type, count=settings.trainer_gpus))
    if resources.ByteSize():
        component(pipeline, TRAINER_ID).with_platform_config(resources)
    return pipeline


def component(pipeline, node_id: str):
    found = [c for c in pipeline.components if c.id == node_id]
    if not found:
        raise KeyError(f"the pipeline has no component {node_id!r}")
    return found[0]


def compile_pipeline(config: PipelineConfig, settings: KubeflowSettings, output: str) -> Dict[str, Any]:
    """Writes `output` (.yaml/.yml: PipelineSpec for KFP 2.x; .json: PipelineJob for Vertex); returns the job dict."""
    import yaml
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2

    if not output.endswith((".yaml", ".yml", ".json")):
        raise ValueError(f"{output}: the file name must end in .yaml (KFP 2.x) or .json (Vertex PipelineJob)")
    pipeline = build_pipeline(config, settings)
    runner = v2.KubeflowV2DagRunner(v2.KubeflowV2DagRunnerConfig(
        display_name=config.name, default_image=settings.image, use_pipeline_spec_2_1=True))
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    # The YAML alone must be submittable: KFP reads the root from the spec unless the run overrides it.
    spec["defaultPipelineRoot"] = settings.pipeline_root
    if _reads_spans(config):
        # Compiled once, run on a schedule: a cached ExampleGen would hand every run the span it
        # saw first. Its executor resolves the latest span, so it must execute every time.
        spec["root"]["dag"]["tasks"][EXAMPLE_GEN_ID]["cachingOptions"] = {}
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output.endswith(".json"):
        path.write_text(json.dumps(job, indent=2, sort_keys=True) + "\n")
    else:
        path.write_text(yaml.safe_dump(spec, sort_keys=True))
    return job


def _reads_spans(config: PipelineConfig) -> bool:
    return tfds_data.has_span(config.data.oxford_raw_dir) and config.data.span is None


def load_spec(path: str) -> Dict[str, Any]:
    """The PipelineSpec dict of a compiled file, YAML or PipelineJob JSON."""
    import yaml

    text = pathlib.Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)["pipelineSpec"]
    return yaml.safe_load(text)


def executor_images(spec: Dict[str, Any]) -> Dict[str, str]:
    """Executor label -> container image, for every container executor."""
    return {label: executor["container"]["image"]
            for label, executor in spec["deploymentSpec"]["executors"].items() if "container" in executor}

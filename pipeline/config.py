"""Typed pipeline configuration: named profiles, overridden by a config file and `key=value` pairs."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import typing
from typing import Any, Dict, Iterable, Mapping, Optional

# The trainer owns its hyper-parameters; re-exported because the pipeline configuration composes them.
from trainer.config import ModelConfig, TrainConfig, problems as trainer_problems

DATASETS = ("synthetic", "oxford_iiit_pet")
BEAM_RUNNERS = ("direct", "flink", "spark", "dataflow")
BEAM_ENVIRONMENTS = ("EXTERNAL", "PROCESS", "LOOPBACK")
# Keys that moved; naming the new one beats a bare "unknown key".
RENAMED_KEYS = {"beam_workers": "beam.direct_workers", "beam_args": "beam.args"}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclasses.dataclass
class DataConfig:
    """Where the examples come from."""

    dataset: str = "synthetic"
    tfds_version: str = "4.*.*"
    # Extracted `images/` + `annotations/` folders; built offline with the real TFDS builder.
    # `{SPAN}` in the last component (e.g. /data/pets/span-{SPAN}) reads one span of many.
    oxford_raw_dir: Optional[str] = None
    # With `{SPAN}`: the span to read; None = the latest span when the run starts.
    span: Optional[int] = None
    # TFDS data dir; None means `<output>/tfds`.
    data_dir: Optional[str] = None
    synthetic_train_images: int = 800
    synthetic_test_images: int = 200
    synthetic_seed: int = 0
    # Fail on the first broken image/trimap pair instead of skipping and counting it.
    strict: bool = False


@dataclasses.dataclass
class EvalConfig:
    """The blessing gate."""

    min_mean_iou: float = 0.5
    # Largest allowed drop in mean IoU against the blessed baseline (absolute).
    max_regression: float = 0.01
    # Eval images drawn as input / truth / prediction PNGs in the report.
    report_images: int = 6
    # Images per model call in the Evaluator. Beam's adaptive batching instead starts at one and grows,
    # and every new batch shape makes the model's call slower; 4..16 run equally fast on CPU (bench/README.md).
    batch_size: int = 16


@dataclasses.dataclass
class BeamConfig:
    """Where StatisticsGen, Transform and the Evaluator run their Beam pipelines."""

    # direct: Beam's DirectRunner in the petseg process (or the task's pod on Kubeflow); flink, spark:
    # Beam's portable runner against a job server; dataflow: Google Cloud Dataflow.
    runner: str = "direct"
    # DirectRunner worker processes. 1 runs Beam in this process: each extra worker process imports
    # TF/TFX anew for every Beam pipeline (StatisticsGen, Transform, Evaluator), measured at 60-100 s
    # per pipeline on 2 cores against ~20 s of actual work (bench/README.md). Raise it only for data
    # far larger than the synthetic or Oxford sets on a many-core machine.
    direct_workers: int = 1
    # flink/spark: Beam's job server, host:port (`petseg flink up` serves 127.0.0.1:8099).
    job_endpoint: str = "127.0.0.1:8099"
    # flink: the cluster's REST address, host:port; a failed run points at its job list there (the
    # job server has its own --flink-master).
    flink_master: str = "127.0.0.1:8081"
    # flink: parallel instances of every stage (task slots used).
    parallelism: int = 2
    # flink/spark: how the Python SDK harness runs: EXTERNAL = a worker pool at environment_config
    # (host:port; a sidecar beside each TaskManager), PROCESS = a boot command on each worker
    # (environment_config is Beam's JSON, e.g. {"command": "/opt/apache/beam/boot"}), LOOPBACK = in
    # the submitting process (tests only: it must reach and be reached by every TaskManager).
    environment: str = "EXTERNAL"
    environment_config: str = "127.0.0.1:50000"
    # A TaskManager keeps a job's SDK worker this long after the last stage that used it, so the job's
    # next stage finds it with TF/TFX imported (0: released at once). Beam honours it only when its
    # runner classes come from the cluster's own classpath (`petseg flink up` puts them there). It must
    # outlast the longest pause between two stages on one TaskManager: a release in the middle of a job
    # raced the next stage's new worker and failed the job (60 s did, at load 16). The job's end does
    # not release the workers, so they stay idle (~600-800 MB each) this long after it.
    environment_cache_millis: int = 600_000
    # flink/spark: the image the SDK harness runs in (the Kubeflow image for sidecars). It also tells
    # TFX that the workers hold the code, so it builds no sdist of itself per component.
    sdk_image: str = "petseg-sdk-harness"
    # Extra Beam args, appended last (they win), e.g. Dataflow's --project/--region/--temp_location.
    args: typing.List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PipelineConfig:
    """Everything one pipeline run needs."""

    profile: str = "quick"
    name: str = "petseg"
    output: str = "runs/default"
    beam: BeamConfig = dataclasses.field(default_factory=BeamConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    # Paths derived from `output`, so a run never writes outside it.
    @property
    def output_dir(self) -> pathlib.Path:
        return pathlib.Path(self.output).resolve()

    @property
    def tfds_data_dir(self) -> str:
        return os.path.abspath(self.data.data_dir) if self.data.data_dir else str(self.output_dir / "tfds")

    @property
    def pipeline_root(self) -> str:
        return str(self.output_dir / "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return str(self.output_dir / "metadata.sqlite")

    @property
    def serving_dir(self) -> str:
        return str(self.output_dir / "serving")

    @property
    def report_dir(self) -> str:
        return str(self.output_dir / "report")

    def validate(self) -> "PipelineConfig":
        """Raises ConfigError naming the first invalid key."""
        _check(self.data.dataset in DATASETS, "data.dataset", f"must be one of {DATASETS}")
        _check(self.data.synthetic_train_images >= 1, "data.synthetic_train_images", "must be >= 1")
        _check(self.data.synthetic_test_images >= 1, "data.synthetic_test_images", "must be >= 1")
        if self.data.oxford_raw_dir is not None:
            _check(self.data.dataset == "oxford_iiit_pet", "data.oxford_raw_dir",
                   "needs data.dataset=oxford_iiit_pet")
        if self.data.span is not None:
            _check(self.data.span >= 0, "data.span", "must be >= 0 or null (the latest span)")
            _check("{SPAN}" in (self.data.oxford_raw_dir or ""), "data.span",
                   "needs a data.oxford_raw_dir with {SPAN}, e.g. /data/pets/span-{SPAN}")
        for key, why in trainer_problems(self.model, self.train):
            raise ConfigError(f"{key}: {why}")
        _check(0 <= self.eval.min_mean_iou <= 1, "eval.min_mean_iou", "must be in [0, 1]")
        _check(0 <= self.eval.max_regression <= 1, "eval.max_regression", "must be in [0, 1]")
        _check(self.eval.report_images >= 0, "eval.report_images", "must be >= 0")
        _check(self.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _validate_beam(self.beam)
        _check(bool(self.name) and self.name.replace("-", "").replace("_", "").isalnum(), "name",
               "must be letters, digits, '-' or '_'")
        return self


def _validate_beam(beam: BeamConfig) -> None:
    """Raises ConfigError naming the first key that does not fit beam.runner."""
    _check(beam.runner in BEAM_RUNNERS, "beam.runner", f"must be one of {BEAM_RUNNERS}")
    _check(beam.direct_workers >= 1, "beam.direct_workers", "must be >= 1")
    for arg in beam.args:
        _check(not arg.startswith(("--runner", "--job_endpoint", "--environment_type")), "beam.args",
               f"{arg!r}: set beam.runner / beam.job_endpoint / beam.environment instead")
    if beam.runner != "direct":
        _check(beam.direct_workers == 1, "beam.direct_workers", "only applies to beam.runner=direct")
    if beam.runner in ("flink", "spark"):
        _check(_host_port(beam.job_endpoint), "beam.job_endpoint",
               f"must be host:port of Beam's {beam.runner} job server, got {beam.job_endpoint!r}")
        _check(beam.environment in BEAM_ENVIRONMENTS, "beam.environment", f"must be one of {BEAM_ENVIRONMENTS}")
        if beam.environment == "EXTERNAL":
            _check(_host_port(beam.environment_config), "beam.environment_config",
                   f"EXTERNAL needs the SDK worker pool as host:port, got {beam.environment_config!r}")
        elif beam.environment == "PROCESS":
            _check(beam.environment_config.lstrip().startswith("{") and '"command"' in beam.environment_config,
                   "beam.environment_config", 'PROCESS needs JSON like {"command": "/opt/apache/beam/boot"}')
        _check(beam.environment_cache_millis >= 0, "beam.environment_cache_millis", "must be >= 0")
        _check(bool(beam.sdk_image), "beam.sdk_image", "must name the SDK harness image")
    if beam.runner == "flink":
        _check(beam.parallelism >= 1, "beam.parallelism", "must be >= 1")
        _check(_host_port(beam.flink_master), "beam.flink_master",
               f"must be host:port of Flink's REST API, got {beam.flink_master!r}")
    if beam.runner == "dataflow":
        for flag in ("--project", "--region", "--temp_location"):
            _check(any(a.startswith(flag + "=") for a in beam.args), "beam.args",
                   f"beam.runner=dataflow needs {flag}=... in beam.args")


def _host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(host) and bool(sep) and port.isdigit()


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


PROFILES: Dict[str, Dict[str, Any]] = {
    # Learns the embedded dataset in minutes on 2 CPU cores.
    "quick": {},
    # The seed tutorial's recipe: full VGG16 from ImageNet (frozen), 4096-wide head, 224x224.
    "seed": {
        "data.dataset": "oxford_iiit_pet",
        "model.image_size": 224,
        "model.width_multiplier": 1.0,
        "model.head_width": 4096,
        "model.encoder_weights": "imagenet",
        "model.dropout": 0.5,
        "train.epochs": 15,
        "train.batch_size": 64,
        "train.learning_rate": 1e-4,
        "eval.min_mean_iou": 0.6,
    },
    # For tests: the smallest run that still exercises every component.
    "tiny": {
        "data.synthetic_train_images": 48,
        "data.synthetic_test_images": 16,
        "model.image_size": 64,
        "model.width_multiplier": 0.125,
        "model.head_width": 32,
        "train.epochs": 2,
        "train.batch_size": 8,
        "eval.min_mean_iou": 0.0,
        "eval.max_regression": 1.0,
        "eval.report_images": 2,
    },
}


def load_config(profile: str = "quick", config_file: Optional[str] = None,
                overrides: Iterable[str] = ()) -> PipelineConfig:
    """Profile, then the YAML config file, then `key=value` overrides; validated."""
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    config = PipelineConfig(profile=profile)
    apply_values(config, PROFILES[profile])
    if config_file:
        apply_values(config, _flatten(_read_file(config_file)))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{item}: overrides are key=value, e.g. train.epochs=5")
        apply_values(config, {key.strip(): _parse_scalar(raw.strip())})
    return config.validate()


def apply_values(config: PipelineConfig, values: Mapping[str, Any]) -> PipelineConfig:
    """Sets dotted keys (e.g. `train.epochs`) with type checks; unknown keys are errors."""
    for key, value in values.items():
        if key in RENAMED_KEYS:
            raise ConfigError(f"{key}: renamed to {RENAMED_KEYS[key]}")
        *parents, leaf = key.split(".")
        target: Any = config
        for part in parents:
            sub = getattr(target, part, None) if _field_type(target, part) else None
            if not dataclasses.is_dataclass(sub):
                raise ConfigError(f"{key}: unknown key")
            target = sub
        field_type = _field_type(target, leaf)
        if field_type is None or dataclasses.is_dataclass(getattr(target, leaf)):
            raise ConfigError(f"{key}: unknown key")
        setattr(target, leaf, _coerce(key, value, field_type))
    return config


def _field_type(obj: Any, name: str) -> Optional[Any]:
    hints = typing.get_type_hints(type(obj))
    return hints.get(name) if name in {f.name for f in dataclasses.fields(obj)} else None


def _coerce(key: str, value: Any, field_type: Any) -> Any:
    origin, args = typing.get_origin(field_type), typing.get_args(field_type)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        field_type = next(a for a in args if a is not type(None))
        origin = typing.get_origin(field_type)
    if origin in (list, typing.List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [str(v) for v in value]
    if field_type is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if field_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if field_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if field_type is str:
        if isinstance(value, dict):  # e.g. beam.environment_config's JSON, parsed as YAML by --set
            return json.dumps(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {field_type}")


def _parse_scalar(raw: str) -> Any:
    """`--set` values use YAML scalars: 5, 0.1, true, null, text."""
    import yaml

    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def _read_file(path: str) -> Mapping[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of sections to values")
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat

"""The typed pipeline configuration: one dataclass per section, each value checked with the key it came from."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import typing
from typing import List, Optional, Tuple

ENCODER_WEIGHTS = ("none", "imagenet")  # or a path to an .h5 file
MIXED_PRECISION = ("none", "auto", "mixed_float16", "mixed_bfloat16")
DATASETS = ("synthetic", "oxford_iiit_pet")
BEAM_RUNNERS = ("direct", "flink", "spark", "dataflow")
BEAM_ENVIRONMENTS = ("EXTERNAL", "PROCESS", "LOOPBACK")
DRIFT_ACTIONS = ("stop", "warn")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclasses.dataclass
class DataConfig:
    """Where the examples come from."""

    dataset: str = "synthetic"
    """Where the pets come from: synthetic (embedded, offline) or oxford_iiit_pet (the real set)."""
    tfds_version: str = "4.*.*"
    """The TFDS builder version to read or build."""
    oxford_raw_dir: Optional[str] = None
    """Extracted Oxford-IIIT Pet archives to build offline; may hold {SPAN}."""
    span: Optional[int] = None
    """With {SPAN}: the span to read; null = the newest when the run starts."""
    # Evaluation and the drift gate still look at the newest span alone, so older spans dilute no change.
    span_window: int = 1
    """With {SPAN}: train on the train splits of the newest this-many spans (up to `span`)."""
    data_dir: Optional[str] = None
    """TFDS data dir; null = <output>/tfds."""
    synthetic_train_images: int = 800
    """Synthetic pets in the train split."""
    synthetic_test_images: int = 200
    """Synthetic pets in the test (eval) split."""
    synthetic_seed: int = 0
    """Seed of the synthetic pets."""
    # Synthetic pets like the real set (37 breeds, its photo sizes, its odd PNG/GIF/grayscale files, CMYK
    # ones) instead of six breeds of small photos: a rehearsal of a real run without the data.
    synthetic_like_oxford: bool = False
    """Synthetic pets shaped like the real set (37 breeds, its sizes and odd files)."""
    strict: bool = False
    """Stop at the first broken image/trimap pair instead of skipping it."""


@dataclasses.dataclass
class EvalConfig:
    """The blessing gate."""

    min_mean_iou: float = 0.5
    """The candidate's mean IoU must reach this to be blessed."""
    max_regression: float = 0.01
    """Largest mean IoU drop allowed against the served model (absolute)."""
    report_images: int = 6
    """Eval images drawn as input / truth / prediction in the report."""
    # "The newest" is read when the run starts, or, for a compiled Kubeflow spec, when the task runs.
    baseline_version: Optional[int] = None
    """The served version to beat and warm-start from; null = the newest."""
    # Images per model call in the Evaluator. Beam's adaptive batching instead starts at one and grows,
    # and every new batch shape makes the model's call slower; on a CPU, 4 to 16 run equally fast.
    batch_size: int = 16
    """Images per model call in the Evaluator."""


@dataclasses.dataclass
class DriftConfig:
    """The drift gate: the newest span's train split against the served model's newest span's (TFDV comparators).

    Each threshold is the largest value that still counts as no drift. The defaults are twice the larger 99th
    percentile of two calibrations on undrifted pairs of synthetic spans of 150-600 images, the default
    pets (24 pairs) and Oxford-like ones (20 pairs); the count ratio's bounds lie a third beyond its 1st and
    99th percentile (bench/README.md, "Drift thresholds").
    """

    action: str = "stop"
    """stop: fail the run before Transform (nothing trained or pushed); warn: train and report the drift."""
    # L-infinity distance: the largest change in any category's share of the examples (0..1).
    species_linf: float = 0.22
    """Largest change allowed in any species' share of the examples (L-infinity distance)."""
    label_linf: float = 0.17
    """Largest change allowed in any breed's share of the examples (L-infinity distance)."""
    # Jensen-Shannon divergence of the per-image numbers' quantiles histograms (0..1).
    height_jsd: float = 0.25
    """Largest Jensen-Shannon divergence allowed between the spans' image heights."""
    width_jsd: float = 0.26
    """Largest Jensen-Shannon divergence allowed between the spans' image widths."""
    brightness_jsd: float = 0.18
    """Largest Jensen-Shannon divergence allowed between the spans' mean image brightness."""
    # The span's train examples as a share of the baseline span's: fewer or more is drift.
    min_examples_ratio: float = 0.6
    """Fewest train examples, as a share of the baseline span's, that is not drift."""
    max_examples_ratio: float = 1.67
    """Most train examples, as a share of the baseline span's, that is not drift."""


@dataclasses.dataclass
class BeamConfig:
    """Where StatisticsGen, Transform and the Evaluator run their Beam pipelines."""

    # direct: Beam's DirectRunner in the petseg process (or the task's pod on Kubeflow); flink, spark:
    # Beam's portable runner against a job server; dataflow: Google Cloud Dataflow.
    runner: str = "direct"
    """Where Beam stages run: direct, flink, spark or dataflow."""
    # Each extra worker process imports TF/TFX anew for every Beam pipeline (StatisticsGen, Transform,
    # Evaluator), which costs more than the work itself at the Oxford set's size. Raise it only for far
    # larger data on a many-core machine.
    direct_workers: int = 1
    """DirectRunner worker processes (1 = in the petseg process)."""
    job_endpoint: str = "127.0.0.1:8099"
    """Flink/spark: Beam's job server, host:port."""
    # A failed run points at the cluster's job list there (the job server has its own --flink-master).
    flink_master: str = "127.0.0.1:8081"
    """Flink: the cluster's REST address, host:port."""
    parallelism: int = 2
    """Flink: parallel instances of every stage."""
    # flink/spark: how the Python SDK harness runs: EXTERNAL = a worker pool at environment_config
    # (host:port; a sidecar beside each TaskManager), PROCESS = a boot command on each worker
    # (environment_config is Beam's JSON, e.g. {"command": "/opt/apache/beam/boot"}), LOOPBACK = in
    # the submitting process (tests only: it must reach and be reached by every TaskManager).
    environment: str = "EXTERNAL"
    """Flink/spark: how the Python SDK harness runs: EXTERNAL, PROCESS or LOOPBACK."""
    environment_config: str = "127.0.0.1:50000"
    """Flink/spark: the worker pool's host:port (EXTERNAL) or Beam's boot JSON (PROCESS)."""
    # A TaskManager keeps a job's SDK worker this long after the last stage that used it, so the job's
    # next stage finds it with TF/TFX imported (0: released at once). Beam honours it only when its
    # runner classes come from the cluster's own classpath (`petseg flink up` puts them there). It must
    # outlast the longest pause between two stages on one TaskManager, since a worker released in the
    # middle of a job races the next stage's new one and fails the job. The job's end does not release
    # the workers, so they stay idle (~600-800 MB each) this long after it.
    environment_cache_millis: int = 600_000
    """Flink: how long a TaskManager keeps a job's idle SDK worker, in ms."""
    # flink/spark: the image the SDK harness runs in (the Kubeflow image for sidecars). It also tells
    # TFX that the workers hold the code, so it builds no sdist of itself per component.
    sdk_image: str = "petseg-sdk-harness"
    """Flink/spark: the image the SDK harness runs in."""
    # Appended last, so they win; e.g. Dataflow's --project/--region/--temp_location.
    args: typing.List[str] = dataclasses.field(default_factory=list)
    """Extra Beam args, appended last (comma-separated with --set)."""


@dataclasses.dataclass
class ModelConfig:
    """VGG16-FCN8 shape."""

    # FCN-8's finest scores are at stride 8, so its outlines sharpen with the input size; the cost grows
    # with its square.
    image_size: int = 160
    """Square input size in pixels, a multiple of 32."""
    # ImageNet weights need 1.0.
    width_multiplier: float = 0.25
    """Scales every VGG16 channel width; 1.0 is the real VGG16."""
    head_width: int = 256
    """Width of the two FCN head convolutions (4096 in the seed recipe)."""
    # After fc6 and fc7 as in the FCN paper; the narrow quick model learns faster without it.
    dropout: float = 0.0
    """Dropout after fc6 and fc7."""
    encoder_weights: str = "none"
    """VGG16 encoder start: none, imagenet or a path to no-top weights (.h5)."""
    fine_tune_encoder: bool = False
    """Train a pretrained encoder instead of freezing it."""
    # "auto": mixed_float16 on GPUs with tensor cores, mixed_bfloat16 on CPUs where the model's step
    # measures at least 1.1x faster in bf16 (trainer/precision.py), float32 elsewhere.
    mixed_precision: str = "auto"
    """Compute dtype: auto, none (float32), mixed_float16 or mixed_bfloat16."""
    serving_max_pixels: int = 40_000_000
    """Serving refuses images larger than this (width x height)."""


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and distribution."""

    # The quick model is still improving at 30 epochs.
    epochs: int = 40
    """Training epochs."""
    batch_size: int = 16
    """Images per replica per step."""
    learning_rate: float = 1e-3
    """Adam's learning rate."""
    cpu_replicas: int = 1
    """Logical CPU devices for MirroredStrategy without a GPU."""
    steps_per_epoch: Optional[int] = None
    """Batches per epoch; null = one pass over the train split."""
    shuffle_buffer: int = 512
    """Examples in the training shuffle buffer."""
    # A split whose transformed records take up to this many bytes is held in memory after the first
    # epoch (uint8 pixels: about the same size decoded); a larger one streams from its files each epoch.
    cache_max_bytes: int = 2 * 1024**3
    """A train split up to this size is held in memory after its first epoch."""
    warm_start: bool = False
    """Start from the served model's weights when its architecture matches."""
    # Off by default: on a small CPU it is slower; on a GPU it fuses the elementwise ops between
    # convolutions and usually pays off.
    jit_compile: bool = False
    """XLA-compile the train step."""
    # Keras validates each epoch on the first this-many examples of the eval split, the same ones every
    # epoch; the Evaluator still scores the whole split. 768 is 12 of the seed recipe's batches of 64:
    # on a CPU a validation image costs about 0.6-0.65 of a training image, so validating 768 costs
    # at most 0.14 of training's 3,680 (bench key validation_epoch_share). A smaller split is validated whole.
    validation_images: int = 768
    """Eval examples Keras validates on each epoch (picks the exported epoch)."""
    # A constant rate trains the quick model as well in fewer epochs.
    lr_patience: int = 0
    """Epochs without a better val_loss before the learning rate halves; 0 = constant."""
    # N > 1 trains under MultiWorkerMirroredStrategy: a TFJob on open-source Kubeflow, worker pools on Vertex.
    workers: int = 1
    """Machines the Trainer runs on (Kubeflow): 1, or a chief and N - 1 workers."""


@dataclasses.dataclass
class PipelineConfig:
    """Everything one pipeline run needs."""

    profile: str = "quick"
    """The named profile these settings started from."""
    name: str = "petseg"
    """The pipeline's name (MLMD, Kubeflow)."""
    output: str = "runs/default"
    """Folder for everything a local run writes."""
    beam: BeamConfig = dataclasses.field(default_factory=BeamConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)

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
            _check(self.data.dataset == "oxford_iiit_pet", "data.oxford_raw_dir", "needs data.dataset=oxford_iiit_pet")
        if self.data.span is not None:
            _check(self.data.span >= 0, "data.span", "must be >= 0 or null (the latest span)")
            _check(
                "{SPAN}" in (self.data.oxford_raw_dir or ""),
                "data.span",
                "needs a data.oxford_raw_dir with {SPAN}, e.g. /data/pets/span-{SPAN}",
            )
        _check(self.data.span_window >= 1, "data.span_window", "must be >= 1")
        if self.data.span_window > 1:
            _check(
                "{SPAN}" in (self.data.oxford_raw_dir or ""),
                "data.span_window",
                "needs a data.oxford_raw_dir with {SPAN}, e.g. /data/pets/span-{SPAN}",
            )
        for key, why in _model_and_train_problems(self.model, self.train):
            raise ConfigError(f"{key}: {why}")
        _check(0 <= self.eval.min_mean_iou <= 1, "eval.min_mean_iou", "must be in [0, 1]")
        _check(0 <= self.eval.max_regression <= 1, "eval.max_regression", "must be in [0, 1]")
        _check(self.eval.report_images >= 0, "eval.report_images", "must be >= 0")
        _check(self.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(
            self.eval.baseline_version is None or self.eval.baseline_version >= 0,
            "eval.baseline_version",
            "must be a served version number or null (the newest)",
        )
        _validate_drift(self.drift)
        _validate_beam(self.beam)
        _check(
            bool(self.name) and self.name.replace("-", "").replace("_", "").isalnum(),
            "name",
            "must be letters, digits, '-' or '_'",
        )
        return self


def _validate_drift(drift: DriftConfig) -> None:
    """Raises ConfigError naming the first drift setting out of range."""
    _check(drift.action in DRIFT_ACTIONS, "drift.action", f"must be one of {DRIFT_ACTIONS}")
    for key in ("species_linf", "label_linf", "height_jsd", "width_jsd", "brightness_jsd"):
        _check(0 < getattr(drift, key) <= 1, f"drift.{key}", "must be in (0, 1]")
    _check(0 < drift.min_examples_ratio <= 1, "drift.min_examples_ratio", "must be in (0, 1]")
    _check(drift.max_examples_ratio >= 1, "drift.max_examples_ratio", "must be >= 1")


def _validate_beam(beam: BeamConfig) -> None:
    """Raises ConfigError naming the first key that does not fit beam.runner."""
    _check(beam.runner in BEAM_RUNNERS, "beam.runner", f"must be one of {BEAM_RUNNERS}")
    _check(beam.direct_workers >= 1, "beam.direct_workers", "must be >= 1")
    for arg in beam.args:
        _check(
            not arg.startswith(("--runner", "--job_endpoint", "--environment_type")),
            "beam.args",
            f"{arg!r}: set beam.runner / beam.job_endpoint / beam.environment instead",
        )
    if beam.runner != "direct":
        _check(beam.direct_workers == 1, "beam.direct_workers", "only applies to beam.runner=direct")
    if beam.runner in ("flink", "spark"):
        _check(
            _host_port(beam.job_endpoint),
            "beam.job_endpoint",
            f"must be host:port of Beam's {beam.runner} job server, got {beam.job_endpoint!r}",
        )
        _check(beam.environment in BEAM_ENVIRONMENTS, "beam.environment", f"must be one of {BEAM_ENVIRONMENTS}")
        if beam.environment == "EXTERNAL":
            _check(
                _host_port(beam.environment_config),
                "beam.environment_config",
                f"EXTERNAL needs the SDK worker pool as host:port, got {beam.environment_config!r}",
            )
        elif beam.environment == "PROCESS":
            _check(
                beam.environment_config.lstrip().startswith("{") and '"command"' in beam.environment_config,
                "beam.environment_config",
                'PROCESS needs JSON like {"command": "/opt/apache/beam/boot"}',
            )
        _check(beam.environment_cache_millis >= 0, "beam.environment_cache_millis", "must be >= 0")
        _check(bool(beam.sdk_image), "beam.sdk_image", "must name the SDK harness image")
    if beam.runner == "flink":
        _check(beam.parallelism >= 1, "beam.parallelism", "must be >= 1")
        _check(
            _host_port(beam.flink_master),
            "beam.flink_master",
            f"must be host:port of Flink's REST API, got {beam.flink_master!r}",
        )
    if beam.runner == "dataflow":
        for flag in ("--project", "--region", "--temp_location"):
            _check(
                any(a.startswith(flag + "=") for a in beam.args),
                "beam.args",
                f"beam.runner=dataflow needs {flag}=... in beam.args",
            )


def _host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(host) and bool(sep) and port.isdigit()


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _model_and_train_problems(model: ModelConfig, train: TrainConfig) -> List[Tuple[str, str]]:
    """(dotted key, why) for each invalid value, in field order; empty when all are valid."""
    weights = model.encoder_weights
    checks = [
        (
            model.image_size >= 32 and model.image_size % 32 == 0,
            "model.image_size",
            "must be a multiple of 32 (five 2x poolings), at least 32",
        ),
        (0 < model.width_multiplier <= 1, "model.width_multiplier", "must be in (0, 1]"),
        (model.head_width >= 1, "model.head_width", "must be >= 1"),
        (0 <= model.dropout < 1, "model.dropout", "must be in [0, 1)"),
        (
            weights in ENCODER_WEIGHTS or weights.endswith(".h5"),
            "model.encoder_weights",
            f"must be one of {ENCODER_WEIGHTS} or a path to an .h5 file",
        ),
        (
            weights == "none" or model.width_multiplier == 1,
            "model.encoder_weights",
            "pretrained VGG16 weights need model.width_multiplier=1",
        ),
        (model.mixed_precision in MIXED_PRECISION, "model.mixed_precision", f"must be one of {MIXED_PRECISION}"),
        (model.serving_max_pixels >= 1, "model.serving_max_pixels", "must be >= 1"),
        (train.epochs >= 0, "train.epochs", "must be >= 0"),
        (train.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (train.learning_rate > 0, "train.learning_rate", "must be > 0"),
        (train.cpu_replicas >= 1, "train.cpu_replicas", "must be >= 1"),
        (train.steps_per_epoch is None or train.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1 or null"),
        (train.lr_patience >= 0, "train.lr_patience", "must be >= 0"),
        (train.validation_images >= 1, "train.validation_images", "must be >= 1"),
        (train.shuffle_buffer >= 1, "train.shuffle_buffer", "must be >= 1"),
        (train.cache_max_bytes >= 0, "train.cache_max_bytes", "must be >= 0 (0 always streams)"),
        (train.workers >= 1, "train.workers", "must be >= 1"),
    ]
    return [(key, why) for ok, key, why in checks if not ok]

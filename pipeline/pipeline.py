"""`create_pipeline(config)`: the one TFX pipeline definition, shared by every runner."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import List, Optional

# Not `tfx.v1`: it imports the Google Cloud extensions too, seconds of every `petseg` start.
from tfx.components import ExampleValidator, StatisticsGen, Trainer
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import pusher_pb2

from components import tfds_prepare
from components.blessed_model import NEWEST, LatestBlessedModel
from components.drift import DriftGate, DriftValidator
from components.evaluator import Evaluator
from components.example_gen import TfdsExampleGen
from components.pusher import AtomicPusher
from components.transform import Transform
from components.validation_gate import ValidationGate
from config import names
from config.settings import PipelineConfig
from engine.beam_args import beam_pipeline_args
from metrics import eval_config as evaluation

# Installed next to the code, so local runs, Beam workers and the Kubeflow image all find it.
SCHEMA_FILE = str(pathlib.Path(__file__).resolve().parent.parent / "transform" / "schema.pbtxt")

# User code by dotted path: the installed package serves every runner (no module_file wheels).
PREPROCESSING_FN = "transform.preprocessing.preprocessing_fn"
RUN_FN = "trainer.run.run_fn"


def local_beam_args(config: PipelineConfig) -> List[str]:
    """Beam args for `config.beam` (none for one in-process DirectRunner worker; see beam_pipeline_args)."""
    return beam_pipeline_args(config.beam)


def create_pipeline(
    config: PipelineConfig,
    *,
    pipeline_root: Optional[str] = None,
    serving_dir: Optional[str] = None,
    schema_file: str = SCHEMA_FILE,
    data_dir: Optional[str] = None,
    metadata_connection_config=None,
    beam_pipeline_args: Optional[List[str]] = None,
) -> tfx_pipeline.Pipeline:
    """Builds the pipeline; paths default to the config's output folder (runners may relocate them)."""
    data = config.data
    example_gen = TfdsExampleGen(
        source=tfds_prepare.source_for(data.dataset, data.oxford_raw_dir),
        data_dir=data_dir or config.tfds_data_dir,
        raw_dir=data.oxford_raw_dir or "",
        version=data.tfds_version,
        synthetic_train_images=data.synthetic_train_images,
        synthetic_test_images=data.synthetic_test_images,
        synthetic_seed=data.synthetic_seed,
        synthetic_like_oxford=data.synthetic_like_oxford,
        strict=data.strict,
        span=data.span,
        span_window=data.span_window,
    ).with_id(names.EXAMPLE_GEN_ID)
    schema_gen = ImportSchemaGen(schema_file=schema_file).with_id(names.SCHEMA_GEN_ID)
    # With the schema, image bytes get image statistics instead of being counted as categories.
    statistics_gen = StatisticsGen(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"]
    ).with_id(names.STATISTICS_GEN_ID)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
    ).with_id(names.EXAMPLE_VALIDATOR_ID)
    validation_gate = ValidationGate(anomalies=example_validator.outputs["anomalies"]).with_id(names.VALIDATION_GATE_ID)

    serving = serving_dir or config.serving_dir
    # The model to beat and to warm-start from is the one being served: the newest version the
    # Pusher published. An ordinary task, so open-source KFP, Vertex and LocalDagRunner all run it.
    latest_blessed_model = LatestBlessedModel(
        serving_dir=serving,
        version=NEWEST if config.eval.baseline_version is None else config.eval.baseline_version,
    ).with_id(names.LATEST_BLESSED_MODEL_ID)
    # The newest span against the span the served model was trained on (published with it); before the
    # first push there is nothing to compare with, and the gate lets the run go on.
    drift_validator = DriftValidator(
        statistics=statistics_gen.outputs["statistics"],
        baseline_statistics=latest_blessed_model.outputs["statistics"],
        drift=config.drift,
    ).with_id(names.DRIFT_VALIDATOR_ID)
    drift_gate = DriftGate(
        anomalies=drift_validator.outputs["anomalies"],
        action=config.drift.action,
    ).with_id(names.DRIFT_GATE_ID)

    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"image_size": config.model.image_size},
        # StatisticsGen already profiles the raw data. Pre/post-transform statistics over every
        # pixel of every image cost more than the transform itself, and nothing reads them.
        disable_statistics=True,
    ).with_id(names.TRANSFORM_ID)
    # Anomalies, and drift the user has not accepted, must stop the run before any compute is spent.
    transform.add_upstream_node(validation_gate)
    transform.add_upstream_node(drift_gate)

    trainer = Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=latest_blessed_model.outputs["model"] if config.train.warm_start else None,
        custom_config={"model": dataclasses.asdict(config.model), "train": dataclasses.asdict(config.train)},
    ).with_id(names.TRAINER_ID)

    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=latest_blessed_model.outputs["model"],
        eval_config=evaluation.build_eval_config(config.eval),
    ).with_id(names.EVALUATOR_ID)

    # A push killed mid-copy must never leave a partial version where TF Serving looks. The version
    # carries the newest span's statistics: the next run's baseline for drift.
    pusher = AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        statistics=statistics_gen.outputs["statistics"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving)
        ),
    ).with_id(names.PUSHER_ID)

    return tfx_pipeline.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root or config.pipeline_root,
        components=[
            example_gen,
            statistics_gen,
            schema_gen,
            example_validator,
            validation_gate,
            latest_blessed_model,
            drift_validator,
            drift_gate,
            transform,
            trainer,
            evaluator,
            pusher,
        ],
        enable_cache=True,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args if beam_pipeline_args is not None else local_beam_args(config),
    )

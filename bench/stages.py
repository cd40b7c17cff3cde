"""Transform, Evaluator and serving figures, each against its plain-TensorFlow limit in this process."""

from __future__ import annotations

import os
import pathlib
import time
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from config import names
from bench import measure
from config.settings import PipelineConfig
from report.example_records import tfrecords
from report.artifacts import RunArtifacts
from transform import features, preprocessing

# Serving latency is sampled over this many single-image requests per variant.
SERVING_CALLS = 100


def record_files(examples_uri: str, splits=("train", "eval")) -> List[str]:
    return sorted(str(p) for s in splits for p in pathlib.Path(examples_uri, f"Split-{s}").iterdir())


def _records(files: List[str]) -> tf.data.Dataset:
    return tfrecords(files, parallel_reads=tf.data.AUTOTUNE)


def decoded(files: List[str], image_size: int, with_mask: bool = True) -> tf.data.Dataset:
    """Plain tf.data decode + resize of raw examples, one example per parallel map call: the limit."""
    spec = {
        features.RAW_IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        features.RAW_MASK_KEY: tf.io.FixedLenFeature([], tf.string),
    }

    def decode(record):
        raw = tf.io.parse_single_example(record, spec)
        image = preprocessing.decode_image(raw[features.RAW_IMAGE_KEY], image_size)
        if not with_mask:
            return image
        return image, preprocessing.decode_mask(raw[features.RAW_MASK_KEY], image_size)

    return _records(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)


def _serialize_property(value):
    """Exec properties as the TFX launcher hands them to executors: protos and containers as JSON."""
    from google.protobuf import message
    from tfx.utils import json_utils, proto_utils

    if isinstance(value, message.Message):
        return proto_utils.proto_to_json(value)
    if isinstance(value, (dict, list)):
        return json_utils.dumps(value)
    return value


def run_executor(component, inputs: Dict[str, list], out_dir: str, beam_args: List[str]) -> float:
    """Runs `component`'s real executor in this process on `inputs`; returns wall seconds."""
    return execute(component, inputs, out_dir, beam_args)[0]


def execute(component, inputs: Dict[str, list], out_dir: str, beam_args: List[str]) -> Tuple[float, Dict[str, list]]:
    """Runs `component`'s real executor in this process on `inputs`; returns wall seconds and its output artifacts."""
    from tfx.dsl.components.base import base_beam_executor

    outputs = {}
    for key, channel in component.outputs.items():
        artifact = channel.type()
        artifact.uri = os.path.join(out_dir, key)
        tf.io.gfile.makedirs(artifact.uri)
        outputs[key] = [artifact]
    properties = {k: _serialize_property(v) for k, v in component.exec_properties.items() if v is not None}
    properties["current_component_id"] = component.id
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=beam_args, tmp_dir=os.path.join(out_dir, "tmp"), unique_id="bench"
    )
    executor = component.executor_spec.executor_class(context)
    start = time.perf_counter()
    executor.Do(inputs, outputs, properties)
    return time.perf_counter() - start, outputs


def components(config: PipelineConfig):
    """The pipeline's own component objects, so the bench runs exactly what `petseg run` configures."""
    from pipeline.pipeline import create_pipeline, local_beam_args

    pipeline = create_pipeline(config)
    return {c.id: c for c in pipeline.components}, local_beam_args(config)


def transform_figures(config: PipelineConfig, run: RunArtifacts, work: str, copies: int = 3) -> Dict[str, object]:
    """Transform (Beam, the real executor) img/s vs tf.data decode+resize img/s on the same records.

    Run on the data and on `copies` copies of it: the difference gives the marginal rate, free of
    the fixed cost (tracing, graph export, Beam set-up) that dominates on small data.
    """
    by_id, beam_args = components(config)
    examples, schema = run.get(names.EXAMPLE_GEN_ID, "examples"), run.get(names.SCHEMA_GEN_ID, "schema")
    files = record_files(examples.uri)
    count = sum(1 for _ in _records(files))
    size = config.model.image_size
    data_seconds = measure.best_seconds(lambda: sum(1 for _ in decoded(files, size)), 2)
    once = run_executor(
        by_id[names.TRANSFORM_ID],
        {"examples": [examples], "schema": [schema]},
        os.path.join(work, "transform_x1"),
        beam_args,
    )
    many = run_executor(
        by_id[names.TRANSFORM_ID],
        {"examples": [_copies(examples, ("train", "eval"), copies, work)], "schema": [schema]},
        os.path.join(work, f"transform_x{copies}"),
        beam_args,
    )
    marginal = _marginal(once, many, (copies - 1) * count)
    # Transform maps examples one to one, so its splits hold `count` examples too.
    stored = transformed_bytes_per_example(run.get(names.TRANSFORM_ID, "transformed_examples").uri, count)
    whole_run = measure.ratio(data_seconds, once)
    return {
        "transform_ratio": whole_run,
        "transformed_bytes_per_example": round(stored),
        # Against the uint8 pixels a record has to hold: image S x S x 3 plus mask S x S.
        "transformed_bytes_ratio": measure.ratio(stored, size * size * 4),
        "transform_marginal_ratio": marginal and measure.ratio(data_seconds / count, marginal),
        # Whole runs on more images: the fixed cost weighs less with each, as it would on real data.
        "transform_ratio_by_images": {count: whole_run, copies * count: measure.ratio(copies * data_seconds, many)},
        "transform_images_per_second": {
            "beam_whole_run": round(count / once, 1),
            "beam_marginal": marginal and round(1 / marginal, 1),
            "tf_data_decode": round(count / data_seconds, 1),
        },
        "transform_seconds": {"x1": round(once, 1), f"x{copies}": round(many, 1)},
        "transform_images": count,
        "beam_args": beam_args,
    }


def transformed_bytes_per_example(examples_uri: str, examples: int) -> float:
    """Bytes on disk of a Transform output's splits per example they hold."""
    files = tf.io.gfile.glob(os.path.join(examples_uri, "Split-*", "*"))
    return sum(tf.io.gfile.stat(path).length for path in files) / examples


def _marginal(once: float, many: float, extra_images: int) -> Optional[float]:
    """Seconds per extra image, or None when load noise swamped the difference (many <= once)."""
    return (many - once) / extra_images if many > once else None


def _copies(examples, splits, copies: int, work: str):
    """`examples` with each split's files repeated `copies` times (symlinks), to time marginal cost."""
    import copy

    clone = copy.deepcopy(examples)
    clone.uri = os.path.join(work, f"examples_{'_'.join(splits)}_x{copies}")
    for split in splits:
        target = pathlib.Path(clone.uri, f"Split-{split}")
        target.mkdir(parents=True, exist_ok=True)
        for i in range(copies):
            for f in pathlib.Path(examples.uri, f"Split-{split}").iterdir():
                link = target / f"{i}-{f.name}"
                if not link.exists():
                    link.symlink_to(f)
    return clone


def load_keras(model_dir: str) -> tf.keras.Model:
    import trainer.model  # noqa: F401  registers the custom layer and initializer for loading

    return tf.keras.models.load_model(model_dir, compile=False)


def evaluator_figures(config: PipelineConfig, run: RunArtifacts, work: str, copies: int = 3) -> Dict[str, object]:
    """Evaluator (TFMA, the real executor) seconds per image vs bare model inference per image.

    Evaluated twice, on the eval split and on `copies` copies of it: the difference is the marginal
    cost per image without TFMA's fixed start-up (model load, Beam graph), which is reported too.
    """
    by_id, beam_args = components(config)
    examples, model = run.get(names.EXAMPLE_GEN_ID, "examples"), run.get(names.TRAINER_ID, "model")
    files = record_files(examples.uri, ("eval",))
    count = sum(1 for _ in _records(files))
    evaluator = by_id[names.EVALUATOR_ID]
    once = run_executor(
        evaluator, {"examples": [examples], "model": [model]}, os.path.join(work, "evaluator_x1"), beam_args
    )
    many = run_executor(
        evaluator,
        {"examples": [_copies(examples, ("eval",), copies, work)], "model": [model]},
        os.path.join(work, f"evaluator_x{copies}"),
        beam_args,
    )

    keras_model = load_keras(os.path.join(model.uri, "Format-Serving"))
    batch = config.eval.batch_size
    images = [b for b in decoded(files, config.model.image_size, with_mask=False).batch(batch)]
    infer = tf.function(lambda x: keras_model(x, training=False))
    for b in images[:2]:
        infer(b)  # trace both the full and the last partial batch shape
    infer(images[-1])
    bare = measure.best_seconds(lambda: [infer(b).numpy() for b in images], 3) / count
    marginal = _marginal(once, many, (copies - 1) * count)
    whole_run = measure.ratio(once / count, bare)
    return {
        "evaluator_ratio": whole_run,
        "evaluator_marginal_ratio": marginal and measure.ratio(marginal, bare),
        "evaluator_ratio_by_images": {count: whole_run, copies * count: measure.ratio(many / (copies * count), bare)},
        "evaluator_ms_per_image": {
            "tfma_whole_run": round(1e3 * once / count, 2),
            "tfma_marginal": marginal and round(1e3 * marginal, 2),
            "bare_model": round(1e3 * bare, 3),
        },
        "evaluator_seconds": {"x1": round(once, 1), f"x{copies}": round(many, 1)},
        "evaluator_images": count,
        "bare_inference_batch": batch,
        "inference_gflop_per_image": round(measure.inference_flops_per_image(keras_model) / 1e9, 3),
    }


def serving_figures(config: PipelineConfig, run: RunArtifacts) -> Dict[str, object]:
    """`serving_default` latency for one-image requests vs decode + model call on the same bytes."""
    from trainer.signatures import SERVING_SIGNATURE

    examples, model = run.get(names.EXAMPLE_GEN_ID, "examples"), run.get(names.TRAINER_ID, "model")
    model_dir = os.path.join(model.uri, "Format-Serving")
    size = config.model.image_size
    payloads = []
    for record in _records(record_files(examples.uri, ("eval",))).take(20):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        payloads.append(tf.constant([feature[features.RAW_IMAGE_KEY].bytes_list.value[0]]))
    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    keras_model = load_keras(model_dir)

    @tf.function(input_signature=[tf.TensorSpec([1], tf.string)])
    def bare(image_bytes):
        return keras_model(preprocessing.decode_image(image_bytes[0], size)[tf.newaxis], training=False)

    def cycle(fn):
        state = {"i": 0}

        def call():
            state["i"] += 1
            return fn(payloads[state["i"] % len(payloads)])

        return call

    signature = cycle(lambda p: serve(image_bytes=p)["mask"].numpy())
    plain = cycle(lambda p: bare(p).numpy())
    for _ in range(10):  # warm up both
        signature(), plain()
    # Interleaved halves, so a burst of load elsewhere hits both variants alike.
    first, second = measure.latencies_ms(signature, SERVING_CALLS // 2), measure.latencies_ms(plain, SERVING_CALLS // 2)
    third, fourth = measure.latencies_ms(plain, SERVING_CALLS // 2), measure.latencies_ms(signature, SERVING_CALLS // 2)
    sig = {k: min(first[k], fourth[k]) for k in first}
    base = {k: min(second[k], third[k]) for k in second}
    return {
        "serving_overhead_ratio": measure.ratio(sig["p50_ms"], base["p50_ms"]),
        "serving_latency_ms": {
            "serving_default": measure.round_all(sig, 3),
            "decode_plus_model": measure.round_all(base, 3),
        },
        "serving_payload_format": "JPEG" if tf.io.is_jpeg(payloads[0][0]).numpy() else "PNG/other",
    }

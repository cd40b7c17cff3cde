"""Trainer figures: MFU, real input vs in-memory batches, batch-size sweep, and a per-replica-count worker."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from bench import measure
from config.settings import PipelineConfig
from config.profiles import load_config
from trainer import data, model as model_lib, precision

# Every training figure is the best of this many timed fits (after a warm-up that traces the step).
REPEATS = 3


def data_accessor(examples_uri: str):
    """The Trainer's DataAccessor for an Examples artifact folder (what TFX hands run_fn)."""
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import examples_utils, tfxio_utils
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts

    examples = standard_artifacts.Examples()
    examples.uri = examples_uri
    examples.split_names = '["train", "eval"]'
    examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
    return DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], ["bench"]),
        record_batch_factory=None,
        data_view_decode_fn=None,
    )


def build(config: PipelineConfig, policy: Optional[str] = None) -> tf.keras.Model:
    """The Trainer's model and compile recipe for `config`, in Keras `policy` (default: the Trainer's choice here).

    Pretrained encoder weights are not loaded (their values do not change a step's cost, and loading
    them may need a download); the encoder is frozen as the Trainer freezes it over those weights.
    Call it inside a strategy scope if any.
    """
    if policy is None:
        policy = precision.training_policy(
            config.model.mixed_precision, config.model, config.train, tf.distribute.get_strategy()
        )
    return model_lib.compile_model(model_lib.build_model(config.model, policy, load_weights=False), config.train)


def images_per_second(model: tf.keras.Model, make_dataset, batch: int, steps: int, repeats: int = REPEATS) -> float:
    """Training img/s of `model.fit` over `steps` batches of a fresh `make_dataset()` each repeat."""

    def fit():
        model.fit(make_dataset(), epochs=1, steps_per_epoch=steps, verbose=0)

    return batch * steps / measure.best_seconds(fit, repeats)


def in_memory(batches: Sequence[tuple]) -> tf.data.Dataset:
    """Already-decoded batches as a repeating dataset: the input pipeline's upper limit."""
    images = tf.stack([b[0] for b in batches])
    masks = tf.stack([b[1] for b in batches])
    return tf.data.Dataset.from_tensor_slices((images, masks)).repeat().prefetch(2)


def synthetic_batches(image_size: int, batch: int, count: int, seed: int = 0) -> List[tuple]:
    """Batches shaped and typed as the Trainer's input_fn yields them: uint8 pixels and class ids."""
    rng = np.random.default_rng(seed)
    return [
        (
            tf.constant(rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8)),
            tf.constant(rng.integers(0, 3, (batch, image_size, image_size), np.uint8)),
        )
        for _ in range(count)
    ]


def trainer_figures(
    config: PipelineConfig,
    transformed_uri: str,
    transform_graph_uri: str,
    train_examples: int,
    batch_sizes: Sequence[int],
    peak_flops: Dict[str, float],
    steps: int,
) -> Dict[str, object]:
    """MFU, input-pipeline ratios, float32 vs bfloat16 and the batch sweep, in this process against `peak_flops`."""
    import tensorflow_transform as tft

    batch = config.train.batch_size
    tf_transform_output = tft.TFTransformOutput(transform_graph_uri)
    accessor = data_accessor(transformed_uri)
    files = [f"{transformed_uri}/Split-train/*"]

    def real_input(cache: bool = True):
        return data.input_fn(
            files,
            accessor,
            tf_transform_output,
            batch,
            config.model.image_size,
            training=True,
            shuffle_buffer=config.train.shuffle_buffer,
            repeat=True,
            cache=cache,
        )

    model = build(config)
    flops = measure.training_flops_per_image(model)
    policy = compute_dtype(model)
    peak = peak_flops["bfloat16" if policy == "bfloat16" else "float16" if policy == "float16" else "float32"]

    # The same batches the real pipeline yields, decoded once and held in memory.
    epoch_steps = max(1, train_examples // batch)
    held = measure.stack_batches(real_input(), epoch_steps)
    model.fit(in_memory(held), epochs=1, steps_per_epoch=2, verbose=0)  # trace + warm up
    # Cached: later epochs of a split within train.cache_max_bytes, served from input_fn's memory cache.
    # Streaming: a split beyond it, read from its files every epoch (the first epoch of a cached one too).
    cached_dataset = real_input()
    model.fit(cached_dataset, epochs=1, steps_per_epoch=epoch_steps, verbose=0)  # fills the cache
    streaming_dataset = real_input(cache=False)
    # Interleaved single repeats, so drifting load elsewhere hits the limit and the real input alike.
    memory_ips = streaming_ips = cached_ips = 0.0
    for _ in range(REPEATS):
        memory_ips = max(memory_ips, images_per_second(model, lambda: in_memory(held), batch, epoch_steps, 1))
        streaming_ips = max(streaming_ips, images_per_second(model, lambda: streaming_dataset, batch, epoch_steps, 1))
        cached_ips = max(cached_ips, images_per_second(model, lambda: cached_dataset, batch, epoch_steps, 1))

    sweep = {}
    for size in batch_sizes:
        batches = synthetic_batches(config.model.image_size, size, 4)
        model.fit(in_memory(batches), epochs=1, steps_per_epoch=2, verbose=0)
        # The same number of images at every size, so each point costs about the same time.
        sweep[str(size)] = round(
            images_per_second(
                model, lambda batches=batches: in_memory(batches), size, max(2, steps * batch // size), repeats=2
            ),
            1,
        )
    precisions = precision_figures(config, held, batch, max(2, steps))
    result = {
        "trainer_mfu": measure.ratio(memory_ips * flops, peak),
        "input_pipeline_ratio": measure.ratio(cached_ips, memory_ips),
        "input_pipeline_ratio_streaming": measure.ratio(streaming_ips, memory_ips),
        "train_images_per_second": {
            "in_memory": round(memory_ips, 1),
            "real_input_cached": round(cached_ips, 1),
            "real_input_streaming": round(streaming_ips, 1),
        },
        **precisions,
        "train_ms_per_step": round(1e3 * batch / memory_ips, 1),
        "train_gflop_per_image": round(flops / 1e9, 3),
        "flop_count": "conv/deconv MACs x2 (FLOP) x3 (fwd + bwd input + bwd weights) for trainable layers, "
        "x1 for frozen ones; elementwise ops excluded",
        "train_compute_dtype": policy,
        "train_batch_size": batch,
        "train_jit_compile": bool(getattr(config.train, "jit_compile", False)),
        "train_images_per_second_by_batch": sweep,
    }
    del model
    tf.keras.backend.clear_session()
    return result


def compute_dtype(model: tf.keras.Model) -> str:
    """The dtype the convolutions compute in (the input scaling layer is always float32)."""
    return model.get_layer("block1_conv1").dtype_policy.compute_dtype


def precision_figures(config: PipelineConfig, held: Sequence[tuple], batch: int, steps: int) -> Dict[str, object]:
    """Training img/s in float32 and in mixed bfloat16 on the same in-memory batches, and what `auto` picks."""
    speeds = {}
    for name, policy in (("float32", "float32"), ("bfloat16", "mixed_bfloat16")):
        model = build(config, policy)
        model.fit(in_memory(held), epochs=1, steps_per_epoch=2, verbose=0)
        speeds[name] = round(images_per_second(model, lambda: in_memory(held), batch, steps, repeats=2), 1)
        del model
        tf.keras.backend.clear_session()
    return {
        "train_images_per_second_by_precision": speeds,
        "bf16_speedup": measure.ratio(speeds["bfloat16"], speeds["float32"]),
        "mixed_precision_auto_picks": precision.decide_auto(config.model, config.train),
    }


def step_figures(
    model: tf.keras.Model, batches: Sequence[tuple], batch: int, steps: int, matmul_size: int = 2048
) -> Dict[str, float]:
    """Train step time, img/s and MFU of `model` on in-memory batches (one warm-up step traces it).

    The MFU's limit is the matmul peak in the model's compute dtype measured just before and just
    after the timed steps, the better of the two: load on a shared machine moves both alike.
    """
    dtype = tf.as_dtype(compute_dtype(model))
    model.fit(in_memory(batches), epochs=1, steps_per_epoch=1, verbose=0)
    before = measure.matmul_flops_per_second(dtype, size=matmul_size)
    ips = images_per_second(model, lambda: in_memory(batches), batch, steps, repeats=1)
    peak = max(before, measure.matmul_flops_per_second(dtype, size=matmul_size))
    flops = measure.training_flops_per_image(model)
    figures = {
        "ms_per_step": round(1e3 * batch / ips, 1),
        "images_per_second": round(ips, 3),
        "train_gflop_per_image": round(flops / 1e9, 2),
        "mfu": measure.ratio(ips * flops, peak),
        "matmul_gflops": round(peak / 1e9, 1),
        "compute_dtype": dtype.name,
        "batch": batch,
        "timed_steps": steps,
    }
    print(f"[bench] train step of {model.count_params():,} parameters: {figures}", file=sys.stderr, flush=True)
    return figures


def forward_seconds_per_image(model: tf.keras.Model, batches: Sequence[tuple], batch: int, steps: int) -> float:
    """Seconds per image of Keras validation (`evaluate`: forward, loss and metrics) on in-memory batches."""
    model.evaluate(in_memory(batches), steps=1, verbose=0)  # trace
    return measure.best_seconds(lambda: model.evaluate(in_memory(batches), steps=steps, verbose=0), 2) / (batch * steps)


def full_model_figures(
    config: PipelineConfig,
    validation: PipelineConfig,
    batch: int,
    steps: int,
    real_train_images: int,
    real_eval_images: int,
    matmul_size: int = 2048,
) -> Dict[str, object]:
    """The `config` model's train step in float32 and mixed bfloat16 with MFU, and `validation`'s validation share.

    `validation_epoch_share`: seconds of one epoch's Keras validation on `train.validation_images`
    images (at most the eval split) over seconds of one epoch's training on
    `real_train_images`, from per-image times at batch `batch`.
    """
    batches = synthetic_batches(config.model.image_size, batch, 2)
    by_precision = {}
    for name, policy in (("float32", "float32"), ("bfloat16", "mixed_bfloat16")):
        model = build(config, policy)
        by_precision[name] = step_figures(model, batches, batch, steps, matmul_size)
        parameters = model.count_params()
        del model
        tf.keras.backend.clear_session()

    policy = precision.training_policy(
        validation.model.mixed_precision, validation.model, validation.train, tf.distribute.get_strategy()
    )
    model = build(validation, policy)
    val_batches = synthetic_batches(validation.model.image_size, batch, 2)
    train = step_figures(model, val_batches, batch, steps, matmul_size)
    forward = forward_seconds_per_image(model, val_batches, batch, steps)
    del model
    tf.keras.backend.clear_session()
    validation_images = min(validation.train.validation_images, real_eval_images)
    epoch_train = real_train_images / train["images_per_second"]
    epoch_validation = validation_images * forward
    return {
        "full_model_train_step": by_precision,
        "full_model_bf16_speedup": measure.ratio(
            by_precision["bfloat16"]["images_per_second"], by_precision["float32"]["images_per_second"]
        ),
        "full_model_parameters": parameters,
        "matmul_size": matmul_size,
        "cpu_bf16_instructions": precision.cpu_supports_bf16(),
        "validation_epoch_share": round(epoch_validation / epoch_train, 3),
        "validation": {
            "profile": validation.profile,
            "compute_dtype": policy,
            "encoder_frozen": validation.model.encoder_weights != "none" and not validation.model.fine_tune_encoder,
            "train_step": train,
            "forward_ms_per_image": round(1e3 * forward, 1),
            "validation_images": validation_images,
            "epoch_train_images": real_train_images,
            "profile_batch": validation.train.batch_size,
            "epoch_train_seconds": round(epoch_train, 1),
            "epoch_validation_seconds": round(epoch_validation, 1),
            # The most images one epoch can validate on within the 0.15 goal.
            "validation_images_within_goal": int(0.15 * epoch_train / forward),
        },
    }


def replica_images_per_second(config: PipelineConfig, replicas: int, steps: int) -> Dict[str, float]:
    """Training img/s with `replicas` logical CPU devices under MirroredStrategy (fresh process only)."""
    import dataclasses

    from trainer.strategy import choose_strategy

    train = dataclasses.replace(config.train, cpu_replicas=replicas)
    strategy = choose_strategy(train)  # must come before any other TensorFlow work
    global_batch = train.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = build(dataclasses.replace(config, train=train))
    batches = synthetic_batches(config.model.image_size, global_batch, 4)
    model.fit(in_memory(batches), epochs=1, steps_per_epoch=2, verbose=0)
    ips = images_per_second(model, lambda: in_memory(batches), global_batch, steps)
    return {"replicas": strategy.num_replicas_in_sync, "global_batch": global_batch, "images_per_second": round(ips, 1)}


def _main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="One replica-count measurement; prints JSON on the last line.")
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    config = load_config(args.profile, overrides=args.set)
    print(json.dumps(replica_images_per_second(config, args.replicas, args.steps)), flush=True)


if __name__ == "__main__":
    _main()

"""The trainer's hyper-parameters: the model's shape and how it is optimised.

The pipeline configuration composes these (`PipelineConfig.model` and `.train`) and hands them to the
Trainer as plain dicts, which `trainer.run` turns back into these classes; so the trainer reads its
settings without importing the orchestration package.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

ENCODER_WEIGHTS = ("none", "imagenet")  # or a path to an .h5 file
MIXED_PRECISION = ("none", "auto", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class ModelConfig:
    """VGG16-FCN8 shape."""

    # FCN-8's finest scores are at stride 8, so its outlines sharpen with the input size; the cost grows
    # with its square (bench/README.md has the measured trade-off).
    image_size: int = 160
    # Scales every VGG16 channel width; 1.0 is the real VGG16 (needed for ImageNet weights).
    width_multiplier: float = 0.25
    # Width of the two FCN head convolutions (the seed's 7x7 and 1x1 convs, 4096 there).
    head_width: int = 256
    # After fc6 and fc7 as in the FCN paper; the narrow quick model learns faster without it.
    dropout: float = 0.0
    # "none", "imagenet" or a path to VGG16 no-top weights (.h5).
    encoder_weights: str = "none"
    # Train the encoder even when it starts from pretrained weights.
    fine_tune_encoder: bool = False
    mixed_precision: str = "none"
    # Serving refuses larger images (width x height) before decoding them fully.
    serving_max_pixels: int = 40_000_000


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and distribution."""

    # The quick model is still improving at 30 epochs; bench/README.md has the curve.
    epochs: int = 40
    batch_size: int = 16  # per replica; the global batch is this times the replica count
    learning_rate: float = 1e-3
    # Split the CPU into this many logical devices for MirroredStrategy when no GPU is present.
    cpu_replicas: int = 1
    # None: one full pass over the train split per epoch.
    steps_per_epoch: Optional[int] = None
    shuffle_buffer: int = 512
    # A split whose transformed records take up to this many bytes is held in memory after the first
    # epoch (uint8 pixels: about the same size decoded); a larger one streams from its files each epoch.
    cache_max_bytes: int = 2 * 1024 ** 3
    # Start from the latest blessed model's weights when there is one.
    warm_start: bool = False
    # XLA-compile the train step. Off by default: on a small CPU it is slower (bench/README.md); on a
    # GPU it fuses the elementwise ops between convolutions and usually pays off.
    jit_compile: bool = False
    # Epochs without a better val_loss before the learning rate halves; 0 keeps it constant, which
    # trains the quick model as well in fewer epochs.
    lr_patience: int = 0
    # Machines the Trainer runs on: 1 is one pod (today's); N > 1 is a chief and N - 1 workers under
    # MultiWorkerMirroredStrategy (a TFJob on open-source Kubeflow).
    workers: int = 1


def problems(model: ModelConfig, train: TrainConfig) -> List[Tuple[str, str]]:
    """(dotted key, why) for each invalid value, in field order; empty when all are valid."""
    weights = model.encoder_weights
    checks = [
        (model.image_size >= 32 and model.image_size % 32 == 0, "model.image_size",
         "must be a multiple of 32 (five 2x poolings), at least 32"),
        (0 < model.width_multiplier <= 1, "model.width_multiplier", "must be in (0, 1]"),
        (model.head_width >= 1, "model.head_width", "must be >= 1"),
        (0 <= model.dropout < 1, "model.dropout", "must be in [0, 1)"),
        (weights in ENCODER_WEIGHTS or weights.endswith(".h5"), "model.encoder_weights",
         f"must be one of {ENCODER_WEIGHTS} or a path to an .h5 file"),
        (weights == "none" or model.width_multiplier == 1, "model.encoder_weights",
         "pretrained VGG16 weights need model.width_multiplier=1"),
        (model.mixed_precision in MIXED_PRECISION, "model.mixed_precision", f"must be one of {MIXED_PRECISION}"),
        (model.serving_max_pixels >= 1, "model.serving_max_pixels", "must be >= 1"),
        (train.epochs >= 0, "train.epochs", "must be >= 0"),
        (train.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (train.learning_rate > 0, "train.learning_rate", "must be > 0"),
        (train.cpu_replicas >= 1, "train.cpu_replicas", "must be >= 1"),
        (train.steps_per_epoch is None or train.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1 or null"),
        (train.lr_patience >= 0, "train.lr_patience", "must be >= 0"),
        (train.shuffle_buffer >= 1, "train.shuffle_buffer", "must be >= 1"),
        (train.cache_max_bytes >= 0, "train.cache_max_bytes", "must be >= 0 (0 always streams)"),
        (train.workers >= 1, "train.workers", "must be >= 1"),
    ]
    return [(key, why) for ok, key, why in checks if not ok]

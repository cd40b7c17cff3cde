"""TfdsExampleGen: a TFX ExampleGen that emits the TFDS `oxford_iiit_pet` tfrecords as Examples."""

from __future__ import annotations

import collections
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf

from tfx import types
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils

from components import tfds_prepare
from dataset import spans, synthetic
from transform import features

log = logging.getLogger(__name__)

EXAMPLES_KEY = "examples"
# TFDS split -> TFX split (Evaluator and Trainer expect "eval"). Both hold the newest span.
SPLITS = {"train": "train", "test": "eval"}
# With data.span_window > 1, each older span of the window adds its train split as `train_span_<N>`:
# statistics and validation see every span on its own, drift and evaluation only the newest one
# (`train`, `eval`), and Transform hands the Trainer all of the window's train splits as one.
WINDOW_SPLIT_PREFIX = "train_span_"


def window_split(span: int) -> str:
    return f"{WINDOW_SPLIT_PREFIX}{span}"


def is_window_split(split: str) -> bool:
    return split.startswith(WINDOW_SPLIT_PREFIX)


class TfdsExampleGenSpec(types.ComponentSpec):
    """Parameters of TfdsExampleGen; primitives only, so they compile to any orchestrator."""

    PARAMETERS = {
        "source": ExecutionParameter(type=str),  # one of tfds_prepare.SOURCES
        "data_dir": ExecutionParameter(type=str),
        "raw_dir": ExecutionParameter(type=str, optional=True),  # "" means none
        "version": ExecutionParameter(type=str),
        "synthetic_train_images": ExecutionParameter(type=int),
        "synthetic_test_images": ExecutionParameter(type=int),
        "synthetic_seed": ExecutionParameter(type=int),
        "synthetic_like_oxford": ExecutionParameter(type=int, optional=True),  # 0/1, as `strict`
        # int, not bool: TFX stores execution properties as MLMD int/str/double values.
        "strict": ExecutionParameter(type=int),
        # With `{SPAN}` in raw_dir: the span to read; -1 = the newest one when the executor runs. A
        # runner that can list the spans when the run starts pins the number, so a cached execution
        # means the same span; one that cannot (a compiled spec run on a schedule) leaves -1 and runs
        # this component uncached.
        "span": ExecutionParameter(type=int, optional=True),
        # Cache key only: synthetic.GENERATOR_VERSION, so new drawings are not served from cache.
        "synthetic_generator": ExecutionParameter(type=int, optional=True),
        # With `{SPAN}`: the newest this-many spans up to `span` are read (data.span_window); None = 1.
        "span_window": ExecutionParameter(type=int, optional=True),
        # Cache key only: IMAGE_STATISTICS_VERSION, so Examples written without the per-image numbers
        # are not served from cache.
        "image_statistics": ExecutionParameter(type=int, optional=True),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


class Executor(base_executor.BaseExecutor):
    """Prepares the TFDS dataset of each span read, then writes its records into the Examples artifact.

    Every record gains the per-image numbers of `features.IMAGE_STATISTICS_KEYS` on the way.
    """

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        data_dir, raw_dir = exec_properties["data_dir"], exec_properties.get("raw_dir") or None
        window: List[Tuple[int, Optional[str]]] = [(0, raw_dir)]
        if spans.has_span(raw_dir):
            requested = exec_properties.get("span")
            window = spans.span_window(
                raw_dir, None if requested is None else int(requested), int(exec_properties.get("span_window") or 1)
            )
            log.info(
                "Reading span%s %s from %s",
                "s" if len(window) > 1 else "",
                ", ".join(str(s) for s, _ in window),
                raw_dir,
            )
        prepared = {
            span: tfds_prepare.prepare(
                data_dir=spans.span_data_dir(data_dir, span) if spans.has_span(raw_dir) else data_dir,
                source=exec_properties["source"],
                raw_dir=folder,
                synthetic=(
                    int(exec_properties["synthetic_train_images"]),
                    int(exec_properties["synthetic_test_images"]),
                    int(exec_properties["synthetic_seed"]),
                ),
                synthetic_like_oxford=bool(exec_properties.get("synthetic_like_oxford") or 0),
                version=exec_properties["version"],
                strict=bool(exec_properties["strict"]),
            )
            for span, folder in window
        }
        newest, newest_dir = window[-1]
        # TFX split -> (span's prepared dataset, TFDS split): the newest span whole, older ones' train only.
        splits = {split: (prepared[newest], tfds_split) for tfds_split, split in SPLITS.items()}
        splits.update({window_split(span): (prepared[span], "train") for span, _ in window[:-1]})

        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(splits))
        counts = {}
        for split, (dataset, tfds_split) in splits.items():
            split_dir = artifact_utils.get_split_uri([examples], split)
            fileio.makedirs(split_dir)
            # New files, not links: the artifact must stay valid if the TFDS data_dir is deleted or moved.
            # Uncompressed is fine: TFXIO picks GZIP only for *.gz names, so these files are read as is.
            counts[split] = sum(
                add_image_statistics(path, os.path.join(split_dir, os.path.basename(path)))
                for path in dataset.files[tfds_split]
            )
            log.info("Split %s: %d examples from TFDS %s of %s", split, counts[split], tfds_split, dataset.data_dir)

        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        # What the file-based ExampleGen driver records: the span (0 without a {SPAN} pattern), no
        # `version`, and a fingerprint of the input files.
        examples.set_int_custom_property(example_gen_utils.SPAN_PROPERTY_NAME, newest)
        # Also the artifact's own `span` property, which StatisticsGen hands on to its statistics.
        examples.span = newest
        examples.set_string_custom_property(
            example_gen_utils.FINGERPRINT_PROPERTY_NAME,
            "\n".join(
                io_utils.generate_fingerprint(split, dataset.file_patterns[tfds_split])
                for split, (dataset, tfds_split) in splits.items()
            ),
        )
        latest = prepared[newest]
        examples.set_string_custom_property("tfds_name", latest.name)
        examples.set_string_custom_property("tfds_version", latest.version)
        examples.set_string_custom_property("tfds_data_dir", latest.data_dir)
        examples.set_string_custom_property("source", latest.source)
        examples.set_string_custom_property("raw_dir", newest_dir or "")
        examples.set_int_custom_property("num_train", counts["train"])
        examples.set_int_custom_property("num_eval", counts["eval"])
        # The window, oldest first, and the train examples each span gives the Trainer.
        examples.set_string_custom_property(
            "spans",
            json.dumps(
                [
                    {"span": span, "train": counts["train" if span == newest else window_split(span)]}
                    for span, _ in window
                ]
            ),
        )
        for key in ("skipped", "repaired"):
            total = collections.Counter()
            for dataset in prepared.values():
                total.update(getattr(dataset, key))
            examples.set_string_custom_property(key, json.dumps(dict(total), sort_keys=True))


# Bump when the per-image numbers change: a cached TfdsExampleGen then runs again.
IMAGE_STATISTICS_VERSION = 1


def _with_image_statistics(record: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(record, height, width, mean luma) of one serialized Example, its image decoded as Transform decodes it."""
    encoded = tf.io.parse_single_example(record, {features.RAW_IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
    image = tf.io.decode_image(encoded[features.RAW_IMAGE_KEY], channels=3, expand_animations=False)
    shape = tf.shape(image, out_type=tf.int64)
    return record, shape[0], shape[1], tf.reduce_mean(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))


def add_image_statistics(source: str, target: str) -> int:
    """Copies a TFRecord file of Examples, each gaining IMAGE_STATISTICS_KEYS; returns the record count.

    Decoding runs in parallel in tf.data; the records keep their order and every other feature.
    """
    records = tf.data.TFRecordDataset(source).map(
        _with_image_statistics, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    count = 0
    with tf.io.TFRecordWriter(target) as writer:
        for record, height, width, brightness in records.as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            feature = example.features.feature
            feature[features.IMAGE_HEIGHT_KEY].int64_list.value[:] = [int(height)]
            feature[features.IMAGE_WIDTH_KEY].int64_list.value[:] = [int(width)]
            feature[features.IMAGE_BRIGHTNESS_KEY].float_list.value[:] = [float(brightness)]
            # Deterministic: the same records always make the same bytes (and input fingerprint).
            writer.write(example.SerializeToString(deterministic=True))
            count += 1
    return count


class TfdsExampleGen(base_component.BaseComponent):
    """Emits `oxford_iiit_pet` (real, extracted or synthetic) as Examples with train/eval splits.

    Outputs `examples`: uncompressed tfrecords of tf.Example under Split-train/ and Split-eval/ (the
    newest span), and Split-train_span_<N>/ for each older span of a window.
    """

    SPEC_CLASS = TfdsExampleGenSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        data_dir: str,
        source: str = "synthetic",
        raw_dir: Optional[str] = None,
        version: str = "4.*.*",
        synthetic_train_images: int = 480,
        synthetic_test_images: int = 120,
        synthetic_seed: int = 0,
        strict: bool = False,
        span: Optional[int] = None,
        synthetic_like_oxford: bool = False,
        span_window: int = 1,
    ):
        """raw_dir may hold `{SPAN}` (e.g. /data/pets/span-{SPAN}); span None reads the latest span, and
        span_window the newest that-many spans up to it."""
        tfds_prepare.check_source(source, raw_dir)
        spanned = spans.has_span(raw_dir)
        if span is not None and not spanned:
            raise ValueError(f"span={span} needs a raw_dir with {spans.SPAN_TOKEN}, got {raw_dir!r}")
        if span_window != 1 and not spanned:
            raise ValueError(f"span_window={span_window} needs a raw_dir with {spans.SPAN_TOKEN}, got {raw_dir!r}")
        super().__init__(
            spec=TfdsExampleGenSpec(
                source=source,
                data_dir=data_dir,
                raw_dir=raw_dir or "",
                version=version,
                synthetic_train_images=int(synthetic_train_images),
                synthetic_test_images=int(synthetic_test_images),
                synthetic_seed=int(synthetic_seed),
                strict=int(bool(strict)),
                synthetic_like_oxford=int(bool(synthetic_like_oxford)) if source == "synthetic" else None,
                span=(-1 if span is None else int(span)) if spanned else None,
                synthetic_generator=synthetic.GENERATOR_VERSION if source == "synthetic" else None,
                span_window=int(span_window) if span_window != 1 else None,
                image_statistics=IMAGE_STATISTICS_VERSION,
                examples=types.Channel(type=standard_artifacts.Examples),
            )
        )

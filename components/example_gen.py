"""TfdsExampleGen: a TFX ExampleGen that emits the TFDS `oxford_iiit_pet` tfrecords as Examples."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

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

log = logging.getLogger(__name__)

EXAMPLES_KEY = "examples"
# TFDS split -> TFX split (Evaluator and Trainer expect "eval").
SPLITS = {"train": "train", "test": "eval"}


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
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


class Executor(base_executor.BaseExecutor):
    """Prepares the TFDS dataset, then copies its tfrecord files into the Examples artifact."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        data_dir, raw_dir, span = exec_properties["data_dir"], exec_properties.get("raw_dir") or None, 0
        if spans.has_span(raw_dir):
            requested = exec_properties.get("span")
            span, raw_dir = spans.resolve_span(raw_dir, None if requested is None else int(requested))
            data_dir = spans.span_data_dir(data_dir, span)
            log.info("Reading span %d from %s", span, raw_dir)
        prepared = tfds_prepare.prepare(
            data_dir=data_dir,
            source=exec_properties["source"],
            raw_dir=raw_dir,
            synthetic=(int(exec_properties["synthetic_train_images"]),
                       int(exec_properties["synthetic_test_images"]),
                       int(exec_properties["synthetic_seed"])),
            synthetic_like_oxford=bool(exec_properties.get("synthetic_like_oxford") or 0),
            version=exec_properties["version"],
            strict=bool(exec_properties["strict"]),
        )
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(SPLITS.values()))
        for tfds_split, split in SPLITS.items():
            split_dir = artifact_utils.get_split_uri([examples], split)
            fileio.makedirs(split_dir)
            # Copies, not links: the artifact must stay valid if the TFDS data_dir is deleted or moved.
            # Uncompressed is fine: TFXIO picks GZIP only for *.gz names, so these files are read as is.
            for path in prepared.files[tfds_split]:
                fileio.copy(path, os.path.join(split_dir, os.path.basename(path)), overwrite=True)
            log.info("Split %s: %d examples from TFDS %s", split, prepared.num_examples[tfds_split], tfds_split)

        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        # What the file-based ExampleGen driver records: the span (0 without a {SPAN} pattern), no
        # `version`, and a fingerprint of the input files.
        examples.set_int_custom_property(example_gen_utils.SPAN_PROPERTY_NAME, span)
        examples.set_string_custom_property(
            example_gen_utils.FINGERPRINT_PROPERTY_NAME,
            "\n".join(io_utils.generate_fingerprint(s, prepared.file_patterns[s]) for s in SPLITS))
        examples.set_string_custom_property("tfds_name", prepared.name)
        examples.set_string_custom_property("tfds_version", prepared.version)
        examples.set_string_custom_property("tfds_data_dir", prepared.data_dir)
        examples.set_string_custom_property("source", prepared.source)
        examples.set_string_custom_property("raw_dir", raw_dir or "")
        examples.set_int_custom_property("num_train", prepared.num_examples["train"])
        examples.set_int_custom_property("num_eval", prepared.num_examples["test"])
        examples.set_string_custom_property("skipped", json.dumps(prepared.skipped, sort_keys=True))
        examples.set_string_custom_property("repaired", json.dumps(prepared.repaired, sort_keys=True))


class TfdsExampleGen(base_component.BaseComponent):
    """Emits `oxford_iiit_pet` (real, extracted or synthetic) as Examples with train/eval splits.

    Outputs `examples`: uncompressed tfrecords of tf.Example under Split-train/ and Split-eval/.
    """

    SPEC_CLASS = TfdsExampleGenSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, data_dir: str, source: str = "synthetic", raw_dir: Optional[str] = None,
                 version: str = "4.*.*", synthetic_train_images: int = 480, synthetic_test_images: int = 120,
                 synthetic_seed: int = 0, strict: bool = False, span: Optional[int] = None,
                 synthetic_like_oxford: bool = False):
        """raw_dir may hold `{SPAN}` (e.g. /data/pets/span-{SPAN}); span None reads the latest span."""
        tfds_prepare.check_source(source, raw_dir)
        spanned = spans.has_span(raw_dir)
        if span is not None and not spanned:
            raise ValueError(f"span={span} needs a raw_dir with {spans.SPAN_TOKEN}, got {raw_dir!r}")
        super().__init__(spec=TfdsExampleGenSpec(
            source=source, data_dir=data_dir, raw_dir=raw_dir or "", version=version,
            synthetic_train_images=int(synthetic_train_images), synthetic_test_images=int(synthetic_test_images),
            synthetic_seed=int(synthetic_seed), strict=int(bool(strict)),
            synthetic_like_oxford=int(bool(synthetic_like_oxford)) if source == "synthetic" else None,
            span=(-1 if span is None else int(span)) if spanned else None,
            synthetic_generator=synthetic.GENERATOR_VERSION if source == "synthetic" else None,
            examples=types.Channel(type=standard_artifacts.Examples)))

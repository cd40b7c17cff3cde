"""Every use of a library's private code, each checked at import against the version it was written for.

TFX, TFDS and TensorFlow offer no public hook for these few needs. Anything reaching past a
library's public API lives here, so an upgrade has one file to read and one test file to run
(tests/test_internals.py, one test per function, each failing when the library's behaviour changes).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import pathlib
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Tuple

log = logging.getLogger(__name__)

# Distribution -> the version prefix the code below was read against.
WRITTEN_FOR = {"tfx": "1.16.", "tensorflow-datasets": "4.9.", "tensorflow": "2.16."}


class IncompatibleLibraryError(ImportError):
    """An installed library is not the version components/internals.py was written against."""


def check_versions(installed: Callable[[str], str] = importlib.metadata.version) -> None:
    """Raises IncompatibleLibraryError naming every library whose version differs from WRITTEN_FOR."""
    wrong = {dist: installed(dist) for dist in WRITTEN_FOR if not installed(dist).startswith(WRITTEN_FOR[dist])}
    if wrong:
        found = ", ".join(f"{dist} {version} (written for {WRITTEN_FOR[dist]}*)" for dist, version in wrong.items())
        raise IncompatibleLibraryError(
            f"components/internals.py reaches into private code of {found}. Check each of its functions "
            "against the installed version (tests/test_internals.py has one test per function), then "
            "update WRITTEN_FOR."
        )


check_versions()


# ---------------------------------------------------------------- TFX Transform: plain record sink


@contextlib.contextmanager
def transform_writes_plain_records() -> Iterator[None]:
    """Within the block, TFX's Transform executor writes its materialized examples uncompressed.

    TFX hard-codes a `.gz` TFRecord sink in `TransformProcessor._EncodeAndWrite` and builds the processor
    by its module-level name inside `Executor.Do`, with no parameter for either; so the name points at
    a subclass for the block. Transform's records hold raw uint8 pixels, which gzip shrinks by about a
    third at several ms per image, most of Transform's per-image time; readers (TFXIO, tf.data) pick
    the compression from the file name, so plain files need nothing downstream.
    """
    from tfx.components.transform import executor as transform_executor

    original = transform_executor.TransformProcessor
    transform_executor.TransformProcessor = _plain_records_processor(original)
    try:
        yield
    finally:
        transform_executor.TransformProcessor = original


@functools.lru_cache(maxsize=None)
def _plain_records_processor(base: type) -> type:
    import apache_beam as beam
    import pyarrow as pa
    from tfx.components.transform import labels

    class PlainRecordsProcessor(base):
        """TFX's TransformProcessor with its one `.gz` sink made plain; everything else is TFX's."""

        @staticmethod
        @beam.ptransform_fn
        @beam.typehints.with_input_types(Tuple[pa.RecordBatch, Dict[str, pa.Array]])
        def _EncodeAndWrite(pcoll, schema, file_format: str, output_path: str):
            if file_format != labels.FORMAT_TFRECORD:
                return pcoll | "EncodeAndWrite" >> base._EncodeAndWrite(  # pylint: disable=no-value-for-parameter
                    schema=schema, file_format=file_format, output_path=output_path
                )
            return (
                pcoll
                | "EncodeAndSerialize" >> beam.ParDo(base._RecordBatchToExamplesFn(schema))
                | "ExtractExamples" >> beam.Values()
                | "WriteToTFRecord" >> beam.io.WriteToTFRecord(output_path)
            )

    return PlainRecordsProcessor


# ---------------------------------------------------------------- TFX Evaluator: fixed model batches


@contextlib.contextmanager
def evaluator_reads_batches_of(batch_size: int) -> Iterator[None]:
    """Within the block, TFX's Evaluator executor hands TFMA examples in batches of `batch_size`.

    TFX's `tfxio.BeamSource()` takes no size, and Beam's adaptive batching then starts at one example
    and grows: every new batch shape costs the model a slower call. TFX reads the TFXIO factory by the
    module-level name `tfxio_utils` inside `Executor.Do` and offers no other hook, so the name points
    at a wrapper for the block.
    """
    from tfx.components.evaluator import executor as evaluator_executor

    original = evaluator_executor.tfxio_utils
    evaluator_executor.tfxio_utils = _BatchedTfxioUtils(original, batch_size)
    try:
        yield
    finally:
        evaluator_executor.tfxio_utils = original


class _BatchedTfxioUtils:
    """`tfx.components.util.tfxio_utils` whose TFXIOs batch their Beam source at `batch_size`."""

    def __init__(self, module: Any, batch_size: int):
        self._module, self._batch_size = module, batch_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def get_tfxio_factory_from_artifact(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        factory = self._module.get_tfxio_factory_from_artifact(*args, **kwargs)

        def batched(file_pattern: Any) -> Any:
            tfxio = factory(file_pattern)
            tfxio.BeamSource = functools.partial(tfxio.BeamSource, batch_size=self._batch_size)
            return tfxio

        return batched


# ---------------------------------------------------------------- TFX DistributionValidator: its config and verdicts


@contextlib.contextmanager
def distribution_validator_fixed(exec_properties: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Within the block, TFX's DistributionValidator executor judges every comparator; yields its exec properties
    with the config as the proto message it expects.

    Two defects of TFX 1.16's executor. It keeps only the anomaly reasons listed in the module-level
    `_COMPARISON_ANOMALY_TYPES`, read by `_get_comparison_only_anomalies` at call time, and that set leaves out
    COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH: a `normalized_abs_difference` over its threshold blesses.
    And compiled for Kubeflow V2, the proto-typed `distribution_validator_config` parameter reaches the executor
    as the JSON string the compiler wrote (the V2 entrypoint does not parse `use_proto` parameters back), where
    `_make_schema_from_config` reads fields of the message.
    """
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.components.distribution_validator import executor as validator_executor
    from tfx.proto import distribution_validator_pb2
    from tfx.types import standard_component_specs
    from tfx.utils import proto_utils

    key = standard_component_specs.DISTRIBUTION_VALIDATOR_CONFIG_KEY
    config = exec_properties.get(key)
    if isinstance(config, str):
        config = proto_utils.json_to_proto(config, distribution_validator_pb2.DistributionValidatorConfig())
    original = validator_executor._COMPARISON_ANOMALY_TYPES  # pylint: disable=protected-access
    validator_executor._COMPARISON_ANOMALY_TYPES = original | {  # pylint: disable=protected-access
        anomalies_pb2.AnomalyInfo.Type.COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH
    }
    try:
        yield {**exec_properties, key: config} if key in exec_properties else dict(exec_properties)
    finally:
        validator_executor._COMPARISON_ANOMALY_TYPES = original  # pylint: disable=protected-access


# ---------------------------------------------------------------- TFX LocalDagRunner: progress from its log

# The log records LocalDagRunner (tfx/orchestration/local/local_dag_runner.py) and its launcher
# (orchestration/portable/launcher.py) write as a node starts, reuses a cached execution and ends:
# TFX has no progress callback, so these messages, by their format string, are the only signal.
_LOCAL_RUNNER_LINES = {
    "Component %s is running.": "running",
    "A cached execution %d is used.": "cached",
    "Component %s is finished.": "finished",
}


def local_runner_progress(record: logging.LogRecord) -> Tuple[str, Any]:
    """("running" | "finished", node id), ("cached", execution id), or ("", None) for any other record."""
    event = _LOCAL_RUNNER_LINES.get(record.msg) if isinstance(record.msg, str) else None
    return (event, record.args[0]) if event and record.args else ("", None)


# ---------------------------------------------------------------- TFX Kubeflow V2 task entrypoint


def parse_kubeflow_v2_executor_flags(argv: List[str]) -> Tuple[Any, List[str]]:
    """(TFX's parsed flags, Beam args) for `kubeflow_v2_run_executor.main`, split exactly as TFX splits them.

    `main` takes the result of TFX's private `_parse_flags`; writing our own parser would have to
    repeat its flag list and its Beam-argument split.
    """
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

    return kubeflow_v2_run_executor._parse_flags(argv)  # pylint: disable=protected-access


# ---------------------------------------------------------------- TFDS: the real builder, offline


def tfds_reencoded_names() -> FrozenSet[str]:
    """Samples the `oxford_iiit_pet` builder re-encodes with tf.io.encode_jpeg (which takes 1 or 3 channels)."""
    from tensorflow_datasets.datasets.oxford_iiit_pet import oxford_iiit_pet_dataset_builder as real

    return frozenset(real._CORRUPT_SAMPLES)  # pylint: disable=protected-access


@functools.lru_cache(maxsize=None)
def extracted_tfds_builder(dataset_name: str, list_files: Tuple[Tuple[str, str], ...]) -> type:
    """The installed `oxford_iiit_pet` builder, reading its two archives from one extracted folder.

    Only where the archives come from differs: features, example generation, file format, name and
    version are the real builder's, so plain `tfds.builder("oxford_iiit_pet")` reads what it writes.
    `list_files`: (split, list file under annotations/) pairs.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.oxford_iiit_pet import oxford_iiit_pet_dataset_builder as real

    class ExtractedOxfordPets(real.Builder, skip_registration=True):
        name = dataset_name
        pkg_dir_path = real.Builder._get_pkg_dir_path()  # the real dataset's README and citation

        def __init__(self, archive_root: pathlib.Path, **kwargs):
            self._archive_root = pathlib.Path(archive_root)
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            # What the real builder derives from download_and_extract(): <root>/images and <root>/annotations.
            images, annotations = self._archive_root / "images", self._archive_root / "annotations"
            return [
                tfds.core.SplitGenerator(
                    name=split,
                    gen_kwargs={
                        "images_dir_path": os.fspath(images),
                        "annotations_dir_path": os.fspath(annotations),
                        "images_list_file": os.fspath(annotations / list_name),
                    },
                )
                for split, list_name in list_files
            ]

        # TFDS prints these to stdout for downloads a user may want to cancel; nothing is downloaded here.
        def _log_download_bytes(self) -> None:
            log.info("Preparing %s %s in %s", self.name, self.version, self.data_dir)

        def _log_download_done(self) -> None:
            log.info("Prepared %s %s in %s", self.name, self.version, self.data_dir)

    return ExtractedOxfordPets

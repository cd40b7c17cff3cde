"""Transform: TFX's, writing plain TFRecords (not gzip) and no folders of restarted Beam attempts."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import apache_beam as beam
import pyarrow as pa
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.transform import component as transform_component
from tfx.components.transform import executor as transform_executor
from tfx.components.transform import labels
from tfx.dsl.components.base import executor_spec

# Transform's records hold raw uint8 pixels, which gzip shrinks by about a third at several ms per
# image: most of Transform's per-image time (bench/README.md). Readers (TFXIO, tf.data) pick the
# compression from the file name, so plain files need nothing downstream.
_TransformProcessor = transform_executor.TransformProcessor
# A Beam file sink writes into `beam-temp-<name>-<uuid>` beside its output and removes it on commit;
# an attempt the runner restarts (a Flink failover) never commits, so its folder stays. Consumers
# read `Split-*/*`, where a folder is not a record file.
_BEAM_TEMP_PREFIX = "beam-temp-"


class _PlainRecordsProcessor(_TransformProcessor):
    """TFX's TransformProcessor with its one hard-coded `.gz` sink made plain; everything else is TFX's."""

    @staticmethod
    @beam.ptransform_fn
    @beam.typehints.with_input_types(Tuple[pa.RecordBatch, Dict[str, pa.Array]])
    def _EncodeAndWrite(pcoll: beam.PCollection, schema, file_format: str, output_path: str) -> beam.pvalue.PDone:
        if file_format != labels.FORMAT_TFRECORD:
            return pcoll | "EncodeAndWrite" >> _TransformProcessor._EncodeAndWrite(  # pylint: disable=no-value-for-parameter
                schema=schema, file_format=file_format, output_path=output_path)
        return (pcoll
                | "EncodeAndSerialize" >> beam.ParDo(_TransformProcessor._RecordBatchToExamplesFn(schema))
                | "ExtractExamples" >> beam.Values()
                | "WriteToTFRecord" >> beam.io.WriteToTFRecord(output_path))


class Executor(transform_executor.Executor):
    """Runs TFX's Transform with `_PlainRecordsProcessor`.

    TFX builds its processor by the module-level name inside `Do` and offers no other hook for the
    sink, so the name points at the subclass for the duration of the call.
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        transform_executor.TransformProcessor = _PlainRecordsProcessor
        try:
            super().Do(input_dict, output_dict, exec_properties)
        finally:
            transform_executor.TransformProcessor = _TransformProcessor
        for artifact in output_dict.get("transformed_examples", []):
            _remove_uncommitted_attempts(artifact.uri)


def _remove_uncommitted_attempts(uri: str) -> None:
    """Deletes the sink folders of Beam attempts that never committed, once the job has succeeded."""
    for leftover in tf.io.gfile.glob(os.path.join(uri, "Split-*", _BEAM_TEMP_PREFIX + "*")):
        logging.info("Removing %s: the sink folder of a Beam attempt that was restarted", leftover)
        tf.io.gfile.rmtree(leftover)


class Transform(transform_component.Transform):
    """Drop-in for `tfx.components.Transform` whose materialized examples are uncompressed TFRecords."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

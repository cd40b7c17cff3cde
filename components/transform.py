"""Transform: TFX's, writing plain TFRecords (not gzip) and no folders of restarted Beam attempts."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.transform import component as transform_component, executor as transform_executor
from tfx.dsl.components.base import executor_spec

from components import internals

# A Beam file sink writes into `beam-temp-<name>-<uuid>` beside its output and removes it on commit;
# an attempt the runner restarts (a Flink failover) never commits, so its folder stays. Consumers
# read `Split-*/*`, where a folder is not a record file.
_BEAM_TEMP_PREFIX = "beam-temp-"


class Executor(transform_executor.Executor):
    """TFX's Transform executor, writing uncompressed records (see `internals.transform_writes_plain_records`)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        with internals.transform_writes_plain_records():
            super().Do(input_dict, output_dict, exec_properties)
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

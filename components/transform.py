"""Transform: TFX's, writing plain TFRecords (not gzip), no folders of restarted Beam attempts, and a span
window's train splits as one."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.transform import component as transform_component, executor as transform_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from components import internals
from components.example_gen import is_window_split

# A Beam file sink writes into `beam-temp-<name>-<uuid>` beside its output and removes it on commit;
# an attempt the runner restarts (a Flink failover) never commits, so its folder stays. Consumers
# read `Split-*/*`, where a folder is not a record file.
_BEAM_TEMP_PREFIX = "beam-temp-"


class Executor(transform_executor.Executor):
    """TFX's Transform executor, writing uncompressed records (see `internals.transform_writes_plain_records`).

    Transformed, the train splits of a span window's older spans (TfdsExampleGen's `train_span_<N>`) join
    the `train` split, which the Trainer reads: it trains on the whole window with no split list of its
    own, and on every orchestrator, whichever spans a scheduled run finds.
    """

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        with internals.transform_writes_plain_records():
            super().Do(input_dict, output_dict, exec_properties)
        for artifact in output_dict.get("transformed_examples", []):
            _remove_uncommitted_attempts(artifact.uri)
            _join_window_splits(artifact)


def _join_window_splits(transformed: types.Artifact) -> None:
    """Moves each window split's records into Split-train (names prefixed by their split) and drops the split."""
    splits = artifact_utils.decode_split_names(transformed.split_names)
    window = [split for split in splits if is_window_split(split)]
    if not window:
        return
    train = artifact_utils.get_split_uri([transformed], "train")
    for split in window:
        folder = artifact_utils.get_split_uri([transformed], split)
        for name in fileio.listdir(folder):
            fileio.rename(os.path.join(folder, name), os.path.join(train, f"{split}-{name.rstrip('/')}"))
        fileio.rmtree(folder)
        logging.info("Transformed split %s joins the train split", split)
    transformed.split_names = artifact_utils.encode_split_names([s for s in splits if not is_window_split(s)])


def _remove_uncommitted_attempts(uri: str) -> None:
    """Deletes the sink folders of Beam attempts that never committed, once the job has succeeded."""
    for leftover in tf.io.gfile.glob(os.path.join(uri, "Split-*", _BEAM_TEMP_PREFIX + "*")):
        logging.info("Removing %s: the sink folder of a Beam attempt that was restarted", leftover)
        tf.io.gfile.rmtree(leftover)


class Transform(transform_component.Transform):
    """Drop-in for `tfx.components.Transform` whose materialized examples are uncompressed TFRecords."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

"""The serving directory TF Serving watches: numbered versions, each complete once its saved_model.pb exists."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Callable, List, Optional, Sequence

import tensorflow as tf
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils

SAVED_MODEL_FILE = tf.saved_model.SAVED_MODEL_FILENAME_PB
_VARIABLES_INDEX = os.path.join(tf.saved_model.VARIABLES_DIRECTORY, tf.saved_model.VARIABLES_FILENAME + ".index")
# Beside the model in a version: the statistics of the span it was trained on (its newest one), in the
# ExampleStatistics layout (Split-<name>/FeatureStats.pb), so the version and its baseline for drift appear
# together. TF Serving loads only the SavedModel and ignores assets.extra/.
STATISTICS_DIR = os.path.join("assets.extra", "statistics")
# Their span and split names, which an ExampleStatistics artifact keeps as properties.
_STATISTICS_PROPERTIES = "properties.json"


def served_versions(serving_dir: str) -> List[int]:
    """Complete versions under `serving_dir`, oldest first: numeric folders holding saved_model.pb.

    The Pusher publishes only blessed models and a version counts once its saved_model.pb exists
    (written last, or renamed into place whole), which is also when TF Serving loads it.
    """
    return sorted(version for version in _numbered(serving_dir) if holds_model(os.path.join(serving_dir, str(version))))


def latest_version(serving_dir: str) -> Optional[int]:
    """The version TF Serving's default policy serves, or None before the first push."""
    # Newest first, stopping at the first complete one: each check is a request on gs://.
    return next(
        (
            version
            for version in sorted(_numbered(serving_dir), reverse=True)
            if holds_model(os.path.join(serving_dir, str(version)))
        ),
        None,
    )


def _numbered(serving_dir: str) -> List[int]:
    if not serving_dir or not fileio.isdir(serving_dir):
        return []
    return [int(name) for name in (entry.rstrip("/") for entry in fileio.listdir(serving_dir)) if name.isdigit()]


def holds_model(model_dir: str) -> bool:
    return fileio.exists(os.path.join(model_dir, SAVED_MODEL_FILE))


def fingerprint(model_dir: str) -> str:
    """Content key of a SavedModel: its graph and its variables' index (which names every shard's checksum)."""
    digest = hashlib.sha256()
    for name in (SAVED_MODEL_FILE, _VARIABLES_INDEX):
        path = os.path.join(model_dir, name)
        if fileio.exists(path):
            with fileio.open(path, "rb") as stream:
                digest.update(stream.read())
    return digest.hexdigest()[:16]


def place(source: str, target: str, before_model: Optional[Callable[[str], None]] = None) -> None:
    """Puts the SavedModel at `source` at `target`, saved_model.pb last, writing no bytes where it can.

    On one local filesystem the files are hard links: a model is immutable once exported, each name
    keeps the bytes alive on its own (deleting the pipeline root leaves the served version intact), and
    a 134 M-parameter model is not written a second time. Elsewhere (gs://, another device) it is a copy.
    `before_model(target)` runs just before saved_model.pb goes in, so what it adds appears with the model.
    """
    if not holds_model(source):
        raise FileNotFoundError(
            f"{source} has no {SAVED_MODEL_FILE}; refusing to place a model TF Serving could not load"
        )
    last = (os.path.join(source, SAVED_MODEL_FILE), os.path.join(target, SAVED_MODEL_FILE))
    if _same_local_filesystem(source, os.path.dirname(target.rstrip("/")) or "."):
        for root, _, files in os.walk(source):
            folder = os.path.join(target, os.path.relpath(root, source))
            os.makedirs(folder, exist_ok=True)
            for name in files:
                if os.path.join(root, name) != last[0]:
                    os.link(os.path.join(root, name), os.path.join(folder, name))
        if before_model:
            before_model(target)
        os.link(*last)
        return
    io_utils.copy_dir(source, target, deny_regex_patterns=[re.escape(SAVED_MODEL_FILE) + "$"])
    if before_model:
        before_model(target)
    io_utils.copy_file(*last)


def write_statistics(statistics: types.Artifact, splits: Sequence[str], version_dir: str) -> None:
    """Copies `splits` of an ExampleStatistics artifact, with its span, into a version's STATISTICS_DIR."""
    target = os.path.join(version_dir, STATISTICS_DIR)
    for split in splits:
        source = artifact_utils.get_split_uri([statistics], split)
        _copy_stats(source, os.path.join(target, os.path.basename(source.rstrip("/"))))
    io_utils.write_string_file(
        os.path.join(target, _STATISTICS_PROPERTIES), json.dumps({"span": statistics.span, "split_names": list(splits)})
    )


def read_statistics(version_dir: str, statistics: types.Artifact) -> bool:
    """Fills an ExampleStatistics artifact with a version's training statistics; False when it has none.

    Versions pushed before statistics were published, and any without them, have none.
    """
    source = os.path.join(version_dir, STATISTICS_DIR)
    properties = os.path.join(source, _STATISTICS_PROPERTIES)
    if not fileio.exists(properties):
        return False
    found = json.loads(io_utils.read_string_file(properties))
    statistics.split_names = artifact_utils.encode_split_names(found["split_names"])
    statistics.span = int(found["span"])
    for split in found["split_names"]:
        target = artifact_utils.get_split_uri([statistics], split)
        _copy_stats(os.path.join(source, os.path.basename(target.rstrip("/"))), target)
    return True


def _copy_stats(source_split: str, target_split: str) -> None:
    fileio.makedirs(target_split)
    name = stats_artifact_utils.BINARY_PB_BASENAME
    io_utils.copy_file(os.path.join(source_split, name), os.path.join(target_split, name), overwrite=True)


def _same_local_filesystem(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return False
    os.makedirs(b, exist_ok=True)
    return os.stat(a).st_dev == os.stat(b).st_dev

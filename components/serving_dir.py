"""The serving directory TF Serving watches: numbered versions, each complete once its saved_model.pb exists."""

from __future__ import annotations

import hashlib
import os
import re
from typing import List, Optional

import tensorflow as tf
from tfx.dsl.io import fileio
from tfx.utils import io_utils

SAVED_MODEL_FILE = tf.saved_model.SAVED_MODEL_FILENAME_PB
_VARIABLES_INDEX = os.path.join(tf.saved_model.VARIABLES_DIRECTORY, tf.saved_model.VARIABLES_FILENAME + ".index")


def served_versions(serving_dir: str) -> List[int]:
    """Complete versions under `serving_dir`, oldest first: numeric folders holding saved_model.pb.

    The Pusher publishes only blessed models and a version counts once its saved_model.pb exists
    (written last, or renamed into place whole), which is also when TF Serving loads it.
    """
    return sorted(version for version in _numbered(serving_dir)
                  if holds_model(os.path.join(serving_dir, str(version))))


def latest_version(serving_dir: str) -> Optional[int]:
    """The version TF Serving's default policy serves, or None before the first push."""
    # Newest first, stopping at the first complete one: each check is a request on gs://.
    return next((version for version in sorted(_numbered(serving_dir), reverse=True)
                 if holds_model(os.path.join(serving_dir, str(version)))), None)


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


def place(source: str, target: str) -> None:
    """Puts the SavedModel at `source` at `target`, saved_model.pb last, writing no bytes where it can.

    On one local filesystem the files are hard links: a model is immutable once exported, each name
    keeps the bytes alive on its own (deleting the pipeline root leaves the served version intact), and
    a 134 M-parameter model is not written a second time. Elsewhere (gs://, another device) it is a copy.
    """
    if not holds_model(source):
        raise FileNotFoundError(f"{source} has no {SAVED_MODEL_FILE}; refusing to place a model TF Serving "
                                "could not load")
    last = (os.path.join(source, SAVED_MODEL_FILE), os.path.join(target, SAVED_MODEL_FILE))
    if _same_local_filesystem(source, os.path.dirname(target.rstrip("/")) or "."):
        for root, _, files in os.walk(source):
            folder = os.path.join(target, os.path.relpath(root, source))
            os.makedirs(folder, exist_ok=True)
            for name in files:
                if os.path.join(root, name) != last[0]:
                    os.link(os.path.join(root, name), os.path.join(folder, name))
        os.link(*last)
        return
    io_utils.copy_dir(source, target, deny_regex_patterns=[re.escape(SAVED_MODEL_FILE) + "$"])
    io_utils.copy_file(*last)


def _same_local_filesystem(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return False
    os.makedirs(b, exist_ok=True)
    return os.stat(a).st_dev == os.stat(b).st_dev

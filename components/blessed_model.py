"""LatestBlessedModel: the newest model in the serving directory as a Model artifact (baseline and warm start)."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

MODEL_KEY = "model"
SAVED_MODEL_FILE = "saved_model.pb"
# Written into an output that holds no model, so the folder exists for launchers that upload it.
NO_MODEL_FILE = "NO_BLESSED_MODEL"


def served_versions(serving_dir: str) -> List[int]:
    """Complete versions under `serving_dir`, oldest first: numeric folders holding saved_model.pb.

    The Pusher publishes only blessed models and a version counts once its saved_model.pb exists
    (written last, or renamed into place whole), which is also when TF Serving loads it.
    """
    if not serving_dir or not fileio.isdir(serving_dir):
        return []
    names = (name.rstrip("/") for name in fileio.listdir(serving_dir))
    return sorted(int(name) for name in names if name.isdigit()
                  and fileio.exists(os.path.join(serving_dir, name, SAVED_MODEL_FILE)))


def latest_version(serving_dir: str) -> Optional[int]:
    """The version TF Serving's default policy serves, or None before the first push."""
    versions = served_versions(serving_dir)
    return versions[-1] if versions else None


def served_fingerprint(serving_dir: str) -> str:
    """Content key of the newest served version, "" before the first push.

    By content, not version number: a later run that blesses and re-pushes the same model adds a
    version with the same bytes, which must not count as a new baseline.
    """
    version = latest_version(serving_dir)
    if version is None:
        return ""
    digest = hashlib.sha256()
    for name in (SAVED_MODEL_FILE, os.path.join("variables", "variables.index")):
        path = os.path.join(serving_dir, str(version), name)
        if fileio.exists(path):
            with fileio.open(path, "rb") as stream:
                digest.update(stream.read())
    return digest.hexdigest()[:16]


def holds_model(model: types.Artifact) -> bool:
    """Whether a Model artifact has a SavedModel (LatestBlessedModel emits an empty one before the first push)."""
    path = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
    return fileio.exists(os.path.join(path, SAVED_MODEL_FILE))


class LatestBlessedModelSpec(types.ComponentSpec):
    """Parameters of LatestBlessedModel; primitives only, so they compile to any orchestrator."""

    PARAMETERS = {
        "serving_dir": ExecutionParameter(type=str),
        # Cache key only: served_fingerprint() when the pipeline was built ("" = none or not visible),
        # so a local rerun after a new model was pushed re-reads the serving directory. Orchestrators
        # that compile once (Kubeflow) disable caching for this component instead.
        "seen_model": ExecutionParameter(type=str, optional=True),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {MODEL_KEY: ChannelParameter(type=standard_artifacts.Model)}


class Executor(base_executor.BaseExecutor):
    """Copies the newest served version into the output Model's Format-Serving folder."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        serving_dir = exec_properties["serving_dir"]
        model = artifact_utils.get_single_instance(output_dict[MODEL_KEY])
        version = latest_version(serving_dir)
        if version is None:
            # An output with no SavedModel: the Trainer starts fresh and the Evaluator judges alone.
            io_utils.write_string_file(os.path.join(model.uri, NO_MODEL_FILE),
                                       f"No blessed model in {serving_dir} yet.\n")
            model.set_int_custom_property("found", 0)
            logging.info("No blessed model in %s yet", serving_dir)
            return
        source = os.path.join(serving_dir, str(version))
        # A copy, not a reference: the artifact stays valid (and downloadable by any launcher)
        # whatever later happens to the serving directory.
        io_utils.copy_dir(source, path_utils.serving_model_path(model.uri))
        model.set_int_custom_property("found", 1)
        model.set_string_custom_property("pushed_destination", source)
        model.set_int_custom_property("pushed_version", version)
        logging.info("Latest blessed model: version %d from %s", version, source)


class LatestBlessedModel(base_component.BaseComponent):
    """Emits the newest version in `serving_dir` as a Model; one with no SavedModel before the first push.

    It replaces TFX's `Resolver(LatestBlessedModelStrategy)`, which compiles to metadata-query
    executors that only Vertex AI runs: this is an ordinary container task on every orchestrator.
    """

    SPEC_CLASS = LatestBlessedModelSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, serving_dir: str):
        # Remote folders are not read while building: compiling for a cluster needs no credentials.
        seen = "" if "://" in serving_dir else served_fingerprint(serving_dir)
        super().__init__(spec=LatestBlessedModelSpec(
            serving_dir=serving_dir, seen_model=seen,
            model=types.Channel(type=standard_artifacts.Model)))

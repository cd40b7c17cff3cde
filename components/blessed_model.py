"""LatestBlessedModel: a served version as a Model artifact (the baseline to beat, the weights to warm-start from)
and the statistics of its training data (the baseline for drift)."""

from __future__ import annotations

import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

from components import serving_dir as serving
from config import names

MODEL_KEY = "model"
STATISTICS_KEY = "statistics"
# Written into an output that holds no model (or no statistics), so the folder exists for launchers that
# upload it.
NO_MODEL_FILE = "NO_BLESSED_MODEL"
NO_STATISTICS_FILE = "NO_STATISTICS"
# `version` value meaning "the newest served version when the component executes".
NEWEST = -1


def holds_model(model: types.Artifact) -> bool:
    """Whether a Model artifact has a SavedModel (LatestBlessedModel emits an empty one before the first push)."""
    return serving.holds_model(path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model)))


class LatestBlessedModelSpec(types.ComponentSpec):
    """Parameters of LatestBlessedModel; primitives only, so they compile to any orchestrator."""

    PARAMETERS = {
        "serving_dir": ExecutionParameter(type=str),
        # A served version, or NEWEST. A runner that can read the serving dir when the run starts pins
        # the version, so a cached execution means the same baseline; one that cannot (a compiled spec
        # run on a schedule) leaves NEWEST and runs this component uncached.
        "version": ExecutionParameter(type=int),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        STATISTICS_KEY: ChannelParameter(type=standard_artifacts.ExampleStatistics),
    }


class Executor(base_executor.BaseExecutor):
    """Places the served version in the output Model's Format-Serving folder (see `serving_dir.place`), and the
    statistics the Pusher published beside it in the output ExampleStatistics."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        base = exec_properties["serving_dir"]
        version = int(exec_properties["version"])
        model = artifact_utils.get_single_instance(output_dict[MODEL_KEY])
        statistics = artifact_utils.get_single_instance(output_dict[STATISTICS_KEY])
        if version == NEWEST:
            version = serving.latest_version(base)
        elif not serving.holds_model(os.path.join(base, str(version))):
            raise FileNotFoundError(
                f"served version {version} is not in {base} (found {serving.served_versions(base)})"
            )
        if version is None:
            # An output with no SavedModel: the Trainer starts fresh and the Evaluator judges alone.
            io_utils.write_string_file(os.path.join(model.uri, NO_MODEL_FILE), f"No blessed model in {base} yet.\n")
            model.set_int_custom_property("found", 0)
            _no_statistics(statistics, f"No blessed model in {base} yet.")
            logging.info("No blessed model in %s yet", base)
            return
        source = os.path.join(base, str(version))
        if serving.read_statistics(source, statistics):
            statistics.set_int_custom_property("found", 1)
            statistics.set_int_custom_property(names.PUSHED_VERSION, version)
        else:
            # Pushed before versions carried their training statistics: nothing to measure drift against.
            _no_statistics(statistics, f"Version {version} in {base} has no training statistics.")
        # The artifact stays valid (and downloadable by any launcher) whatever later happens to the
        # serving directory; on one local filesystem that costs no bytes.
        serving.place(source, path_utils.serving_model_path(model.uri))
        model.set_int_custom_property("found", 1)
        model.set_string_custom_property("pushed_destination", source)
        model.set_int_custom_property(names.PUSHED_VERSION, version)
        logging.info("Latest blessed model: version %d from %s", version, source)


def _no_statistics(statistics: types.Artifact, why: str) -> None:
    io_utils.write_string_file(os.path.join(statistics.uri, NO_STATISTICS_FILE), why + "\n")
    statistics.set_int_custom_property("found", 0)


class LatestBlessedModel(base_component.BaseComponent):
    """Emits a served version as a Model (the newest by default); one with no SavedModel before the first push.

    Also emits the statistics of the span that version was trained on as ExampleStatistics, empty when
    there is no version or it was pushed without them.

    It replaces TFX's `Resolver(LatestBlessedModelStrategy)`, which compiles to metadata-query
    executors that only Vertex AI runs: this is an ordinary container task on every orchestrator.
    """

    SPEC_CLASS = LatestBlessedModelSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, serving_dir: str, version: int = NEWEST):
        super().__init__(
            spec=LatestBlessedModelSpec(
                serving_dir=serving_dir,
                version=int(version),
                model=types.Channel(type=standard_artifacts.Model),
                statistics=types.Channel(type=standard_artifacts.ExampleStatistics),
            )
        )

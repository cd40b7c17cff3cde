"""AtomicPusher: TFX's Pusher, but a serving version appears only complete (copy to a hidden dir, then rename)."""

from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

SAVED_MODEL_FILE = "saved_model.pb"
# Hidden (leading dot) and not a number: TF Serving and `petseg` only treat numeric dirs as versions.
_INCOMPLETE = re.compile(r"^\.(?P<version>\d+)\.incomplete-(?P<pid>\d+)$")


def incomplete_dir(base: str, version: str) -> str:
    """Where a version is assembled before it is renamed into place; the pid marks who owns it."""
    return os.path.join(base, f".{version}.incomplete-{os.getpid()}")


def remove_abandoned(base: str) -> List[str]:
    """Deletes half-copied versions left by killed pushes on this machine; returns what it removed."""
    removed = []
    for name in os.listdir(base) if os.path.isdir(base) else []:
        match = _INCOMPLETE.match(name)
        if match and not _alive(int(match["pid"])):
            fileio.rmtree(os.path.join(base, name))
            removed.append(name)
    if removed:
        logging.warning("Removed incomplete pushes left by killed runs in %s: %s", base, removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def publish(model_path: str, base: str, version: str) -> str:
    """Copies a SavedModel to `<base>/<version>` so that the version dir never exists half-written.

    The copy goes to a hidden sibling first (same filesystem), `saved_model.pb` last, and one
    `rename` makes it visible: a kill at any moment leaves either no version or a complete one.
    """
    if not fileio.exists(os.path.join(model_path, SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"{model_path} has no {SAVED_MODEL_FILE}; refusing to push a model "
                                "TF Serving could not load")
    target = os.path.join(base, version)
    staging = incomplete_dir(base, version)
    fileio.makedirs(base)
    io_utils.copy_dir(model_path, staging, deny_regex_patterns=[re.escape(SAVED_MODEL_FILE) + "$"])
    io_utils.copy_file(os.path.join(model_path, SAVED_MODEL_FILE), os.path.join(staging, SAVED_MODEL_FILE))
    try:
        # os.rename refuses a non-empty target, so a concurrent push of the same version is never mixed.
        os.rename(staging, target)
    except OSError:
        fileio.rmtree(staging)
        raise
    return target


class Executor(pusher_executor.Executor):
    """Same inputs, outputs and artifact properties as TFX's filesystem Pusher; local pushes are atomic.

    Remote destinations (gs://, s3://) keep TFX's copy (saved_model.pb last): object stores have no
    atomic directory rename, and TF Serving waits for saved_model.pb there.
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        destination = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], pusher_pb2.PushDestination())
        fs_config = destination.filesystem
        if destination.WhichOneof("destination") != "filesystem" or "://" in fs_config.base_directory:
            return super().Do(input_dict, output_dict, exec_properties)
        if fs_config.versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"Invalid Versioning {fs_config.versioning}")

        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        base = fs_config.base_directory
        remove_abandoned(base)
        version = str(int(time.time()))
        serving_path = os.path.join(base, version)
        if fileio.exists(serving_path):
            # As TFX: a complete version of this second exists (a retried push); keep it.
            logging.info("Destination directory %s already exists, skipping current push.", serving_path)
        else:
            publish(model_path, base, version)
            logging.info("Model written to serving path %s.", serving_path)
        io_utils.copy_dir(model_path, model_push.uri)  # the artifact's archive copy, as TFX
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
        logging.info("Model pushed to %s.", model_push.uri)


class AtomicPusher(pusher_component.Pusher):
    """Drop-in for `tfx.components.Pusher` whose filesystem versions appear atomically."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model=None, model_blessing=None, infra_blessing=None, push_destination=None,
                 custom_config=None):
        # TFX's own "push_destination is required" check only fires for its stock executor class.
        if push_destination is None:
            raise ValueError("AtomicPusher needs push_destination (a filesystem base directory)")
        super().__init__(model=model, model_blessing=model_blessing, infra_blessing=infra_blessing,
                         push_destination=push_destination, custom_config=custom_config)

"""AtomicPusher: TFX's Pusher, but a served version appears only complete, with its training statistics, and once."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import time
import uuid
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component, executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import io_utils, json_utils, proto_utils

from components import serving_dir as serving
from config import names

# Hidden (leading dot) and not a number: TF Serving and petseg only treat numeric folders as versions.
_STAGING = re.compile(r"^\.(?P<version>\d+)\.incomplete-(?P<token>[0-9a-f]{32})$")
_OWNER_SUFFIX = ".owner"
# A push on another host (another pod, another machine on a shared volume) whose staging folder has
# not changed for this long is dead: its process cannot be asked, so its progress is its lease.
LEASE_SECONDS = 3600
# Written into the PushedModel artifact: where the model went (the Trainer's artifact is the archive).
PUSHED_TO_FILE = "PUSHED_TO"
STATISTICS_KEY = "statistics"
# The statistics splits published with a model: its newest span's (a window's older spans add others).
PUBLISHED_SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who is assembling a staging folder: a process on a host, since a boot (pids repeat across boots)."""

    host: str
    boot_id: str
    pid: int
    started: str  # the process's start time in clock ticks since boot (pids are reused)

    @classmethod
    def this_process(cls) -> "Owner":
        return cls(socket.gethostname(), _boot_id(), os.getpid(), _start_time(os.getpid()))

    def alive(self) -> Optional[bool]:
        """Whether the owner still runs; None when only its own host could tell."""
        here = Owner.this_process()
        if (self.host, self.boot_id) != (here.host, here.boot_id):
            return None
        return _start_time(self.pid) == self.started


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat; "" when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def begin_staging(base: str, version: str) -> str:
    """Creates the hidden folder a version is assembled in, with its owner recorded beside it."""
    staging = os.path.join(base, f".{version}.incomplete-{uuid.uuid4().hex}")
    with open(staging + _OWNER_SUFFIX, "w") as f:
        json.dump(dataclasses.asdict(Owner.this_process()), f)
    os.makedirs(staging)
    return staging


def _end_staging(staging: str) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    with_owner = staging + _OWNER_SUFFIX
    if os.path.exists(with_owner):
        os.remove(with_owner)


def remove_abandoned(base: str, now: Optional[float] = None) -> List[str]:
    """Deletes staging folders whose push died, on this host or another sharing `base`; returns their names.

    On this host (same boot) a push is dead when its process is gone; a host cannot see another's
    processes, so there a push is dead once its folder has not changed for LEASE_SECONDS.
    """
    now = time.time() if now is None else now
    removed = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        if name.endswith(_OWNER_SUFFIX) and _STAGING.match(name[: -len(_OWNER_SUFFIX)]):
            # Left alone while its folder exists; an orphan is a push that died between creating the two.
            if (
                os.path.lexists(path)
                and not os.path.exists(path[: -len(_OWNER_SUFFIX)])
                and now - os.lstat(path).st_mtime > LEASE_SECONDS
            ):
                os.remove(path)
            continue
        if not _STAGING.match(name):
            continue
        owner = _owner(path)
        alive = owner.alive() if owner else None
        if alive is False or (alive is None and now - _last_change(path) > LEASE_SECONDS):
            _end_staging(path)
            removed.append(name)
    if removed:
        logging.warning("Removed incomplete pushes left by killed runs in %s: %s", base, removed)
    return removed


def _owner(staging: str) -> Optional[Owner]:
    try:
        with open(staging + _OWNER_SUFFIX) as f:
            return Owner(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def _last_change(staging: str) -> float:
    """The newest change in the folder: linking or copying a file updates its folder's time."""
    times = [os.lstat(staging).st_mtime]
    for root, folders, files in os.walk(staging):
        times += [os.lstat(os.path.join(root, n)).st_mtime for n in folders + files]
    return max(times)


def publish(model_path: str, base: str, version: str, statistics: Optional[types.Artifact] = None) -> str:
    """Places a SavedModel (and its training statistics) at `<base>/<version>`, never half-written.

    The model goes to a hidden sibling first (same filesystem) and one `rename` makes it visible:
    a kill at any moment leaves either no version or a complete one.
    """
    if not serving.holds_model(model_path):
        raise FileNotFoundError(
            f"{model_path} has no {serving.SAVED_MODEL_FILE}; refusing to push a model TF Serving could not load"
        )
    target = os.path.join(base, version)
    os.makedirs(base, exist_ok=True)
    staging = begin_staging(base, version)
    try:
        serving.place(model_path, staging, _statistics_writer(statistics))
        # os.rename refuses a non-empty target, so a concurrent push of the same version is never mixed.
        os.rename(staging, target)
    finally:
        _end_staging(staging)
    return target


def _statistics_writer(statistics: Optional[types.Artifact]):
    """What `serving.place` calls before the model goes in: writes the training statistics, if any."""
    if statistics is None:
        return None
    splits = [s for s in PUBLISHED_SPLITS if s in artifact_utils.decode_split_names(statistics.split_names)]
    return lambda version_dir: serving.write_statistics(statistics, splits, version_dir)


class Executor(pusher_executor.Executor):
    """TFX's filesystem Pusher: same inputs, outputs and artifact properties, with four differences.

    - A local version appears atomically (staging folder, then rename); remote destinations (gs://)
      keep TFX's copy, saved_model.pb last: object stores have no atomic rename, and TF Serving waits
      for saved_model.pb there.
    - A model whose content is already the newest served version is not pushed again: the artifact
      records that version.
    - The PushedModel artifact records where the model went instead of holding another copy of it;
      the Trainer's Model artifact (its lineage parent in MLMD) is the archive.
    - With `statistics` (StatisticsGen's), a version carries those of the newest span it was trained on
      (`serving.STATISTICS_DIR`): the next run's baseline for drift, published as atomically as the model.
    """

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        destination = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], pusher_pb2.PushDestination()
        )
        fs_config = destination.filesystem
        if destination.WhichOneof("destination") != "filesystem":
            return super().Do(input_dict, output_dict, exec_properties)
        if fs_config.versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"Invalid Versioning {fs_config.versioning}")
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            model_push.set_int_custom_property(names.PUSHED, 0)
            return
        model_path = self.GetModelPath(input_dict)
        statistics = next(iter(input_dict.get(STATISTICS_KEY) or []), None)
        base = fs_config.base_directory
        newest = serving.latest_version(base)
        if newest is not None and serving.fingerprint(os.path.join(base, str(newest))) == serving.fingerprint(
            model_path
        ):
            version = str(newest)
            logging.info("Model %s is already served as version %s; not pushed again.", model_path, version)
        else:
            version = str(int(time.time()))
            if fileio.exists(os.path.join(base, version)):
                version = str(max(int(version), newest or 0) + 1)  # a push within the same second
            if "://" in base:
                serving.place(model_path, os.path.join(base, version), _statistics_writer(statistics))
            else:
                remove_abandoned(base)
                publish(model_path, base, version, statistics)
            logging.info("Model written to serving path %s.", os.path.join(base, version))
        serving_path = os.path.join(base, version)
        io_utils.write_string_file(os.path.join(model_push.uri, PUSHED_TO_FILE), serving_path + "\n")
        model_push.set_int_custom_property(names.PUSHED, 1)
        model_push.set_string_custom_property(names.PUSHED_DESTINATION, serving_path)
        model_push.set_string_custom_property(names.PUSHED_VERSION, version)


class AtomicPusherSpec(standard_component_specs.PusherSpec):
    """TFX's Pusher spec and the statistics to publish with the model."""

    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        STATISTICS_KEY: ChannelParameter(type=standard_artifacts.ExampleStatistics, optional=True),
    }


class AtomicPusher(pusher_component.Pusher):
    """Drop-in for `tfx.components.Pusher` whose filesystem versions appear atomically, once, with `statistics`."""

    SPEC_CLASS = AtomicPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        model=None,
        model_blessing=None,
        infra_blessing=None,
        push_destination=None,
        custom_config=None,
        statistics=None,
    ):
        # TFX's own "push_destination is required" check only fires for its stock executor class.
        if push_destination is None:
            raise ValueError("AtomicPusher needs push_destination (a filesystem base directory)")
        if model is None:
            raise ValueError("AtomicPusher needs the model to push")
        # TFX's Pusher builds its own spec, which has no `statistics`; the base class takes ours.
        base_component.BaseComponent.__init__(
            self,
            spec=AtomicPusherSpec(
                model=model,
                model_blessing=model_blessing,
                infra_blessing=infra_blessing,
                push_destination=push_destination,
                custom_config=json_utils.dumps(custom_config),
                statistics=statistics,
                pushed_model=types.Channel(type=standard_artifacts.PushedModel),
            ),
        )

"""AtomicPusher: same artifact properties as TFX's Pusher, and a push killed mid-copy never shows a partial version."""

import os
import pathlib
import signal
from unittest import mock

import pytest
from tfx import types
from tfx.components.pusher import component as tfx_component
from tfx.components.pusher import executor as tfx_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import pusher

EXECUTORS = {"tfx": tfx_executor.Executor, "atomic": pusher.Executor}
MODEL_FILES = ("saved_model.pb", "fingerprint.pb", "variables/variables.index",
               "variables/variables.data-00000-of-00001", "assets/vocab.txt")


def _fake_model(root: pathlib.Path) -> pathlib.Path:
    """A Trainer `model` artifact dir; the pusher copies files and never parses them."""
    for name in MODEL_FILES:
        path = root / "Format-Serving" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 1000)
    return root


def push(kind: str, tmp: pathlib.Path, base: pathlib.Path, blessed: bool = True) -> standard_artifacts.PushedModel:
    """Runs one executor's Do as the Pusher component would; returns the pushed_model artifact."""
    model = standard_artifacts.Model()
    model.uri = str(_fake_model(tmp / "model"))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp / f"pushed_{kind}_{len(list(tmp.iterdir()))}")
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))
    EXECUTORS[kind]().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                         {"push_destination": proto_utils.proto_to_json(destination)})
    return pushed


def versions(base: pathlib.Path) -> dict:
    """What a model server would list: numeric dirs -> whether each is complete."""
    return {p.name: all((p / f).is_file() for f in MODEL_FILES) for p in base.iterdir() if p.name.isdigit()}


def _killed_push(kind: str, tmp: pathlib.Path, base: pathlib.Path, die_at_copy: int) -> None:
    """Pushes in a forked child that SIGKILLs itself at the n-th file copy (a pod killed mid-push).

    A fork, not a fresh interpreter: re-importing TFX costs a minute on a loaded machine.
    """
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            real_copy, count = fileio.copy, [0]

            def copy_then_die(*args, **kwargs):
                count[0] += 1
                if count[0] == die_at_copy:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_copy(*args, **kwargs)

            with mock.patch.object(fileio, "copy", copy_then_die):
                push(kind, tmp, base)
        finally:
            os._exit(3)  # reached only if the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_blessed_push_is_complete_with_tfx_artifact_properties(tmp_path):
    stock = push("tfx", tmp_path, tmp_path / "stock_serving")
    atomic = push("atomic", tmp_path, tmp_path / "serving")
    assert set(atomic.mlmd_artifact.custom_properties) == set(stock.mlmd_artifact.custom_properties) == {
        "pushed", "pushed_destination", "pushed_version"}
    version = atomic.get_string_custom_property("pushed_version")
    assert atomic.get_int_custom_property("pushed") == 1
    assert atomic.get_string_custom_property("pushed_destination") == str(tmp_path / "serving" / version)
    assert sorted(os.listdir(tmp_path / "serving")) == [version]  # no temp dir left behind
    assert versions(tmp_path / "serving") == {version: True}
    assert all((pathlib.Path(atomic.uri) / f).is_file() for f in MODEL_FILES)  # the artifact's archive copy


def test_unblessed_model_is_not_pushed(tmp_path):
    atomic = push("atomic", tmp_path, tmp_path / "serving", blessed=False)
    assert atomic.get_int_custom_property("pushed") == 0
    assert not (tmp_path / "serving").exists()


# The 1st copy is the first model file; the 4th falls after the directory tree exists but before saved_model.pb.
@pytest.mark.parametrize("die_at_copy", [1, 4])
def test_push_killed_mid_copy_never_shows_a_partial_version(tmp_path, die_at_copy):
    base = tmp_path / "serving"
    _killed_push("atomic", tmp_path, base, die_at_copy)
    assert versions(base) == {}
    assert [p.name for p in base.iterdir()][0].startswith(".")  # the hidden, abandoned copy
    # The retry cleans up the abandoned copy and publishes a complete version.
    pushed = push("atomic", tmp_path, base)
    assert versions(base) == {pushed.get_string_custom_property("pushed_version"): True}
    assert len(os.listdir(base)) == 1


def test_stock_tfx_pusher_killed_mid_copy_leaves_a_partial_version(tmp_path):
    """Why AtomicPusher exists: the same kill with TFX's executor leaves a numeric dir without saved_model.pb."""
    base = tmp_path / "serving"
    _killed_push("tfx", tmp_path, base, 4)
    assert list(versions(base).values()) == [False]


def test_component_is_a_drop_in_for_the_tfx_pusher():
    model, blessing = types.Channel(type=standard_artifacts.Model), types.Channel(type=standard_artifacts.ModelBlessing)
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory="/srv"))
    atomic = pusher.AtomicPusher(model=model, model_blessing=blessing, push_destination=destination)
    stock = tfx_component.Pusher(model=model, model_blessing=blessing, push_destination=destination)
    assert atomic.executor_spec.executor_class is pusher.Executor
    assert atomic.outputs.keys() == stock.outputs.keys() and atomic.exec_properties == stock.exec_properties
    with pytest.raises(ValueError, match="push_destination"):
        pusher.AtomicPusher(model=model, model_blessing=blessing)

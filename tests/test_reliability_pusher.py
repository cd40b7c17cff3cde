"""AtomicPusher: TFX's artifact properties, no partial or repeated versions, and dead pushes cleaned on any host."""

import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest
from tfx import types
from tfx.components.pusher import component as tfx_component, executor as tfx_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import pusher

EXECUTORS = {"tfx": tfx_executor.Executor, "atomic": pusher.Executor}
MODEL_FILES = (
    "saved_model.pb",
    "fingerprint.pb",
    "variables/variables.index",
    "variables/variables.data-00000-of-00001",
    "assets/vocab.txt",
)


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
    EXECUTORS[kind]().Do(
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination)},
    )
    return pushed


def versions(base: pathlib.Path) -> dict:
    """What a model server would list: numeric dirs -> whether each is complete."""
    return {p.name: all((p / f).is_file() for f in MODEL_FILES) for p in base.iterdir() if p.name.isdigit()}


def _killed_push(kind: str, tmp: pathlib.Path, base: pathlib.Path, die_at_write: int) -> None:
    """Pushes in a forked child that SIGKILLs itself at the n-th file it writes (a pod killed mid-push).

    TFX's executor copies each file; ours links them on one filesystem. A fork, not a fresh
    interpreter: re-importing TFX costs a minute on a loaded machine.
    """
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            count = [0]

            def then_die(real):
                def write(*args, **kwargs):
                    count[0] += 1
                    if count[0] == die_at_write:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)

                return write

            with (
                mock.patch.object(fileio, "copy", then_die(fileio.copy)),
                mock.patch.object(os, "link", then_die(os.link)),
            ):
                push(kind, tmp, base)
        finally:
            os._exit(3)  # reached only if the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_blessed_push_is_complete_with_tfx_artifact_properties(tmp_path):
    stock = push("tfx", tmp_path, tmp_path / "stock_serving")
    atomic = push("atomic", tmp_path, tmp_path / "serving")
    assert (
        set(atomic.mlmd_artifact.custom_properties)
        == set(stock.mlmd_artifact.custom_properties)
        == {"pushed", "pushed_destination", "pushed_version"}
    )
    version = atomic.get_string_custom_property("pushed_version")
    assert atomic.get_int_custom_property("pushed") == 1
    assert atomic.get_string_custom_property("pushed_destination") == str(tmp_path / "serving" / version)
    assert sorted(os.listdir(tmp_path / "serving")) == [version]  # no temp dir left behind
    assert versions(tmp_path / "serving") == {version: True}
    # The artifact says where the model went; the served files are the Trainer's, not a second copy.
    assert (pathlib.Path(atomic.uri) / pusher.PUSHED_TO_FILE).read_text().strip() == str(tmp_path / "serving" / version)
    for name in MODEL_FILES:
        served, trained = tmp_path / "serving" / version / name, tmp_path / "model" / "Format-Serving" / name
        assert os.stat(served).st_ino == os.stat(trained).st_ino, name


def test_a_model_already_served_is_not_pushed_again(tmp_path):
    first = push("atomic", tmp_path, tmp_path / "serving")
    again = push("atomic", tmp_path, tmp_path / "serving")
    assert again.get_int_custom_property("pushed") == 1
    assert again.get_string_custom_property("pushed_version") == first.get_string_custom_property("pushed_version")
    assert len(versions(tmp_path / "serving")) == 1


def test_unblessed_model_is_not_pushed(tmp_path):
    atomic = push("atomic", tmp_path, tmp_path / "serving", blessed=False)
    assert atomic.get_int_custom_property("pushed") == 0
    assert not (tmp_path / "serving").exists()


# The 1st write is the first model file; the 4th falls after the directory tree exists but before saved_model.pb.
@pytest.mark.parametrize("die_at_write", [1, 4])
def test_push_killed_mid_copy_never_shows_a_partial_version(tmp_path, die_at_write):
    base = tmp_path / "serving"
    _killed_push("atomic", tmp_path, base, die_at_write)
    assert versions(base) == {}
    assert [p.name for p in base.iterdir()][0].startswith(".")  # the hidden, abandoned copy
    # The retry cleans up the abandoned copy and publishes a complete version.
    pushed = push("atomic", tmp_path, base)
    assert versions(base) == {pushed.get_string_custom_property("pushed_version"): True}
    assert len(os.listdir(base)) == 1  # the staging folder and its owner record are gone


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


def _staging_owner(base: pathlib.Path, host: str = "") -> subprocess.Popen:
    """A process (on another host when `host` is given: its own UTS namespace) that begins a push into
    `base` and holds it until its stdin closes; returns once the staging folder exists."""
    code = (
        "import sys; from components import pusher; "
        f"print(pusher.begin_staging({str(base)!r}, '1700000000'), flush=True); sys.stdin.read()"
    )
    command = [sys.executable, "-c", code]
    if host:
        command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$0" "$@"', *command]
    base.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )
    assert pathlib.Path(proc.stdout.readline().strip()).is_dir()
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_push_on_this_host_is_abandoned_once_its_process_is_gone(tmp_path):
    base = tmp_path / "serving"
    owner = _staging_owner(base)
    assert pusher.remove_abandoned(str(base)) == []  # alive: someone else's push in progress
    _end(owner)
    [removed] = pusher.remove_abandoned(str(base))
    assert removed.startswith(".1700000000.incomplete-") and os.listdir(base) == []


def test_a_reused_pid_does_not_keep_a_dead_push_alive(tmp_path):
    base = tmp_path / "serving"
    staging = pusher.begin_staging(str(base.mkdir() or base), "1700000000")
    owner = pusher.Owner.this_process()
    # This very process, but started at another time: the pid was reused after the pusher died.
    pathlib.Path(staging + ".owner").write_text(__import__("json").dumps({**owner.__dict__, "started": "1"}))
    assert pusher.remove_abandoned(str(base)) == [os.path.basename(staging)]


def test_hosts_sharing_a_serving_dir_keep_each_others_live_pushes_and_clean_dead_ones(tmp_path):
    base = tmp_path / "serving"
    other = _staging_owner(base, host="other-host")
    # Another host's pid means nothing here (a pod's pusher is often pid 1): its push stands while it is fresh...
    assert pusher.remove_abandoned(str(base)) == []
    _end(other)
    assert pusher.remove_abandoned(str(base)) == []
    # ...and is dead once it has not changed for the lease.
    later = time.time() + pusher.LEASE_SECONDS + 1
    assert len(pusher.remove_abandoned(str(base), now=later)) == 1
    assert os.listdir(base) == []
    # Pushing from this host meanwhile is unaffected.
    push("atomic", tmp_path, base)
    assert len(versions(base)) == 1

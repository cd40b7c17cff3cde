"""Real `petseg run`s on a damaged raw folder: broken pairs skipped, clear failures, a killed Trainer resumed."""

import collections
import glob
import json
import os
import pathlib
import re
import signal
import subprocess

import pytest
import tensorflow as tf

from config import names
from dataset import synthetic
from config.profiles import load_config
from support import petseg as petseg_process
from support.credentials import find_credentials
from support.events import wait_for_path
from support.images import BROKEN, ODD_VALID, damage
from report.artifacts import RunArtifacts
from transform import preprocessing

pytestmark = pytest.mark.slow  # whole pipeline runs

EPOCHS = 3
UPSTREAM = ["TfdsExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "ValidationGate", "Transform"]
# What _damage breaks, plus the malformed and the duplicate list line it appends.
EXPECTED_SKIPPED = dict(collections.Counter(BROKEN.values()), malformed_line=1, duplicate_name=1)
TIMEOUT = 1500  # seconds per run; a shared 2-core machine can be several times slower than idle


def petseg(output: pathlib.Path, raw: pathlib.Path, *args: str) -> subprocess.Popen:
    return petseg_process.start(
        output, "--profile", "tiny", "--set", f"train.epochs={EPOCHS}", "--oxford-raw-dir", str(raw), *args
    )


def console(proc: subprocess.Popen) -> str:
    return proc.console_path.read_text(errors="replace")


def finish(proc: subprocess.Popen) -> str:
    proc.wait(timeout=TIMEOUT)
    return console(proc)


# The Trainer's BackupAndRestore checkpoint index, written at the end of each epoch.
BACKUP = f"pipeline_root/{names.TRAINER_ID}/backup/*/chief/checkpoint"


def first_backup(output: pathlib.Path) -> str:
    found = glob.glob(str(output / BACKUP))
    return found[0] if found else ""


def epochs_started(text: str) -> list:
    return [int(n) for n in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", text, re.M)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = synthetic.write_archive(tmp_path_factory.mktemp("raw"), 48, 16, seed=5)
    return root, damage(root)


@pytest.fixture(scope="module")
def all_broken_test_split(tmp_path_factory):
    root = synthetic.write_archive(tmp_path_factory.mktemp("raw_empty"), 8, 2, seed=1)
    for line in (root / "annotations" / "test.txt").read_text().splitlines():
        (root / "annotations" / "trimaps" / f"{line.split()[0]}.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def runs(raw, all_broken_test_split, tmp_path_factory):
    """All runs of this module, overlapped: the two that fail early run while the first one trains."""
    root, _ = raw
    base = tmp_path_factory.mktemp("runs")
    output = base / "damaged"
    killed = petseg(output, root)
    strict = petseg(base / "strict", root, "--strict")
    empty = petseg(base / "empty", all_broken_test_split)
    try:
        wait_for_path(output, BACKUP, killed, timeout=TIMEOUT)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}; its console:\n{console(killed)[-5000:]}") from None
    os.killpg(killed.pid, signal.SIGKILL)  # as a node losing the pod: no cleanup runs
    killed_console = finish(killed)
    resumed = petseg(output, root)
    resumed_console = finish(resumed)
    assert resumed.returncode == 0, resumed_console[-5000:]
    return {
        "output": output,
        "killed": killed_console,
        "resumed": resumed_console,
        "summary": json.loads((output / "summary.json").read_text()),
        "strict": (finish(strict), strict.returncode),
        "empty": (finish(empty), empty.returncode),
    }


def test_broken_pairs_are_skipped_counted_and_logged_by_file(runs, raw):
    root, cases = raw
    dataset = runs["summary"]["dataset"]
    assert dataset["source"] == "raw-dir"
    assert dataset["skipped"] == EXPECTED_SKIPPED
    assert dataset["examples"] == {"train": 48 - len(BROKEN), "eval": 16}
    logs = "".join(p.read_text() for p in (runs["output"] / "logs").glob("*.log"))
    for case, reason in BROKEN.items():
        folder = "images" if reason.endswith("image") else "annotations/trimaps"
        suffix = ".jpg" if folder == "images" else ".png"
        assert re.search(rf"Skipping {re.escape(str(root / folder / cases[case]))}{suffix}: {reason}", logs), case
    assert "trainval.txt: malformed_line: line 49" in logs and "trainval.txt: duplicate_name: line 50" in logs


def test_odd_but_valid_images_are_kept_and_decode(runs, raw):
    _, cases = raw
    config = load_config("tiny", overrides=[f"output={runs['output']}"])
    with RunArtifacts(config.metadata_path) as run:
        examples = run.get(names.EXAMPLE_GEN_ID, "examples")
    assert json.loads(examples.get_string_custom_property("repaired")) == {
        "image_tiff_to_jpeg": 1,
        "trimap_to_8bit_png": 1,
    }
    stored = {}
    for record in tf.data.TFRecordDataset(glob.glob(examples.uri + "/Split-train/*")):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        stored[feature["file_name"].bytes_list.value[0].decode()[:-4]] = feature
    for case in ODD_VALID:
        feature = stored[cases[case]]
        image = preprocessing.decode_image(feature["image"].bytes_list.value[0], 64)
        mask = preprocessing.decode_mask(feature["segmentation_mask"].bytes_list.value[0], 64)
        assert image.shape == (64, 64, 3) and set(mask.numpy().ravel().tolist()) <= {0, 1, 2}, case


def test_strict_run_fails_naming_the_file(runs, raw):
    root, cases = raw
    text, code = runs["strict"]
    assert code == 1, text[-3000:]
    assert re.search(
        rf"petseg: TfdsExampleGen failed: broken sample \(strict=True\): "
        rf"{re.escape(str(root))}/images/{cases['truncated']}\.jpg: unreadable_image",
        text,
    ), text[-3000:]


def test_split_left_empty_fails_saying_why(runs):
    text, code = runs["empty"]
    assert code == 1, text[-3000:]
    assert re.search(
        r"TfdsExampleGen failed: split 'test' is empty: none of the 2 lines .*test\.txt names a usable "
        r"sample \(skipped so far: \{'unreadable_trimap': 2\}\)",
        text,
    ), text[-3000:]


def test_killed_trainer_resumes_from_cache_and_its_last_epoch(runs):
    assert epochs_started(runs["killed"])[:1] == [1]
    # BackupAndRestore restores the epoch it backed up at; the rerun never starts over at epoch 1.
    resumed_epochs = epochs_started(runs["resumed"])
    assert resumed_epochs and resumed_epochs[0] > 1 and resumed_epochs[-1] == EPOCHS, resumed_epochs
    components = runs["summary"]["components"]
    assert all(components[name]["cached"] for name in UPSTREAM), components
    assert not components[names.TRAINER_ID]["cached"]
    summary = runs["summary"]
    assert summary["blessed"] and summary["serving_versions"] == [pathlib.Path(summary["pushed_model"]).name]
    # Keras deletes the backup once training completes, so a later, different training starts fresh.
    assert not first_backup(runs["output"])


def test_run_logs_hold_no_credentials(runs):
    texts = {str(p): p.read_text(errors="replace") for p in (runs["output"] / "logs").glob("*.log")}
    texts.update(killed=runs["killed"], resumed=runs["resumed"])
    assert {name: find_credentials(text) for name, text in texts.items() if find_credentials(text)} == {}

"""Real `petseg run` processes on tiny synthetic data: blessed and pushed, a worse model refused, reruns cached."""

import pathlib

import pytest
from ml_metadata.proto import metadata_store_pb2

from report.artifacts import RunArtifacts

from support import petseg

pytestmark = pytest.mark.slow  # whole pipeline runs

ALL_COMPONENTS = [
    "TfdsExampleGen",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "ValidationGate",
    "LatestBlessedModel",
    "DistributionValidator",
    "DriftGate",
    "Transform",
    "Trainer",
    "Evaluator",
    "Pusher",
]
# Enough training that the tiny model clearly beats an untrained one.
TINY = ["--profile", "tiny", "--set", "train.epochs=6"]


def petseg_run(output: pathlib.Path, *args: str) -> dict:
    # A temp dir of its own, so a test can see what the run leaves behind there.
    temp = output.parent / (output.name + ".tmp")
    temp.mkdir(exist_ok=True)
    return petseg.run(output, *TINY, *args, env={"TMPDIR": str(temp)})


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    return output, petseg_run(output)


def test_first_run_is_blessed_pushed_and_summarised(first_run):
    output, summary = first_run
    assert summary["profile"] == "tiny"
    dataset = summary["dataset"]
    assert (dataset["name"], dataset["version"], dataset["source"]) == ("oxford_iiit_pet", "4.0.0", "synthetic")
    assert dataset["examples"] == {"train": 48, "eval": 16}
    assert pathlib.Path(dataset["data_dir"]).is_absolute()
    assert summary["blessed"] is True and summary["baseline"] is None
    pushed = pathlib.Path(summary["pushed_model"])
    assert pushed.parent == (output / "serving").resolve() and (pushed / "saved_model.pb").exists()
    assert summary["drift"]["verdict"] == "no_baseline" and summary["stopped"] is None

    overall = summary["metrics"]["overall"]
    for key in ("mean_iou", "mean_dice", "pixel_accuracy"):
        assert 0 <= overall[key] <= 1
    assert set(overall["iou"]) == set(overall["dice"]) == {"pet", "background", "border"}
    slices = summary["metrics"]["slices"]
    assert {"species:cat", "species:dog"} <= set(slices)
    assert any(name.startswith("label:") for name in slices)

    assert set(summary["components"]) == set(ALL_COMPONENTS)
    assert not any(c["cached"] for c in summary["components"].values())
    pngs = list((output / "report").glob("*.png"))
    assert len(pngs) == 2

    with RunArtifacts(str(output / "metadata.sqlite")) as run:
        assert sorted(run.node_ids()) == sorted(ALL_COMPONENTS)
        for node in ALL_COMPONENTS:
            assert [e.last_known_state for e in run.executions(node)] == [metadata_store_pb2.Execution.COMPLETE], node


def test_run_leaves_no_tfx_sdist_in_the_temp_dir(first_run):
    # TFX copies and packages its own install (42 MB) for each Beam component when beam args are set
    # without a dependency flag; the local runner passes none, so nothing may be built.
    output, _ = first_run
    temp = output.parent / (output.name + ".tmp")
    assert not list(temp.glob("*/build/tfx")), sorted(p.name for p in temp.iterdir())


def test_worse_model_is_not_blessed_or_pushed(first_run):
    output, first = first_run
    # Zero epochs: the candidate is the untrained network; no regression is tolerated.
    summary = petseg_run(output, "--set", "train.epochs=0", "--set", "eval.max_regression=0.0")
    assert summary["blessed"] is False
    assert summary["pushed_model"] is None
    assert summary["baseline"]["mean_iou"] == pytest.approx(first["metrics"]["overall"]["mean_iou"], abs=1e-6)
    assert summary["metrics"]["overall"]["mean_iou"] < first["metrics"]["overall"]["mean_iou"]
    assert summary["serving_versions"] == [pathlib.Path(first["pushed_model"]).name]


def test_unchanged_rerun_is_served_from_cache(first_run):
    output, first = first_run
    summary = petseg_run(output)
    cached = {name: c["cached"] for name, c in summary["components"].items()}
    # The serving dir now holds the first run's model (it held none when the first run started), so
    # the baseline is that version (LatestBlessedModel may come from the cache of an earlier run that
    # pinned the same one) and the Evaluator and Pusher, whose baseline changed, rerun...
    rerun = {"LatestBlessedModel", "DistributionValidator", "DriftGate", "Evaluator", "Pusher"}
    assert all(cached[name] for name in ALL_COMPONENTS if name not in rerun), cached
    assert not cached["Evaluator"] and not cached["Pusher"], cached
    # Its data is compared with the data the served model was trained on: the same span, no drift.
    assert summary["drift"]["verdict"] == "passed" and summary["drift"]["baseline_version"] == int(
        pathlib.Path(first["pushed_model"]).name
    )
    # ...and the Pusher, handed the model it already serves, publishes no second copy of it.
    assert summary["serving_versions"] == [pathlib.Path(first["pushed_model"]).name]

    # Once more: now nothing at all runs, and the report PNGs (same model, same examples) are kept.
    mtimes = {p: pathlib.Path(p).stat().st_mtime_ns for p in summary["report_images"]}
    again = petseg_run(output)
    assert all(c["cached"] for c in again["components"].values()), again["components"]
    assert again["report_images"] == summary["report_images"]
    assert {p: pathlib.Path(p).stat().st_mtime_ns for p in again["report_images"]} == mtimes

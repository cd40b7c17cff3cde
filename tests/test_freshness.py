"""pipeline.freshness: the newest span and served model are pinned when a run starts, else read uncached when run."""

from config import names
from config.profiles import load_config
from pipeline import freshness


def _served(base, version):
    (base / str(version)).mkdir(parents=True)
    (base / str(version) / "saved_model.pb").write_bytes(b"graph")


def test_the_local_runner_pins_what_it_sees_when_the_run_starts(tmp_path):
    for span in (1, 3):
        (tmp_path / "raw" / f"span-{span}").mkdir(parents=True)
    _served(tmp_path / "serving", 1700000000)
    _served(tmp_path / "serving", 1700000500)
    (tmp_path / "serving" / "1800000000").mkdir()  # no saved_model.pb: a version TF Serving would not load
    config = load_config(
        "tiny", overrides=["data.dataset=oxford_iiit_pet", f"data.oxford_raw_dir={tmp_path}/raw/span-{{SPAN}}"]
    )
    assert freshness.resolved_when_run(config) == [names.EXAMPLE_GEN_ID, names.LATEST_BLESSED_MODEL_ID]
    pinned = freshness.pin(config, str(tmp_path / "serving"))
    assert (pinned.data.span, pinned.eval.baseline_version) == (3, 1700000500)
    assert freshness.resolved_when_run(pinned) == []
    assert config.data.span is None and config.eval.baseline_version is None  # the caller's config is untouched


def test_nothing_served_and_no_span_folder_stay_unpinned(tmp_path):
    config = load_config(
        "tiny", overrides=["data.dataset=oxford_iiit_pet", f"data.oxford_raw_dir={tmp_path}/span-{{SPAN}}"]
    )
    pinned = freshness.pin(config, str(tmp_path / "serving"))
    assert (pinned.data.span, pinned.eval.baseline_version) == (None, None)


def test_a_user_pinned_span_and_baseline_are_kept(tmp_path):
    (tmp_path / "span-7").mkdir()
    _served(tmp_path / "serving", 1700000500)
    config = load_config(
        "tiny",
        overrides=[
            "data.dataset=oxford_iiit_pet",
            f"data.oxford_raw_dir={tmp_path}/span-{{SPAN}}",
            "data.span=2",
            "eval.baseline_version=1600000000",
        ],
    )
    assert freshness.resolved_when_run(config) == []
    pinned = freshness.pin(config, str(tmp_path / "serving"))
    assert (pinned.data.span, pinned.eval.baseline_version) == (2, 1600000000)

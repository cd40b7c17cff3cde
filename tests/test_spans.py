"""Retraining on new data: `{SPAN}` patterns; run 2 reads span 2, warm-starts from and is compared with run 1's pushed model."""

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from components import synthetic_pets, tfds_data
from pipeline.config import ConfigError, load_config
from support import petseg


def test_find_and_resolve_spans(tmp_path):
    for name in ("span-1", "span-12", "span-x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "span-3").write_text("a file, not a span")
    pattern = str(tmp_path / "span-{SPAN}")
    assert tfds_data.find_spans(pattern) == {1: str(tmp_path / "span-1"), 12: str(tmp_path / "span-12")}
    assert tfds_data.resolve_span(pattern) == (12, str(tmp_path / "span-12"))
    assert tfds_data.resolve_span(pattern, 1) == (1, str(tmp_path / "span-1"))
    with pytest.raises(FileNotFoundError, match=r"span 2 .* found \[1, 12\]"):
        tfds_data.resolve_span(pattern, 2)
    (tmp_path / "span-01").mkdir()
    with pytest.raises(ValueError, match="matches both"):
        tfds_data.find_spans(pattern)
    with pytest.raises(FileNotFoundError, match="no folder matches"):
        tfds_data.resolve_span(str(tmp_path / "missing" / "span-{SPAN}"))
    with pytest.raises(ValueError, match="last path component"):
        tfds_data.find_spans(str(tmp_path / "span-{SPAN}" / "raw"))


def test_span_setting_needs_a_span_pattern():
    with pytest.raises(ConfigError, match="data.span"):
        load_config("tiny", None, ["data.span=2"])
    with pytest.raises(ConfigError, match="data.span"):
        load_config("tiny", None, ["data.dataset=oxford_iiit_pet", "data.oxford_raw_dir=/d/span-{SPAN}",
                                   "data.span=-1"])
    config = load_config("tiny", None, ["data.dataset=oxford_iiit_pet", "data.oxford_raw_dir=/d/span-{SPAN}",
                                        "data.span=2"])
    assert config.data.span == 2


# ---------------------------------------------------------------- two runs, two spans


def petseg_run(output, raw_pattern):
    return petseg.run(output, "--profile", "tiny", "--oxford-raw-dir", raw_pattern,
                      "--set", "train.warm_start=true", "--set", "eval.report_images=0")


class Store:
    def __init__(self, output):
        self.store = metadata_store.MetadataStore(
            metadata.sqlite_metadata_connection_config(str(output / "metadata.sqlite")))

    def executions(self, node):
        context = self.store.get_context_by_type_and_name("node", f"petseg.{node}")
        return sorted(self.store.get_executions_by_context(context.id), key=lambda e: e.id)

    def artifacts(self, execution, key, kind):
        ids = [e.artifact_id for e in self.store.get_events_by_execution_ids([execution.id])
               if e.type == kind and e.path.steps[0].key == key]
        return self.store.get_artifacts_by_id(ids)


@pytest.fixture(scope="module")
def two_spans(tmp_path_factory):
    raw, output = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("run")
    pattern = str(raw / "span-{SPAN}")
    synthetic_pets.write_archive(raw / "span-1", 48, 16, seed=1)
    first = petseg_run(output, pattern)
    # New data arrives; the same command (e.g. from cron) picks it up.
    synthetic_pets.write_archive(raw / "span-2", 48, 16, seed=2)
    second = petseg_run(output, pattern)
    return raw, output, first, second


def test_each_run_reads_the_latest_span(two_spans):
    raw, output, first, second = two_spans
    store = Store(output)
    runs = store.executions("TfdsExampleGen")
    assert len(runs) == 2  # the second was not served from cache
    for execution, span in zip(runs, (1, 2)):
        [examples] = store.artifacts(execution, "examples", metadata_store_pb2.Event.OUTPUT)
        props = examples.custom_properties
        assert props["span"].int_value == span
        assert props["raw_dir"].string_value == str(raw / f"span-{span}")
        assert props["tfds_data_dir"].string_value.endswith(f"span-{span}")
    assert second["dataset"]["data_dir"].endswith("span-2")


def test_second_run_warm_starts_from_and_is_compared_with_the_first_blessed_model(two_spans):
    _, output, first, second = two_spans
    store = Store(output)
    trainer_runs = store.executions("Trainer")
    assert len(trainer_runs) == 2
    assert first["blessed"] is True and first["baseline"] is None
    [empty] = store.artifacts(trainer_runs[0], "base_model", metadata_store_pb2.Event.INPUT)
    assert empty.custom_properties["found"].int_value == 0  # nothing served yet: trained from scratch
    [base_model] = store.artifacts(trainer_runs[1], "base_model", metadata_store_pb2.Event.INPUT)
    # The first run's pushed version, copied: the model the Trainer starts from and the Evaluator beats.
    assert base_model.custom_properties["found"].int_value == 1
    assert base_model.custom_properties["pushed_destination"].string_value == first["pushed_model"]
    [baseline] = store.artifacts(store.executions("Evaluator")[1], "baseline_model", metadata_store_pb2.Event.INPUT)
    assert baseline.id == base_model.id
    # Scored on span 2's eval data, so not run 1's own number (which was on span 1).
    assert 0 <= second["baseline"]["mean_iou"] <= 1
    logs = "\n".join(p.read_text() for p in (output / "logs").glob("*.log"))
    assert f"Warm-started from {base_model.uri}/Format-Serving" in logs

"""The `beam` config section: what each runner needs, clear errors, and the Beam args it becomes."""

import pytest

from engine.beam_args import beam_pipeline_args
from config.settings import ConfigError
from config.profiles import load_config
from pipeline.pipeline import local_beam_args


def args_for(*overrides):
    return beam_pipeline_args(load_config("tiny", overrides=overrides).beam)


def test_one_in_process_direct_worker_passes_no_beam_args():
    # Any beam arg makes TFX build an sdist of itself per Beam component.
    assert args_for() == [] == local_beam_args(load_config("quick"))


def test_direct_workers_and_extra_args():
    assert args_for("beam.direct_workers=3", "beam.args=--max_num_records=5") == [
        "--direct_running_mode=multi_processing", "--direct_num_workers=3", "--max_num_records=5"]


def test_flink_on_the_local_cluster_by_default():
    args = args_for("beam.runner=flink")
    assert args[:3] == ["--runner=PortableRunner", "--job_endpoint=127.0.0.1:8099", "--environment_type=EXTERNAL"]
    assert "--environment_config=127.0.0.1:50000" in args and "--parallelism=2" in args
    # Tells TFX the workers hold the code: no sdist of TFX is built and staged per component.
    assert any(a.startswith("--sdk_container_image=") for a in args)


def test_loopback_and_process_environments():
    loopback = args_for("beam.runner=flink", "beam.environment=LOOPBACK")
    assert "--environment_type=LOOPBACK" in loopback
    assert not any(a.startswith("--environment_config") for a in loopback)
    process = args_for("beam.runner=spark", "beam.environment=PROCESS",
                       'beam.environment_config={"command": "/opt/apache/beam/boot"}')
    assert '--environment_config={"command": "/opt/apache/beam/boot"}' in process
    assert not any(a.startswith("--parallelism") for a in process)


def test_dataflow_args_pass_through_after_the_runner():
    extra = ["--project=p", "--region=r", "--temp_location=gs://b/tmp"]
    assert args_for("beam.runner=dataflow", "beam.args=" + ",".join(extra)) == ["--runner=DataflowRunner", *extra]


@pytest.mark.parametrize("overrides, key", [
    (["beam.runner=samza"], "beam.runner"),
    (["beam.direct_workers=0"], "beam.direct_workers"),
    (["beam.runner=flink", "beam.direct_workers=2"], "beam.direct_workers"),
    (["beam.runner=flink", "beam.environment=DOCKER"], "beam.environment"),
    (["beam.runner=flink", "beam.environment_config=nohost"], "beam.environment_config"),
    (["beam.runner=spark", "beam.environment=PROCESS", "beam.environment_config=127.0.0.1:5"],
     "beam.environment_config"),
    (["beam.runner=flink", "beam.job_endpoint=8099"], "beam.job_endpoint"),
    (["beam.runner=flink", "beam.parallelism=0"], "beam.parallelism"),
    (["beam.runner=flink", "beam.flink_master=localhost"], "beam.flink_master"),
    (["beam.runner=dataflow", "beam.args=--project=p"], "beam.args"),
    (["beam.args=--runner=FlinkRunner"], "beam.args"),
    (["beam_workers=2"], "beam_workers"),
    (["beam_args=--x=1"], "beam_args"),
])
def test_a_bad_combination_is_an_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        load_config("tiny", overrides=overrides)
    assert str(error.value).startswith(f"{key}:"), error.value


def test_renamed_keys_say_where_they_went():
    with pytest.raises(ConfigError, match="renamed to beam.direct_workers"):
        load_config("tiny", overrides=["beam_workers=2"])

"""The `beam` config section: what each runner needs, clear errors, and the options Beam itself reads from it."""

import json

import pytest
from apache_beam.options import pipeline_options as beam_options

from config.settings import BeamConfig, ConfigError
from config.profiles import load_config
from engine.beam_args import beam_pipeline_args
from pipeline.pipeline import create_pipeline
from support.beam_options import parse


def options_for(*overrides):
    return parse(beam_pipeline_args(load_config("tiny", overrides=overrides).beam))


def test_one_in_process_direct_worker_gives_the_pipeline_no_beam_args(tmp_path):
    # Any beam arg makes TFX build an sdist of itself per Beam component.
    config = load_config("tiny", overrides=[f"output={tmp_path}"])
    assert create_pipeline(config).beam_pipeline_args == []


def test_direct_workers_are_beams_multiprocessing_mode():
    options = options_for("beam.direct_workers=3")
    direct = options.view_as(beam_options.DirectOptions)
    assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 3)
    assert options.view_as(beam_options.StandardOptions).runner is None  # Beam's default: DirectRunner


def test_flink_reaches_the_job_server_and_worker_pool_of_the_config():
    beam = BeamConfig(
        runner="flink",
        job_endpoint="jobs.example:18099",
        environment_config="pool.example:15000",
        parallelism=3,
        sdk_image="registry.example/petseg:1",
        environment_cache_millis=1234,
    )
    options = parse(beam_pipeline_args(beam))
    portable = options.view_as(beam_options.PortableOptions)
    assert options.view_as(beam_options.StandardOptions).runner == "PortableRunner"
    assert (portable.job_endpoint, portable.environment_type, portable.environment_config) == (
        "jobs.example:18099",
        "EXTERNAL",
        "pool.example:15000",
    )
    assert int(portable.environment_cache_millis) == 1234
    assert options.view_as(beam_options.FlinkRunnerOptions).parallelism == 3
    # Tells TFX the workers hold the code: no sdist of TFX is built and staged per component.
    assert options.view_as(beam_options.WorkerOptions).sdk_container_image == "registry.example/petseg:1"
    # Beam would otherwise run `pip freeze` in the submitting venv, which uv leaves without pip.
    assert "disable_logging_submission_environment" in options.view_as(beam_options.DebugOptions).experiments


def test_loopback_and_process_environments():
    loopback = options_for("beam.runner=flink", "beam.environment=LOOPBACK").view_as(beam_options.PortableOptions)
    assert (loopback.environment_type, loopback.environment_config) == ("LOOPBACK", None)
    process = options_for(
        "beam.runner=spark", "beam.environment=PROCESS", 'beam.environment_config={"command": "/opt/apache/beam/boot"}'
    )
    portable = process.view_as(beam_options.PortableOptions)
    assert portable.environment_type == "PROCESS"
    assert json.loads(portable.environment_config) == {"command": "/opt/apache/beam/boot"}
    # Parallelism is Flink's; Spark's job server is left its own default.
    assert (
        process.view_as(beam_options.FlinkRunnerOptions).parallelism == beam_options.FlinkRunnerOptions([]).parallelism
    )


def test_the_users_extra_args_come_last_and_win():
    options = options_for(
        "beam.runner=flink",
        "beam.parallelism=4",
        "beam.args=--parallelism=6,--environment_cache_millis=0,--max_parallelism=8",
    )
    assert options.view_as(beam_options.FlinkRunnerOptions).parallelism == 6
    assert options.view_as(beam_options.FlinkRunnerOptions).max_parallelism == 8
    assert int(options.view_as(beam_options.PortableOptions).environment_cache_millis) == 0
    direct = options_for("beam.direct_workers=2", "beam.args=--direct_num_workers=5")
    assert direct.view_as(beam_options.DirectOptions).direct_num_workers == 5


def test_dataflow_gets_its_runner_and_the_users_cloud_options():
    extra = ["--project=p", "--region=r", "--temp_location=gs://b/tmp"]
    options = options_for("beam.runner=dataflow", "beam.args=" + ",".join(extra))
    assert options.view_as(beam_options.StandardOptions).runner == "DataflowRunner"
    cloud = options.view_as(beam_options.GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == ("p", "r", "gs://b/tmp")


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["beam.runner=samza"], "beam.runner"),
        (["beam.direct_workers=0"], "beam.direct_workers"),
        (["beam.runner=flink", "beam.direct_workers=2"], "beam.direct_workers"),
        (["beam.runner=flink", "beam.environment=DOCKER"], "beam.environment"),
        (["beam.runner=flink", "beam.environment_config=nohost"], "beam.environment_config"),
        (
            ["beam.runner=spark", "beam.environment=PROCESS", "beam.environment_config=127.0.0.1:5"],
            "beam.environment_config",
        ),
        (["beam.runner=flink", "beam.job_endpoint=8099"], "beam.job_endpoint"),
        (["beam.runner=flink", "beam.parallelism=0"], "beam.parallelism"),
        (["beam.runner=flink", "beam.flink_master=localhost"], "beam.flink_master"),
        (["beam.runner=dataflow", "beam.args=--project=p"], "beam.args"),
        (["beam.args=--runner=FlinkRunner"], "beam.args"),
    ],
)
def test_a_bad_combination_is_an_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        load_config("tiny", overrides=overrides)
    assert str(error.value).startswith(f"{key}:"), error.value

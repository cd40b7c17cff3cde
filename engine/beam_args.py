"""The `beam` config section as Beam pipeline args, for `petseg run` and `petseg kubeflow compile` alike."""

from __future__ import annotations

from typing import List

from config.settings import BeamConfig


def beam_pipeline_args(beam: BeamConfig) -> List[str]:
    """Beam args for the chosen runner, then the user's extra args (which win).

    One in-process DirectRunner worker is Beam's default and needs no args. Passing none matters:
    given any beam args without a dependency flag, TFX copies its whole install and builds an sdist
    of it for every Beam component (~2 s, and 42 MB left behind in the temp dir each time), which
    in-process workers never read. The portable runners get `--sdk_container_image` for the same
    reason: their SDK workers already hold the code.
    """
    if beam.runner == "direct":
        if beam.direct_workers > 1:
            args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={beam.direct_workers}"]
        else:
            args = []
    elif beam.runner in ("flink", "spark"):
        args = [
            "--runner=PortableRunner",
            f"--job_endpoint={beam.job_endpoint}",
            f"--environment_type={beam.environment}",
            f"--environment_cache_millis={beam.environment_cache_millis}",
            f"--sdk_container_image={beam.sdk_image}",
            # Beam otherwise stages `pip freeze` of the submitter, which a uv venv (no pip) cannot run.
            "--experiments=disable_logging_submission_environment",
        ]
        if beam.environment != "LOOPBACK":
            args.append(f"--environment_config={beam.environment_config}")
        if beam.runner == "flink":
            args.append(f"--parallelism={beam.parallelism}")
    else:
        args = ["--runner=DataflowRunner"]
    return args + list(beam.args)

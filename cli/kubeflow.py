"""`petseg kubeflow compile|submit|schedule`: the same pipeline on open-source Kubeflow Pipelines 2.x or Vertex."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from typing import List

from cli import console
from cli.config_args import add_config_args, config_from_args
from config.settings import DATASETS
from kubeflow import runner, vertex
from kubeflow.resources import KUBERNETES_GPU, Resources, ResourcesError

# Beam's runner class names as `--beam-arg=--runner=...` gives them, to beam.runner values.
BEAM_RUNNER_NAMES = {
    "DirectRunner": "direct",
    "FlinkRunner": "flink",
    "SparkRunner": "spark",
    "DataflowRunner": "dataflow",
}


def add_parser(subparsers) -> None:
    """Adds `kubeflow` with its subcommands to the `petseg` parser."""
    kubeflow = subparsers.add_parser(
        "kubeflow",
        help="compile, submit or schedule on Kubeflow Pipelines; tfjob-manifest: the Trainer's TFJob for review",
    )
    commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)

    compile_ = commands.add_parser(
        "compile", help="write the pipeline as a PipelineSpec (.yaml) or a Vertex PipelineJob (.json)"
    )
    compile_.add_argument(
        "--output-file",
        dest="package_output",
        metavar="FILE",
        required=True,
        help="pipeline.yaml (PipelineSpec: open-source KFP or Vertex) or pipeline.json (Vertex PipelineJob)",
    )
    submit = commands.add_parser("submit", help="start one run on a KFP API server")
    schedule = commands.add_parser("schedule", help="create a recurring run (retraining) on a KFP API server")
    for parser in (compile_, submit, schedule):
        # Recorded once: submit and schedule refuse them beside --package, which is compiled already.
        compile_flags = add_config_args(parser) + _add_compile_args(parser)
    for parser in (submit, schedule):
        parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
        parser.add_argument(
            "--package", metavar="FILE", help="an already compiled pipeline.yaml (default: compile from the options)"
        )
        parser.add_argument("--experiment", default="petseg", help="KFP experiment (default: petseg)")
        parser.add_argument("--namespace", help="KFP namespace in multi-user deployments")
        parser.add_argument(
            "--token-env",
            metavar="VAR",
            help="read a bearer token from this environment variable (never from the command line)",
        )
    for parser in (submit, schedule):
        parser.set_defaults(compile_flags=[a for a in compile_flags if a.dest != "pipeline_root"])
    submit.add_argument("--run-name", help="display name of the run")
    schedule.add_argument("--cron", required=True, help="6 fields, seconds first, e.g. '0 0 3 * * 0' (Sundays 03:00)")
    schedule.add_argument("--job-name", default="petseg-retrain", help="name of the recurring run")
    schedule.add_argument(
        "--max-concurrency",
        type=int,
        default=1,
        help="runs at once (default 1: each retraining sees the previous blessing)",
    )
    compile_.set_defaults(func=_compile)
    submit.set_defaults(func=_submit)
    schedule.set_defaults(func=_schedule)
    add_tfjob_manifest_parser(commands)


def _add_compile_args(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    """The flags that shape the compiled pipeline; returns their argparse actions."""
    add = parser.add_argument
    return [
        add(
            "--target",
            choices=runner.TARGETS,
            default="kfp",
            help="kfp: open-source Kubeflow Pipelines 2.x (default); vertex: Vertex AI Pipelines",
        ),
        add(
            "--image",
            default=runner.DEFAULT_IMAGE,
            help=f"image built from kubeflow/Dockerfile (default: {runner.DEFAULT_IMAGE})",
        ),
        add(
            "--pipeline-root",
            metavar="URI",
            help="artifact root, e.g. gs://bucket/petseg or minio://mlpipeline/petseg (optional for kfp: the "
            "cluster's defaultPipelineRoot applies; required gs:// for vertex; submit and schedule pass it as "
            "the run's root)",
        ),
        add(
            "--serving-dir",
            help="push destination, read back as the next run's baseline: gs:// or a volume mounted "
            "into every task (default: <pipeline-root>/serving)",
        ),
        add(
            "--data-dir",
            dest="container_data_dir",
            default=runner.DEFAULT_DATA_DIR,
            help=f"TFDS data dir inside the task container (default: scratch {runner.DEFAULT_DATA_DIR}; a mounted "
            "volume keeps downloads)",
        ),
        add("--app-dir", default=runner.APP_DIR, help=f"where the image holds the project (default: {runner.APP_DIR})"),
        add(
            "--dataset",
            choices=DATASETS,
            help="embedded synthetic pets (default) or the real Oxford-IIIT Pet (downloaded by the task, or built "
            "from --oxford-raw-dir)",
        ),
        add(
            "--oxford-raw-dir",
            metavar="DIR",
            help="extracted archives as seen inside the container; may hold {SPAN}, e.g. /mnt/pets/span-{SPAN} (the "
            "latest span is read each run)",
        ),
        *_add_resource_flags(parser, "the Trainer (each replica with train.workers > 1)"),
        add("--project", help="vertex with train.workers > 1: the Google Cloud project of the Trainer's CustomJob"),
        add(
            "--region",
            help="vertex with train.workers > 1: the Vertex AI region of the Trainer's CustomJob, e.g. us-central1",
        ),
        add(
            "--machine-type",
            help="vertex with train.workers > 1: each replica's machine, e.g. n1-standard-8 "
            "(default: the smallest N1 machine with --cpu/--memory, else "
            f"{vertex.DEFAULT_MACHINE_TYPE})",
        ),
        add(
            "--beam-arg",
            action="append",
            default=[],
            metavar="ARG",
            help="extra Beam arg for every task (appended to beam.args), e.g. --beam-arg=--project=P; "
            "--beam-arg=--runner=DataflowRunner sets beam.runner (repeatable)",
        ),
    ]


def _add_resource_flags(parser: argparse.ArgumentParser, whose: str) -> List[argparse.Action]:
    """--cpu, --memory, --gpus, --gpu-type: the same flags for compile and tfjob-manifest."""
    add = parser.add_argument
    return [
        add("--gpus", type=int, default=0, help=f"GPUs of {whose} (default 0)"),
        add(
            "--gpu-type",
            help=f"the GPUs' type (default {KUBERNETES_GPU} on Kubernetes; Vertex needs its own name, "
            "e.g. NVIDIA_TESLA_T4)",
        ),
        add("--cpu", type=float, help=f"vCPU limit of {whose}"),
        add("--memory", type=float, metavar="GB", help=f"memory limit of {whose} in GB"),
    ]


def _resources(args: argparse.Namespace) -> Resources:
    return Resources(cpu=args.cpu, memory_gb=args.memory, gpus=args.gpus, gpu_type=args.gpu_type)


def _settings(args: argparse.Namespace, config) -> runner.KubeflowSettings:
    settings = runner.KubeflowSettings(
        target=args.target,
        image=args.image,
        pipeline_root=args.pipeline_root,
        serving_dir=args.serving_dir,
        data_dir=args.container_data_dir,
        app_dir=args.app_dir,
        trainer=_resources(args),
        project=args.project,
        region=args.region,
        machine_type=args.machine_type,
    )
    try:
        return settings.validate(config)
    except runner.SettingsError as exc:
        raise SystemExit(f"petseg: {exc}") from None


def _config(args: argparse.Namespace):
    from config.profiles import apply_values
    from config.settings import ConfigError

    config = config_from_args(args)
    # `--beam-arg=--runner=X` (the documented Dataflow form) picks beam.runner; the rest pass through.
    runner_args = [a for a in args.beam_arg if a.startswith("--runner=")]
    values = {"beam.args": config.beam.args + [a for a in args.beam_arg if a not in runner_args]}
    if runner_args:
        runner_name = runner_args[-1].split("=", 1)[1]
        if runner_name not in BEAM_RUNNER_NAMES:
            raise ConfigError(
                f"--beam-arg={runner_args[-1]}: choose one of {sorted(BEAM_RUNNER_NAMES)} or set beam.runner"
            )
        values["beam.runner"] = BEAM_RUNNER_NAMES[runner_name]
    apply_values(config, values)
    return config.validate()


def _compile_to(args: argparse.Namespace, output: str) -> str:
    """Compiles to `output`: every flag checked first, then TFX's output sent to a log kept only on failure."""
    config = _config(args)
    settings = _settings(args, config)
    try:
        runner.check_output(output, settings)
    except runner.SettingsError as exc:
        raise SystemExit(f"petseg: {exc}") from None
    handle, log_file = tempfile.mkstemp(prefix="petseg-compile-", suffix=".log")
    os.close(handle)
    with console.quiet(pathlib.Path(log_file)) as stream:
        try:
            with console.full_log(pathlib.Path(log_file)):
                runner.compile_pipeline(config, settings, output)
        except Exception as exc:
            print(f"petseg: compiling failed: {exc}\nfull log: {log_file}", file=stream, flush=True)
            raise SystemExit(1) from None
    os.unlink(log_file)
    return output


def _compile(args: argparse.Namespace) -> int:
    print(f"petseg: wrote {_compile_to(args, args.package_output)}")
    return 0


def _with_package(args: argparse.Namespace, action) -> int:
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise SystemExit(f"petseg: environment variable {args.token_env} is empty")
    if args.package:
        given = [a.option_strings[0] for a in args.compile_flags if getattr(args, a.dest) != a.default]
        if given:
            raise SystemExit(
                f"petseg: {', '.join(given)}: {'shape' if len(given) > 1 else 'shapes'} the compiled "
                f"pipeline, and --package {args.package} is compiled already; compile again with them, "
                "or leave them out"
            )
        return action(args.package, token)
    with tempfile.TemporaryDirectory() as tmp:
        return action(_compile_to(args, os.path.join(tmp, "pipeline.yaml")), token)


def _submit(args: argparse.Namespace) -> int:
    from kubeflow import client

    def action(package: str, token) -> int:
        run_id = client.submit(
            package,
            args.host,
            experiment=args.experiment,
            run_name=args.run_name,
            pipeline_root=args.pipeline_root,
            namespace=args.namespace,
            token=token,
        )
        print(f"petseg: submitted run {run_id}")
        return 0

    return _with_package(args, action)


def _schedule(args: argparse.Namespace) -> int:
    from kubeflow import client

    try:
        client.check_cron(args.cron)
    except ValueError as exc:
        print(f"petseg: {exc}", file=sys.stderr)
        return 2

    def action(package: str, token) -> int:
        job_id = client.schedule(
            package,
            args.host,
            cron=args.cron,
            job_name=args.job_name,
            experiment=args.experiment,
            pipeline_root=args.pipeline_root,
            max_concurrency=args.max_concurrency,
            namespace=args.namespace,
            token=token,
        )
        print(f"petseg: scheduled recurring run {job_id} ({args.cron})")
        return 0

    return _with_package(args, action)


def add_tfjob_manifest_parser(commands) -> None:
    """`petseg kubeflow tfjob-manifest`: the TFJob the Trainer task submits with train.workers > 1, for review."""
    parser = commands.add_parser(
        "tfjob-manifest",
        help="write the TFJob the Trainer task submits with train.workers > 1, with placeholders "
        "for its run-time values (review, kubectl apply --dry-run=server)",
    )
    parser.add_argument("--output-file", dest="manifest_output", metavar="FILE", required=True, help="tfjob.yaml")
    parser.add_argument("--image", required=True, help="image built from kubeflow/Dockerfile")
    parser.add_argument("--workers", type=int, required=True, help="machines: 1 chief + N-1 workers (N >= 2)")
    _add_resource_flags(parser, "each replica")
    parser.add_argument("--namespace", default="kubeflow", help="where the pipeline's tasks run (default kubeflow)")
    parser.add_argument(
        "--service-account",
        default="pipeline-runner",
        help="the tasks' service account, which the task passes on to the replicas (default pipeline-runner)",
    )

    def handler(args: argparse.Namespace) -> int:
        import yaml

        from kubeflow import staging, tfjob

        try:
            job = tfjob.review_manifest(
                image=args.image,
                workers=args.workers,
                namespace=args.namespace,
                service_account=args.service_account,
                resources=_resources(args),
            )
        except tfjob.TFJobError as exc:  # names the argument: its flag is --<argument>
            raise SystemExit(f"petseg: --{exc}") from None
        except ResourcesError as exc:
            raise SystemExit(f"petseg: {exc}") from None
        header = (
            "# The TFJob the Trainer task submits (kubeflow/tfjob_executor.py), written by petseg kubeflow "
            "tfjob-manifest.\n# At run time the <...> values are filled in and the name (in its annotation too) is "
            f"{staging.NAME_PREFIX}<12 hex digits of the task's output URIs>;\n# the rest is as submitted.\n"
        )
        with open(args.manifest_output, "w") as stream:
            stream.write(header + yaml.safe_dump(job, sort_keys=False))
        print(f"petseg: wrote {args.manifest_output}")
        return 0

    parser.set_defaults(func=handler)

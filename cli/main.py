"""The `petseg` command line: run the pipeline locally, build a run's dashboard, drive Kubeflow."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import List, Optional

from cli import console, kubeflow as kubeflow_cli
from cli.config_args import add_config_args, config_from_args
from config import names
from config.profiles import load_config
from config.settings import DATASETS, ConfigError
from engine import flink
from engine.install import InstallError
from pipeline import gc_tuning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally (LocalDagRunner)")
    add_config_args(run)
    run.add_argument(
        "--output-dir",
        dest="output",
        metavar="DIR",
        help="folder for everything the run writes (default: runs/default)",
    )
    run.add_argument(
        "--dataset", choices=DATASETS, help="embedded synthetic pets (default) or the real Oxford-IIIT Pet"
    )
    run.add_argument(
        "--oxford-raw-dir",
        metavar="DIR",
        help="extracted Oxford-IIIT Pet archives (images/, annotations/), built offline",
    )
    run.add_argument("--data-dir", metavar="DIR", help="TFDS data dir (default: <output>/tfds)")
    run.add_argument(
        "--strict", action="store_true", help="fail on the first broken image/trimap instead of skipping it"
    )
    run.set_defaults(func=_run)

    report = sub.add_parser("report", help="write a run's self-contained HTML evaluation dashboard")
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="DIR", help="a `petseg run --output-dir` folder")
    source.add_argument(
        "--kubeflow-runs",
        metavar="URI",
        help="the folder of a Kubeflow pipeline's run folders (<pipeline root>/<pipeline name>; "
        "Vertex: <pipeline root>/<project number>): writes their history page (needs --output)",
    )
    report.add_argument(
        "--output-file", dest="output", metavar="FILE", help="where to write it (default: DIR/report/index.html)"
    )
    report.set_defaults(func=_report)

    settings = sub.add_parser(
        "config", help="list every setting --set and --config take: type, default, value, meaning"
    )
    add_config_args(settings)
    settings.set_defaults(func=_settings)

    _add_flink_parser(sub)
    kubeflow_cli.add_parser(sub)
    return parser


def _settings(args: argparse.Namespace) -> int:
    """Prints every setting with its default and its value under the chosen profile, file and --set."""
    from config import reference

    config = load_config(args.profile, args.config, args.overrides)
    rows = [("key", "type", "default", f"value ({config.profile})", "meaning")]
    rows += [
        (s.key, s.type, _scalar(s.default), _scalar(s.value) + (" *" if s.value != s.default else ""), s.meaning)
        for s in reference.settings(config)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    print(
        "\n* differs from the default. Set one with --set key=value or a YAML file (--config), e.g. "
        "--set train.epochs=5."
    )
    return 0


def _scalar(value) -> str:
    """A value as --set takes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(empty)"
    return str(value)


def _add_flink_parser(sub) -> None:
    parser = sub.add_parser("flink", help="start, report or stop a local Flink cluster (beam.runner=flink)")
    commands = parser.add_subparsers(dest="flink_command", required=True)
    defaults = flink.ClusterSpec()
    for name, helptext in (
        ("up", "start JobManager, TaskManagers, Beam's job server and an SDK worker pool"),
        ("status", "say what runs"),
        ("down", "stop every process `up` started"),
    ):
        command = commands.add_parser(name, help=helptext)
        command.add_argument("--dir", default="", help="state and logs (default: .tools/flink-cluster)")
        command.set_defaults(func=_flink, flink_command=name)
        if name != "up":
            continue
        for field in flink.PORT_FIELDS:
            command.add_argument(
                f"--{field.replace('_', '-')}",
                type=_port,
                default=getattr(defaults, field),
                dest=field,
                help=f"default {getattr(defaults, field)}",
            )
        command.add_argument(
            "--taskmanagers", type=int, default=defaults.taskmanagers, help=f"default {defaults.taskmanagers}"
        )


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port from 1 to 65535 (each process of the cluster "
            "listens on exactly the port it is given)"
        )
    return int(text)


def _flink(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(flink.ClusterSpec)}
    try:
        spec = flink.ClusterSpec(
            state_dir=args.dir, **{k: v for k, v in vars(args).items() if k in fields and k != "state_dir"}
        )
    except ValueError as exc:
        print(f"petseg: {exc}", file=sys.stderr)
        return 2
    if args.flink_command == "up" and spec.taskmanagers < 2:
        print("petseg: --taskmanagers must be >= 2 (parallelism 2 needs two slots)", file=sys.stderr)
        return 2
    try:
        if args.flink_command == "up":
            flink.up(spec)
        elif args.flink_command == "down":
            flink.down(spec)
        else:
            _print_status(flink.status(spec))
    except (flink.ClusterError, InstallError) as exc:
        print(f"petseg: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(report) -> None:
    if not report["processes"]:
        print(f"[petseg] no Flink cluster is running ({report['state_dir']})")
        return
    print(f"[petseg] Flink cluster {'running' if report['running'] else 'DEGRADED'} ({report['state_dir']})")
    for proc in report["processes"]:
        print(f"  {proc['name']:<16} pid {proc['pid']:<8} {'alive' if proc['alive'] else 'DEAD'}   {proc['log']}")
    if "overview" in report:
        o = report["overview"]
        print(
            f"  REST {report['rest']}: Flink {o['flink-version']}, {o['taskmanagers']} TaskManagers, "
            f"{o['slots-available']}/{o['slots-total']} slots free, jobs running {o['jobs-running']}, "
            f"finished {o['jobs-finished']}, failed {o['jobs-failed']}"
        )
    else:
        print(f"  REST {report['rest']}: {report.get('rest_error')}")
    print(
        f"  job server {report['job_endpoint']}: {'listening' if report['job_server_listening'] else 'DOWN'}; "
        f"SDK worker pool {report['worker_pool']}: {'listening' if report['worker_pool_listening'] else 'DOWN'}"
    )


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    log_file = console.new_log_file(config.output_dir / "logs")
    # TensorFlow's C++ start-up lines come with the import, so the console is quiet before it.
    with console.quiet(log_file) as stream:
        # Said before the imports, which take seconds.
        print(
            f"[petseg] profile {config.profile}; outputs under {config.output_dir}; full log {log_file}",
            file=stream,
            flush=True,
        )
        with gc_tuning.heavy_imports():  # heavy imports only once the arguments are known good
            from pipeline import local_runner
            from pipeline.progress import ProgressTracker
            from report import dashboard, summary

        try:
            with console.full_log(log_file):
                local_runner.run(config, ProgressTracker(stream))
                summary.finish_run(config, stream)
                path = dashboard.write_dashboard(str(config.output_dir), pipeline_name=config.name)
        except (local_runner.PipelineFailed, local_runner.MetadataUnavailable) as exc:
            print(f"petseg: {exc}\nfull log: {log_file}", file=stream)
            if getattr(exc, "component", None) == names.DRIFT_GATE_ID:
                # Stopped on purpose: the reviewer needs the summary and the dashboard to see why.
                with console.full_log(log_file):
                    summary.finish_run(config, stream, stopped=names.DRIFT_GATE_ID)
                    path = dashboard.write_dashboard(str(config.output_dir), pipeline_name=config.name)
                print(f"[petseg] dashboard: {path}", file=stream, flush=True)
            return 1
        print(f"[petseg] dashboard: {path}", file=stream, flush=True)
    return 0


def _report(args: argparse.Namespace) -> int:
    with gc_tuning.heavy_imports():
        from report import dashboard  # imports TFMA; keep `petseg --help` fast

    try:
        if args.kubeflow_runs:
            if not args.output:
                print("petseg: --kubeflow-runs needs --output-file FILE", file=sys.stderr)
                return 2
            path = dashboard.write_history_page(args.kubeflow_runs, args.output)
        else:
            path = dashboard.write_dashboard(args.run, args.output)
    except FileNotFoundError as exc:
        print(f"petseg: {exc}", file=sys.stderr)
        return 1
    print(f"[petseg] dashboard: {path}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        parser.exit(2, f"petseg: invalid configuration: {exc}\n")


def console_main() -> int:
    """The `petseg` executable (and `python -m cli.main`): `main`, then a quick interpreter exit."""
    code = main()
    gc_tuning.skip_final_collection()
    return code


if __name__ == "__main__":
    sys.exit(console_main())

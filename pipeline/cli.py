"""The `petseg` command line: run the pipeline locally, build a run's dashboard, drive Kubeflow."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from kubeflow import cli as kubeflow_cli
from pipeline import console
from pipeline.config import ConfigError
from pipeline.config_args import add_config_args, config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally (LocalDagRunner)")
    add_config_args(run)
    run.add_argument("--output", metavar="DIR",
                     help="folder for everything the run writes (default: runs/default)")
    run.add_argument("--dataset", choices=["synthetic", "oxford_iiit_pet"],
                     help="embedded synthetic pets (default) or the real Oxford-IIIT Pet")
    run.add_argument("--oxford-raw-dir", metavar="DIR",
                     help="extracted Oxford-IIIT Pet archives (images/, annotations/), built offline")
    run.add_argument("--data-dir", metavar="DIR", help="TFDS data dir (default: <output>/tfds)")
    run.add_argument("--strict", action="store_true",
                     help="fail on the first broken image/trimap instead of skipping it")
    run.set_defaults(func=_run)

    report = sub.add_parser("report", help="write a run's self-contained HTML evaluation dashboard")
    report.add_argument("--run", metavar="DIR", required=True, help="a `petseg run --output` folder")
    report.add_argument("--output", metavar="FILE", help="where to write it (default: DIR/report/index.html)")
    report.set_defaults(func=_report)

    kubeflow_cli.add_parser(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    log_file = console.new_log_file(config.output_dir / "logs")
    # TensorFlow's C++ start-up lines come with the import, so the console is quiet before it.
    with console.quiet(log_file) as stream:
        from pipeline import local_runner  # heavy imports only once the arguments are known good

        try:
            local_runner.run(config, stream, log_file)
        except local_runner.PipelineFailed as exc:
            print(f"petseg: {exc}", file=stream)
            return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from report import dashboard  # imports TFMA; keep `petseg --help` fast

    try:
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



if __name__ == "__main__":
    sys.exit(main())

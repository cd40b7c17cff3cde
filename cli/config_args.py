"""Command-line flags that select a configuration, shared by `petseg run` and `petseg kubeflow`."""

from __future__ import annotations

import argparse
from typing import List

from config.profiles import PROFILES, apply_values, load_config
from config.settings import PipelineConfig


def add_config_args(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    """--profile, --config and --set; returns their argparse actions."""
    return [
        parser.add_argument(
            "--profile", default="quick", choices=sorted(PROFILES), help="named settings to start from (default: quick)"
        ),
        parser.add_argument("--config", metavar="FILE", help="YAML file overriding the profile"),
        parser.add_argument(
            "--set",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            dest="overrides",
            help="override one setting, e.g. --set train.epochs=5 (repeatable; petseg config lists them)",
        ),
    ]


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Profile < config file < --set < dedicated flags; validated once all apply (e.g. --set data.span_window=2
    needs the {SPAN} pattern of --oxford-raw-dir)."""
    config = load_config(args.profile, args.config, args.overrides, validate=False)
    flags = {
        key: getattr(args, flag)
        for flag, key in (
            ("output", "output"),
            ("dataset", "data.dataset"),
            ("oxford_raw_dir", "data.oxford_raw_dir"),
            ("data_dir", "data.data_dir"),
        )
        if getattr(args, flag, None) is not None
    }
    if "data.oxford_raw_dir" in flags and "data.dataset" not in flags:
        flags["data.dataset"] = "oxford_iiit_pet"
    if getattr(args, "strict", False):
        flags["data.strict"] = True
    return apply_values(config, flags).validate()

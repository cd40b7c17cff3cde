"""Named profiles, and the loading order: profile, then a YAML config file, then `key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from typing import Any, Dict, Iterable, Mapping, Optional

from config.settings import ConfigError, PipelineConfig

# The seed tutorial's recipe: full VGG16 from ImageNet (frozen), 4096-wide head, 224x224.
_SEED_RECIPE: Dict[str, Any] = {
    "model.image_size": 224,
    "model.width_multiplier": 1.0,
    "model.head_width": 4096,
    "model.encoder_weights": "imagenet",
    "model.dropout": 0.5,
    "train.epochs": 15,
    "train.batch_size": 64,
    "train.learning_rate": 1e-4,
}

PROFILES: Dict[str, Dict[str, Any]] = {
    # Learns the embedded dataset in minutes on 2 CPU cores.
    "quick": {},
    "seed": {"data.dataset": "oxford_iiit_pet", **_SEED_RECIPE, "eval.min_mean_iou": 0.6},
    # The seed recipe on synthetic pets shaped like the real set, at its split sizes, offline: checks a
    # machine or cluster (memory, disk, time per stage) before GPU hours go into the real run. No
    # ImageNet weights (they need a download); no IoU gate, so the Pusher's step is rehearsed too.
    "rehearsal": {
        **_SEED_RECIPE,
        "data.synthetic_like_oxford": True,
        "data.synthetic_train_images": 3680,
        "data.synthetic_test_images": 3669,
        "model.encoder_weights": "none",
        "eval.min_mean_iou": 0.0,
    },
    # For tests: the smallest run that still exercises every component.
    "tiny": {
        "data.synthetic_train_images": 48,
        "data.synthetic_test_images": 16,
        "model.image_size": 64,
        "model.width_multiplier": 0.125,
        "model.head_width": 32,
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.validation_images": 8,
        "eval.min_mean_iou": 0.0,
        "eval.max_regression": 1.0,
        "eval.report_images": 2,
    },
}


def load_config(
    profile: str = "quick", config_file: Optional[str] = None, overrides: Iterable[str] = (), validate: bool = True
) -> PipelineConfig:
    """Profile, then the YAML config file, then `key=value` overrides; validated unless the caller sets more."""
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    config = PipelineConfig(profile=profile)
    apply_values(config, PROFILES[profile])
    if config_file:
        apply_values(config, _read_file(config_file))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{item}: overrides are key=value, e.g. train.epochs=5")
        apply_values(config, {key.strip(): _parse_scalar(raw.strip())})
    return config.validate() if validate else config


def apply_values(config: PipelineConfig, values: Mapping[str, Any]) -> PipelineConfig:
    """Sets values with type checks; unknown keys are errors.

    Keys are dotted (`train.epochs`) or sections holding a mapping (`{"train": {"epochs": 5}}`, as a
    YAML file nests them), in any mix: profiles, files and `--set` all come through here. A mapping
    given to a text setting (e.g. `beam.environment_config`) is stored as its JSON.
    """
    for key, value in values.items():
        if key == "profile":
            raise ConfigError("profile: choose it with --profile (a profile sets many keys at once)")
        *parents, leaf = key.split(".")
        target: Any = config
        for part in parents:
            sub = getattr(target, part, None) if _field_type(target, part) else None
            if not dataclasses.is_dataclass(sub):
                raise ConfigError(f"{key}: unknown key")
            target = sub
        field_type = _field_type(target, leaf)
        if field_type is None:
            raise ConfigError(f"{key}: unknown key")
        if dataclasses.is_dataclass(getattr(target, leaf)):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: a section of settings, not a value: set its keys, e.g. {key}.<key>=...")
            apply_values(config, {f"{key}.{sub_key}": sub_value for sub_key, sub_value in value.items()})
            continue
        setattr(target, leaf, _coerce(key, value, field_type))
    return config


def _field_type(obj: Any, name: str) -> Optional[Any]:
    hints = typing.get_type_hints(type(obj))
    return hints.get(name) if name in {f.name for f in dataclasses.fields(obj)} else None


def _coerce(key: str, value: Any, field_type: Any) -> Any:
    origin, args = typing.get_origin(field_type), typing.get_args(field_type)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        field_type = next(a for a in args if a is not type(None))
        origin = typing.get_origin(field_type)
    if origin in (list, typing.List):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [str(v) for v in value]
    if field_type is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if field_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if field_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if field_type is str:
        if isinstance(value, dict):  # e.g. beam.environment_config's JSON, parsed as YAML by --set
            return json.dumps(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {field_type}")


def _parse_scalar(raw: str) -> Any:
    """`--set` values use YAML scalars: 5, 0.1, true, null, text."""
    import yaml

    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def _read_file(path: str) -> Mapping[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of sections to values")
    return data

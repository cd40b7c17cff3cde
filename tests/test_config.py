"""Profiles, config files, `--set` and flags: the loading order, and errors that name the key."""

import argparse
import dataclasses
import json
import pathlib
import re

import pytest

from cli import main as cli
from config import reference
from config.settings import ConfigError, DataConfig, PipelineConfig, TrainConfig
from config.profiles import PROFILES, load_config


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_loads_valid_and_differs_from_the_defaults(profile):
    config = load_config(profile)
    assert config.profile == profile
    if PROFILES[profile]:  # a profile that sets nothing is the defaults
        assert config != PipelineConfig(profile=profile)


def write(path: pathlib.Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_loading_order_is_profile_then_file_then_set_then_flags(tmp_path):
    profile = load_config("tiny")
    # Values no layer above would pick by chance: each one beside the profile's own.
    epochs, batch, lr = profile.train.epochs + 3, profile.train.batch_size + 5, profile.train.learning_rate * 3
    config_file = write(
        tmp_path / "c.yaml",
        f"train:\n  epochs: {epochs}\n  batch_size: {batch}\n  learning_rate: {lr}\noutput: from-file\n",
    )
    config = load_config("tiny", config_file, [f"train.batch_size={batch + 1}", "output=from-set"])
    assert (config.train.epochs, config.train.batch_size, config.train.learning_rate) == (epochs, batch + 1, lr)
    # What no layer names keeps the profile's value: a file section merges into it, never replaces it.
    assert config.model == profile.model and config.data == profile.data
    assert config.train.shuffle_buffer == profile.train.shuffle_buffer
    # Flags come last.
    args = cli.build_parser().parse_args(
        [
            "run",
            "--profile",
            "tiny",
            "--config",
            config_file,
            "--set",
            "output=from-set",
            "--output-dir",
            str(tmp_path / "flag"),
        ]
    )
    assert cli.config_from_args(args).output_dir == tmp_path / "flag"


def test_cli_flags_override_the_set_values(tmp_path):
    args = cli.build_parser().parse_args(
        [
            "run",
            "--set",
            "output=elsewhere",
            "--set",
            "data.strict=false",
            "--output-dir",
            str(tmp_path),
            "--oxford-raw-dir",
            str(tmp_path),
            "--strict",
        ]
    )
    config = cli.config_from_args(args)
    assert config.output_dir == tmp_path
    assert (config.data.dataset, config.data.oxford_raw_dir, config.data.strict) == (
        "oxford_iiit_pet",
        str(tmp_path),
        True,
    )
    assert config.tfds_data_dir == str(tmp_path / "tfds")


@pytest.mark.parametrize(
    "override, value",
    [
        ("train.learning_rate=1e-4", 1e-4),  # the README's notation; YAML 1.1 reads it as a string
        ("train.learning_rate=0.0005", 0.0005),
        ("train.learning_rate=1", 1.0),
        ("train.steps_per_epoch=null", None),
        ("train.steps_per_epoch=7", 7),
        ("data.strict=true", True),
        ("beam.args=--a=1,--b=x", ["--a=1", "--b=x"]),
        ("name=run-2", "run-2"),
    ],
)
def test_set_values_are_typed_by_the_field(override, value):
    key = override.split("=", 1)[0]
    section, _, leaf = key.rpartition(".")
    config = load_config("quick", overrides=[override])
    got = getattr(getattr(config, section) if section else config, leaf)
    assert got == value and type(got) is type(value), got


@pytest.mark.parametrize(
    "override, key, why",
    [
        ("train.epochs=three", "train.epochs", "expected an integer"),
        ("train.epochs=5.0", "train.epochs", "expected an integer"),
        ("train.learning_rate=fast", "train.learning_rate", "expected a number"),
        ("train.warm_start=maybe", "train.warm_start", "expected true or false"),
        ("train.epoch=3", "train.epoch", "unknown key"),
        ("trian.epochs=3", "trian.epochs", "unknown key"),
        ("model=3", "model", "a section of settings, not a value"),
        ("model.image_size=100", "model.image_size", "multiple of 32"),
        ("data.dataset=mnist", "data.dataset", "must be one of"),
        ("model.encoder_weights=imagenet", "model.encoder_weights", "width_multiplier=1"),  # quick's narrow VGG
        ("eval.batch_size=0", "eval.batch_size", ">= 1"),
        ("beam_workers=2", "beam_workers", "unknown key"),
        ("train.epochs", "train.epochs", "key=value"),
    ],
)
def test_bad_set_values_name_the_key_and_why(override, key, why):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: .*{re.escape(why)}"):
        load_config("quick", overrides=[override])


@pytest.mark.parametrize(
    "text, key, why",
    [
        ("train:\n  epochs: three\n", "train.epochs", "expected an integer"),
        ("trian:\n  epochs: 3\n", "trian", "unknown key"),
        ("beam_workers: 2\n", "beam_workers", "unknown key"),
        ("beam:\n  environment_config:\n    command: /boot\n  nope: 1\n", "beam.nope", "unknown key"),
        ("model:\n  image_size: 100\n", "model.image_size", "multiple of 32"),
    ],
)
def test_bad_file_values_name_the_key_and_why(tmp_path, text, key, why):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: .*{re.escape(why)}"):
        load_config("quick", write(tmp_path / "c.yaml", text))


def test_a_file_and_set_take_the_same_values_the_same_way(tmp_path):
    """A mapping for a text setting, nested sections, dotted keys: one code path, one result."""
    text = (
        "beam:\n  runner: flink\n  environment: PROCESS\n"
        "  environment_config:\n    command: /opt/apache/beam/boot\n"
        "train.epochs: 3\nmodel: {image_size: 96}\n"
    )
    from_file = load_config("quick", write(tmp_path / "c.yaml", text))
    from_set = load_config(
        "quick",
        overrides=[
            "beam={runner: flink, environment: PROCESS}",
            'beam.environment_config={"command": "/opt/apache/beam/boot"}',
            "train.epochs=3",
            "model.image_size=96",
        ],
    )
    assert from_file == from_set
    assert json.loads(from_file.beam.environment_config) == {"command": "/opt/apache/beam/boot"}
    assert (from_file.train.epochs, from_file.model.image_size, from_file.beam.runner) == (3, 96, "flink")


def test_unknown_profile_and_unreadable_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="^profile: unknown profile 'huge'"):
        load_config("huge")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_config("quick", write(tmp_path / "list.yaml", "- a list\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("quick", write(tmp_path / "bad.yaml", "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("quick", str(tmp_path / "missing.yaml"))


def test_cli_reports_bad_config_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--set", "train.batch_size=0"])
    assert exit_info.value.code == 2
    assert "train.batch_size" in capsys.readouterr().err


def readme_profiles() -> dict:
    """The README's profile table: profile name -> {column: cell}."""
    lines = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| profile |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[re.match(r"`(\w+)`", cells["profile"]).group(1)] = cells
    return rows


def test_readme_profile_table_matches_the_profiles():
    table = readme_profiles()
    assert sorted(table) == sorted(PROFILES)
    for name, row in table.items():
        config = load_config(name)
        model, train, data = config.model, config.train, config.data
        assert row["image"] == f"{model.image_size}²", name
        assert float(row["VGG16 widths"].lstrip("× ")) == model.width_multiplier, name
        assert int(row["head"]) == model.head_width, name
        assert ("ImageNet" in row["encoder"]) == (model.encoder_weights == "imagenet"), name
        assert ("frozen" in row["encoder"]) == (model.encoder_weights != "none" and not model.fine_tune_encoder), name
        assert int(row["epochs"]) == train.epochs, name
        assert int(row["batch"]) == train.batch_size, name
        # As a user would paste it into --set.
        assert load_config(name, overrides=[f"train.learning_rate={row['Adam learning rate']}"]) == config, name
        if data.dataset == "synthetic":
            sizes = re.fullmatch(r"synthetic, (\d+) / (\d+) images", row["data"])
            assert sizes and tuple(map(int, sizes.groups())) == (
                data.synthetic_train_images,
                data.synthetic_test_images,
            ), name
        else:
            assert row["data"] == "real Oxford-IIIT Pet", name
        dropout = re.search(r"dropout ([\d.]+)", row["encoder"])
        assert (float(dropout.group(1)) if dropout else 0.0) == model.dropout, name


def test_every_setting_says_what_it_means():
    """`petseg config` prints each field's attribute docstring: a new setting without one fails here."""
    sections = [PipelineConfig] + [
        type(getattr(PipelineConfig(), f.name))
        for f in dataclasses.fields(PipelineConfig)
        if dataclasses.is_dataclass(getattr(PipelineConfig(), f.name))
    ]
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in sections
        for f in dataclasses.fields(cls)
        if not dataclasses.is_dataclass(f.type)
        and f.name not in reference.attribute_docs(cls)
        and f.name not in reference.NOT_SETTINGS
        and f.default_factory not in sections
    ]
    assert missing == []


def test_petseg_config_lists_every_key_with_type_default_value_and_meaning(capsys):
    assert cli.main(["config", "--profile", "tiny", "--set", "train.epochs=3", "--set", "beam.args=--a=1,--b=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith("*")}
    leaves = [
        f"{section}.{f.name}"
        for section, cls in (("data", DataConfig), ("train", TrainConfig))
        for f in dataclasses.fields(cls)
    ]
    assert set(leaves) <= set(rows) and "profile" not in rows
    assert rows["train.epochs"].split()[:4] == ["train.epochs", "int", "40", "3"]
    assert rows["train.epochs"].split()[4] == "*" and rows["train.epochs"].endswith("Training epochs.")
    assert rows["model.image_size"].split()[:5] == ["model.image_size", "int", "160", "64", "*"]  # the tiny profile's
    assert rows["train.steps_per_epoch"].split()[:4] == ["train.steps_per_epoch", "int", "or", "null"]
    assert rows["beam.args"].split()[4:7] == ["(empty)", "--a=1,--b=2", "*"]
    assert rows["train.learning_rate"].split()[:5] == ["train.learning_rate", "float", "0.001", "0.001", "Adam's"]


def test_the_profile_is_chosen_with_its_flag_not_set():
    with pytest.raises(ConfigError, match="^profile: choose it with --profile"):
        load_config("quick", overrides=["profile=seed"])


def test_the_top_level_help_names_every_kubeflow_command():
    text = cli.build_parser().format_help()
    assert "config" in text and all(name in text for name in ("compile", "submit", "schedule", "tfjob-manifest"))


def test_an_output_flag_says_whether_it_is_a_folder_or_a_file():
    def options(*path):
        parser = cli.build_parser()
        for name in path:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return {o for a in parser._actions for o in a.option_strings if o.startswith("--output")}

    assert options("run") == {"--output-dir"}
    assert options("report") == {"--output-file"}
    assert options("kubeflow", "compile") == options("kubeflow", "tfjob-manifest") == {"--output-file"}

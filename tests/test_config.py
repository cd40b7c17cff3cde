"""Profiles, config files and overrides: every profile validates and bad values name their key."""

import pathlib
import re

import pytest

from cli import main as cli
from config.settings import ConfigError
from config.profiles import PROFILES, load_config


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_validates(profile):
    config = load_config(profile)
    assert config.profile == profile
    assert config.model.image_size % 32 == 0


def test_seed_profile_is_the_seed_recipe():
    config = load_config("seed")
    assert (config.model.image_size, config.model.head_width, config.model.width_multiplier) == (224, 4096, 1.0)
    assert (config.train.batch_size, config.train.epochs) == (64, 15)
    assert config.model.encoder_weights == "imagenet" and not config.model.fine_tune_encoder


def test_file_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  learning_rate: 0.01\nmodel: {head_width: 64}\n")
    config = load_config("quick", str(path), ["train.epochs=3"])
    assert (config.train.epochs, config.train.learning_rate, config.model.head_width) == (3, 0.01, 64)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),
    ("train.epoch=3", "train.epoch"),
    ("model.image_size=100", "model.image_size"),
    ("data.dataset=mnist", "data.dataset"),
    ("model.encoder_weights=imagenet", "model.encoder_weights"),  # quick's narrow VGG can't take them
    ("train.warm_start=maybe", "train.warm_start"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("model=3", "model"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        load_config("quick", overrides=[override])


def test_unknown_profile_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="profile"):
        load_config("huge")
    path = tmp_path / "c.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("quick", str(path))


def test_cli_flags_override_everything(tmp_path):
    args = cli.build_parser().parse_args(
        ["run", "--set", "output=elsewhere", "--output", str(tmp_path), "--oxford-raw-dir", str(tmp_path), "--strict"])
    config = cli.config_from_args(args)
    assert config.output_dir == tmp_path
    assert (config.data.dataset, config.data.oxford_raw_dir, config.data.strict) == (
        "oxford_iiit_pet", str(tmp_path), True)
    assert config.tfds_data_dir == str(tmp_path / "tfds")


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
    for line in lines[start + 2:]:
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
        assert float(row["Adam learning rate"]) == train.learning_rate, name
        if data.dataset == "synthetic":
            sizes = re.fullmatch(r"synthetic, (\d+) / (\d+) images", row["data"])
            assert sizes and tuple(map(int, sizes.groups())) == (
                data.synthetic_train_images, data.synthetic_test_images), name
        else:
            assert row["data"] == "real Oxford-IIIT Pet", name
        dropout = re.search(r"dropout ([\d.]+)", row["encoder"])
        assert (float(dropout.group(1)) if dropout else 0.0) == model.dropout, name

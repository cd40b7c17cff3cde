"""The project's packages in layer order, bottom first, read from the import-linter contract in pyproject.toml."""

import pathlib

import tomli

REPO = pathlib.Path(__file__).resolve().parents[2]


def _layers() -> tuple:
    pyproject = tomli.loads((REPO / "pyproject.toml").read_text())
    [contract] = [c for c in pyproject["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return tuple(reversed(contract["layers"]))


# Bottom to top: a package imports only itself and the packages before it.
LAYERS = _layers()

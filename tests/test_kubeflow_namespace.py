"""Our top-level packages shadow no installed distribution's; `kubeflow` is shared with the Kubeflow SDKs, pkgutil-
style."""

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
from typing import Dict, Set

import pytest

import config

REPO = pathlib.Path(__file__).resolve().parent.parent
OURS = "petseg"
# A real distribution with a portion of the `kubeflow` namespace, a dependency of ours.
SDK = "kubeflow-training"


def top_level_names(dist: importlib.metadata.Distribution) -> Set[str]:
    """The importable top-level names a distribution installs (its top_level.txt, else its RECORD)."""
    listed = dist.read_text("top_level.txt")
    if listed:
        return {name.strip() for name in listed.split() if name.strip()}
    names = set()
    for path in dist.files or ():
        first = path.parts[0] if path.parts else ""
        if first in ("..", "__pycache__") or first.endswith((".dist-info", ".data", ".pth", ".egg-info")):
            continue
        if len(path.parts) > 1 or first.endswith(".py") or ".cpython-" in first or first.endswith(".so"):
            names.add(first.split(".")[0])
    return names


def is_namespace_portion(init: pathlib.Path) -> bool:
    """A folder's `__init__.py` that extends its package over other portions, or none at all (PEP 420)."""
    if not init.exists():
        return True
    text = init.read_text()
    return "extend_path" in text or "declare_namespace" in text


def shared_names() -> Dict[str, Dict[str, bool]]:
    """Each top-level name of ours that another distribution also installs -> {distribution: both sides namespaces}."""
    ours = top_level_names(importlib.metadata.distribution(OURS))
    assert {"config", "kubeflow", "trainer", "pipeline"} <= ours, ours
    found: Dict[str, Dict[str, bool]] = {}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"] == OURS:
            continue
        for name in top_level_names(dist) & ours:
            theirs = pathlib.Path(dist.locate_file(name)) / "__init__.py"
            found.setdefault(name, {})[dist.metadata["Name"]] = is_namespace_portion(
                REPO / name / "__init__.py"
            ) and is_namespace_portion(theirs)
    return found


def test_no_installed_distribution_provides_a_top_level_name_of_ours_unless_both_share_it_as_a_namespace():
    shared = shared_names()
    shadowed = {name: sorted(d for d, ok in dists.items() if not ok) for name, dists in shared.items()}
    shadowed = {name: dists for name, dists in shadowed.items() if dists}
    assert not shadowed, (
        f"these top-level names of ours are also installed by other distributions, which shadow ours or are shadowed "
        f"by them: {shadowed}"
    )
    # The one name shared on purpose, so this test sees a real namespace on both sides.
    assert shared == {"kubeflow": {SDK: True}}


PROBE = """
import json, os, sys
switch_before = os.environ.get({switch!r})
import kubeflow
switch_after_package = os.environ.get({switch!r})
tensorflow_before = "tensorflow" in sys.modules
import kubeflow.entrypoint
switch_after_entrypoint = os.environ.get({switch!r})
import kubeflow.training
print(json.dumps({{"package": kubeflow.__file__, "training": kubeflow.training.__file__,
                  "entrypoint": kubeflow.entrypoint.__file__, "switch_before": switch_before,
                  "switch_after_package": switch_after_package, "tensorflow_before": tensorflow_before,
                  "switch_after_entrypoint": switch_after_entrypoint, "path": sys.path}}))
"""


@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "sdk-first"])
def test_the_kubeflow_sdk_imports_beside_our_kubeflow_package_in_either_order(tmp_path, ours_first):
    site = pathlib.Path(importlib.metadata.distribution(SDK).locate_file(""))
    assert (site / "kubeflow" / "training" / "__init__.py").is_file()
    entries = [str(REPO), str(site)] if ours_first else [str(site), str(REPO)]
    env = {key: value for key, value in os.environ.items() if key != config.KERAS_SWITCH}
    env["PYTHONPATH"] = os.pathsep.join(entries)
    # cwd outside the repository, so only PYTHONPATH puts our packages on sys.path.
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(switch=config.KERAS_SWITCH)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["path"].index(entries[0]) < seen["path"].index(entries[1])
    assert seen["training"] == str(site / "kubeflow" / "training" / "__init__.py")
    assert seen["entrypoint"] == str(REPO / "kubeflow" / "entrypoint.py")
    assert seen["switch_before"] is None
    if ours_first:
        # Our `__init__` ran: the Keras switch is set as soon as the package is imported.
        assert seen["package"] == str(REPO / "kubeflow" / "__init__.py")
        assert seen["switch_after_package"] == "1"
    else:
        assert seen["package"] == str(site / "kubeflow" / "__init__.py")
    # Either way `python -m kubeflow.entrypoint` has the switch before TensorFlow loads (its own imports set it).
    assert not seen["tensorflow_before"] and seen["switch_after_entrypoint"] == "1"

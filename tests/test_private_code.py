"""Only components/internals.py reaches into libraries' private code: `_` names, tfx.orchestration.portable,
private methods of library classes we subclass."""

import ast
import pathlib
from typing import Dict, List

from support.layers import LAYERS

REPO = pathlib.Path(__file__).resolve().parent.parent
ALLOWED = REPO / "components" / "internals.py"
LIBRARIES = {
    "tfx",
    "tensorflow",
    "tensorflow_datasets",
    "tensorflow_transform",
    "tensorflow_model_analysis",
    "tensorflow_data_validation",
    "tensorflow_metadata",
    "tfx_bsl",
    "ml_metadata",
    "apache_beam",
    "tf_keras",
    "keras",
    "kfp",
    "kubernetes",
    "google",
    "absl",
    "tensorboard",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root(node: ast.AST) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def private_reach_ins(source: str) -> List[str]:
    """What the code reaches past a library's public API for, one line each."""
    tree = ast.parse(source)
    found: List[str] = []
    library_names: Dict[str, str] = {}  # local name -> library module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    library_names[alias.asname or alias.name.split(".")[0]] = alias.name
                    if "portable" in alias.name.split(".") or any(map(_private, alias.name.split("."))):
                        found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            if "portable" in node.module.split(".") or any(map(_private, node.module.split("."))):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            for alias in node.names:
                library_names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and _root(node) in library_names:
            found.append(f"line {node.lineno}: {_root(node)}...{node.attr}")
        if isinstance(node, ast.ClassDef) and any(_root(base) in library_names for base in node.bases):
            # A private method or attribute of the library class it extends: `self._X` not defined here.
            own = {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            own |= {
                t.attr
                for n in ast.walk(node)
                if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                if isinstance(t, ast.Attribute) and _root(t) == "self"
            }
            own |= {
                t.id
                for n in node.body
                if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                if isinstance(t, ast.Name)
            }
            for n in ast.walk(node):
                if (
                    isinstance(n, ast.Attribute)
                    and isinstance(n.value, ast.Name)
                    and n.value.id == "self"
                    and _private(n.attr)
                    and n.attr not in own
                ):
                    found.append(f"line {n.lineno}: self.{n.attr} (of {node.name}'s library base)")
    return found


def test_only_internals_reaches_into_private_code():
    reach_ins = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            if path != ALLOWED:
                found = private_reach_ins(path.read_text())
                if found:
                    reach_ins[str(path.relative_to(REPO))] = found
    assert reach_ins == {}, "route these through components/internals.py (version-checked, tested) or a public API"


def test_the_check_sees_each_kind_of_reach_in():
    source = """
import tensorflow_datasets as tfds
from tfx.orchestration.portable.mlmd import store_ext
from tfx.components.pusher import executor
from tfx.utils import _private_helper


class Pusher(executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        self._log = []
        self._log.append(1)  # its own attribute
        self._MarkPushed(None, pushed_destination="x")
        return tfds.core._registered(executor._PUSHED_KEY)
"""
    found = private_reach_ins(source)
    assert sorted(line.split(":", 1)[1].strip() for line in found) == sorted(
        [
            "from tfx.orchestration.portable.mlmd import ...",
            "from tfx.utils import _private_helper",
            "tfds..._registered",
            "executor..._PUSHED_KEY",
            "self._MarkPushed (of Pusher's library base)",
        ]
    ), found

"""The import graph: packages import only the layers below them, no module cycles (imports inside functions
included), tests share code through `support/` only, and `petseg run`'s start-up is free of `tfx.v1`."""

import ast
import os
import pathlib
import subprocess
from typing import Dict, List, Set

from support import petseg
from support.layers import LAYERS

import config

REPO = pathlib.Path(__file__).resolve().parent.parent


def project_modules() -> Dict[str, pathlib.Path]:
    """Dotted name -> file for every module of the packages and of tests/ (top level there, as pytest sees it)."""
    modules = {}
    for root, folders in ((REPO, LAYERS), (REPO / "tests", ("",))):
        for folder in folders:
            for path in sorted((root / folder).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: pathlib.Path, modules: Dict[str, pathlib.Path]) -> Set[str]:
    """Project modules `name` imports anywhere in its file, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` names module a.b when there is one, else something defined in a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute path
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    modules = project_modules()
    # cli.main imports pipeline.local_runner inside a function; the parser must see it.
    assert "pipeline.local_runner" in imports_of("cli.main", modules["cli.main"], modules)


def test_project_modules_import_no_cycles():
    graph = import_graph()
    assert len(graph) > 50  # every package and test module was parsed
    assert cycles(graph) == []


def package_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """Project package -> the other project packages its modules import."""
    packages: Dict[str, Set[str]] = {}
    for name, targets in graph.items():
        package = name.split(".")[0]
        if package in LAYERS:
            packages.setdefault(package, set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != package)
    return packages


def test_packages_import_only_the_layers_below_them():
    """import-linter's layers contract (pyproject.toml), which `make test` also runs; this prints the graph."""
    packages = package_graph(import_graph())
    # `pytest -s -k layers_below` prints the graph, top layer first.
    for package in reversed(LAYERS):
        print(f"{package:>10} -> {', '.join(p for p in LAYERS if p in packages.get(package, ())) or '(nothing)'}")
    assert set(packages) == set(LAYERS)  # every layer exists and was parsed
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_bottom_layer_loads_no_library_and_the_trainer_no_orchestration():
    code = (
        "import sys, config.names, config.settings, config.profiles; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tfx', 'apache_beam', 'numpy'}))"
    )
    assert petseg.python(code) == "[]"
    code = (
        "import sys, trainer.data, trainer.model, trainer.precision, trainer.run, trainer.signatures, "
        "trainer.strategy; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pipeline', 'components', 'kubeflow', 'cli'}))"
    )
    assert petseg.python(code) == "[]"


def test_tests_share_code_through_support_only():
    graph = import_graph()
    shared = {
        name: sorted(t for t in targets if t.startswith("test_") or t == "conftest")
        for name, targets in graph.items()
        if name.startswith(("test_", "support", "conftest"))
    }
    assert {name: targets for name, targets in shared.items() if targets} == {}


def test_every_package_sets_the_keras_switch_before_anything_else():
    for package in LAYERS[1:]:
        body = [n for n in ast.parse((REPO / package / "__init__.py").read_text()).body if not isinstance(n, ast.Expr)]
        assert isinstance(body[0], ast.Import) and body[0].names[0].name == "config", package
    # A fresh interpreter without the variable, importing TensorFlow right after one of our packages.
    env = {k: v for k, v in os.environ.items() if k != config.KERAS_SWITCH}
    code = "import kubeflow, tensorflow as tf; print(tf.keras.Model.__module__)"
    last_line = petseg.python(code, env=env)
    assert last_line.startswith("tf_keras."), last_line


def test_run_path_does_not_import_tfx_v1():
    # Start-up cost: `petseg run`'s modules must not pull in `tfx.v1` and its Google Cloud extensions.
    code = (
        "import sys; import cli.main, pipeline.local_runner, report.summary, report.dashboard, "
        "trainer.run, metrics.segmentation; "
        "print(sorted(m for m in sys.modules if m == 'tfx.v1' or m.startswith('google.cloud.aiplatform')))"
    )
    assert petseg.python(code) == "[]"

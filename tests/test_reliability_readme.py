"""The README names tests that exist, and its "What happens when ..." table covers every reliability case with them."""

import ast
import os
import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent
HEADING = "## What happens when ..."
# The cases the table must cover, as they appear in its first column.
REQUIRED_CASES = [
    "truncated JPEG",
    "no image",
    "PNG named",
    "grayscale",
    "RGBA",
    "CMYK",
    "another size",
    "outside {1, 2, 3}",
    "trimap or an image is missing",
    "split ends up empty",
    "malformed",
    "`--strict`",
    "TFRecord",
    "killed during the Trainer",
    "killed during the Pusher",
    "corrupt",
    "locked",
    "worse",
    "NaN",
    "undecodable",
    "empty input",
    "pixel limit",
    "credentials",
    "user-supplied path",
    "Kubeflow image",
]


def table_rows() -> list:
    """(case, outcome, [test ids]) for each row of the section's table."""
    text = (REPO / "README.md").read_text()
    assert HEADING in text, f"README has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 3 and not set(cells[0]) <= set("-") and cells[0] != "when ...":
            rows.append((cells[0], cells[1], re.findall(r"`(tests/[\w/]+\.py::\w+)`", cells[2])))
    return rows


def defined_tests(path: pathlib.Path) -> set:
    return {
        node.name
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_row_names_tests_that_exist():
    rows = table_rows()
    assert len(rows) >= 15
    for case, _, ids in rows:
        assert ids, f"row {case!r} lists no test"
        for test_id in ids:
            file, name = test_id.split("::")
            assert (REPO / file).exists() and name in defined_tests(REPO / file), f"row {case!r}: no {test_id}"


def test_every_required_case_has_a_row():
    cases = " ".join(case for case, _, _ in table_rows())
    assert [c for c in REQUIRED_CASES if c not in cases] == []


def test_every_reliability_test_is_in_the_table():
    listed = {test_id for _, _, ids in table_rows() for test_id in ids}
    this_file = pathlib.Path(__file__).name
    for path in sorted((REPO / "tests").glob("test_reliability_*.py")):
        if path.name != this_file:
            missing = {f"tests/{path.name}::{n}" for n in defined_tests(path)} - listed
            assert not missing, f"not in the README table: {sorted(missing)}"


def test_every_test_file_the_readme_names_exists():
    named = set(re.findall(r"\btests/[\w/]+\.py\b", (REPO / "README.md").read_text()))
    assert named, "the README names no test file"
    assert sorted(path for path in named if not (REPO / path).is_file()) == []


def _prerequisites(path: str):
    return subprocess.run(
        ["make", "-s", "prerequisites"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=path),
        timeout=60,
    )


def test_make_test_names_what_it_cannot_install_one_line_each(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "java").write_text("#!/bin/sh\necho 'openjdk version \"21.0.2\" 2024-01-16' >&2\n")
    (fake / "java").chmod(0o755)
    # No Go on this PATH, and a Java that is not 17.
    done = _prerequisites(f"{fake}:/usr/bin:/bin")
    assert done.returncode != 0
    assert done.stdout.splitlines() == [
        "make test needs Go >= 1.24 (https://go.dev/dl), found: no go",
        'make test needs Java 17 (apt-get install openjdk-17-jdk-headless), found: openjdk version "21.0.2" 2024-01-16',
    ]
    assert _prerequisites(os.environ["PATH"]).returncode == 0  # this machine has them all

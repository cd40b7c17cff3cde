"""pipeline.gc_tuning: the collector paused over heavy imports and skipped at exit, in fresh interpreters."""

import os
import pathlib
import subprocess
import sys

from support import petseg


def test_heavy_imports_pause_the_collector_and_freeze_what_they_loaded():
    code = """
import gc
from pipeline import gc_tuning
frozen_before = gc.get_freeze_count()
with gc_tuning.heavy_imports():
    paused = not gc.isenabled()
    import xml.dom.minidom
print(paused, gc.isenabled(), frozen_before == 0 and gc.get_freeze_count() > 0)
"""
    assert petseg.python(code) == "True True True"


def test_nothing_is_frozen_when_the_block_imports_nothing_new():
    code = """
import gc
import xml.dom.minidom
from pipeline import gc_tuning
with gc_tuning.heavy_imports():
    import xml.dom.minidom  # loaded already
print(gc.get_freeze_count(), gc.isenabled())
"""
    assert petseg.python(code) == "0 True"


def test_heavy_imports_give_the_collector_back_when_the_import_fails():
    code = """
import gc
from pipeline import gc_tuning
try:
    with gc_tuning.heavy_imports():
        import no_such_module_here
except ImportError:
    pass
print(gc.isenabled())
"""
    assert petseg.python(code) == "True"


def test_the_petseg_executable_freezes_before_its_exit(tmp_path):
    # An exit hook in the real `petseg` process, installed the way Python loads site customisation;
    # atexit hooks run after the command's last statement, just before the exit's final collection.
    hook = tmp_path / "hook"
    hook.mkdir()
    report = tmp_path / "freeze_count"
    (hook / "sitecustomize.py").write_text(
        f"import atexit, gc\natexit.register(lambda: open({str(report)!r}, 'w').write(str(gc.get_freeze_count())))\n"
    )
    executable = pathlib.Path(sys.executable).parent / "petseg"
    # `flink status` on an empty folder: a command that needs no cluster, imports nothing heavy and ends normally.
    proc = subprocess.run(
        [str(executable), "flink", "status", "--dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(hook)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no Flink cluster is running" in proc.stdout
    assert int(report.read_text()) > 0

"""pipeline.interpreter: the collector paused over heavy imports and skipped at exit, in fresh interpreters."""

import importlib.metadata

from support import petseg


def test_heavy_imports_pause_the_collector_and_freeze_what_they_loaded():
    code = """
import gc
from pipeline import gc_tuning
with gc_tuning.heavy_imports():
    paused = not gc.isenabled()
    import xml.dom.minidom
after_import = gc.get_freeze_count()
with gc_tuning.heavy_imports():
    import xml.dom.minidom  # loaded already: nothing new to freeze
print(paused, gc.isenabled(), after_import > 0, gc.get_freeze_count() == after_import)
"""
    assert petseg.python(code) == "True True True True"


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


def test_petseg_freezes_before_its_exit(tmp_path):
    # `flink status` on an empty folder: a command that needs no cluster and ends normally.
    code = f"""
import gc, sys
from cli import main as cli
sys.argv = ["petseg", "flink", "status", "--dir", {str(tmp_path)!r}]
code = cli.console_main()
print(code, gc.get_freeze_count() > 0)
"""
    assert petseg.python(code) == "0 True"


def test_the_petseg_executable_is_console_main():
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="petseg")
    assert script.value == "cli.main:console_main"

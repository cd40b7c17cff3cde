"""Python's garbage collector in petseg's processes: kept off the objects TF, TFX and Beam create once and keep."""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import Iterator


@contextlib.contextmanager
def heavy_imports() -> Iterator[None]:
    """Imports with the collector paused, then moves what they created out of its view for good.

    TensorFlow, TFX, Beam and TFMA create some 600,000 objects at import that live as long as the
    process. Collecting while they load is a fifth of the import, and every later full collection,
    the one at interpreter exit included (seconds), would walk them all again.
    Nothing changes when the block imports nothing new (the modules are loaded already).
    """
    loaded, enabled = len(sys.modules), gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > loaded:
            gc.freeze()
        if enabled:
            gc.enable()


def skip_final_collection() -> None:
    """For a process's last step: Python's exit collects every object still alive (seconds once TF is loaded).

    The process ends right after, so nothing needs that memory back; atexit handlers (log flushing,
    `weakref.finalize` clean-ups) run as before.
    """
    gc.freeze()

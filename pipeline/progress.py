"""One console line per component, from the log records LocalDagRunner writes as it starts and ends each one."""

from __future__ import annotations

import logging
import time
from typing import Optional, TextIO

_RUNNING = "Component %s is running."
_FINISHED = "Component %s is finished."
_CACHED = "A cached execution %d is used."


class ProgressTracker(logging.Handler):
    """Turns LocalDagRunner's log records into one console line per component.

    The times it prints are for watching; summary.json's come from MLMD's execution timestamps.
    """

    def __init__(self, stream: Optional[TextIO]):
        super().__init__(level=logging.INFO)
        self.stream = stream
        self.current: Optional[str] = None
        self._started = 0.0
        self._cached = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == _RUNNING:
            self.current, self._started, self._cached = str(record.args[0]), time.monotonic(), False
            self._print(f"[petseg] {self.current} running ...")
        elif record.msg == _CACHED and self.current:
            self._cached = True
        elif record.msg == _FINISHED and self.current:
            how = "from cache" if self._cached else "done"
            self._print(f"[petseg] {self.current} {how} in {time.monotonic() - self._started:.1f} s")
            self.current = None

    def _print(self, line: str) -> None:
        if self.stream is not None:
            print(line, file=self.stream, flush=True)

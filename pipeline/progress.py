"""One console line per component, from the log records LocalDagRunner writes as it starts and ends each one."""

from __future__ import annotations

import logging
import time
from typing import Optional, TextIO

from components import internals


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
        event, value = internals.local_runner_progress(record)
        if event == "running":
            self.current, self._started, self._cached = str(value), time.monotonic(), False
            self._print(f"[petseg] {self.current} running ...")
        elif event == "cached" and self.current:
            self._cached = True
        elif event == "finished" and self.current:
            how = "from cache" if self._cached else "done"
            self._print(f"[petseg] {self.current} {how} in {time.monotonic() - self._started:.1f} s")
            self.current = None

    def _print(self, line: str) -> None:
        if self.stream is not None:
            print(line, file=self.stream, flush=True)

"""Runs `create_pipeline(config)` with LocalDagRunner, MLMD in sqlite, and visible progress."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import sqlite3
import sys
import time
from typing import Dict, Iterator, Optional, TextIO

from absl import logging as absl_logging
from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from engine import errors
from pipeline import console
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from report import dashboard, summary

_RUNNING = "Component %s is running."
_FINISHED = "Component %s is finished."
_CACHED = "A cached execution %d is used."


class PipelineFailed(RuntimeError):
    """A component failed; the message names it and the log file."""


class ProgressTracker(logging.Handler):
    """Turns LocalDagRunner's log records into one console line per component.

    The times it prints are for watching; summary.json's come from MLMD's execution timestamps.
    """

    def __init__(self, stream: TextIO):
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
        print(line, file=self.stream, flush=True)


class MetadataUnavailable(PipelineFailed):
    """The MLMD sqlite file is corrupt or in use by another run; the message says which and what to do."""


@contextlib.contextmanager
def metadata_guard(path: str, timeout: float = 10.0) -> Iterator[None]:
    """Holds the run's MLMD database exclusively, after checking it opens and is writable.

    MLMD itself reports a corrupt file as a failed `CREATE TABLE` query, and two runs sharing one
    output would interleave executions in it; both become one clear error here, before any work.
    """
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MetadataUnavailable(
                f"{path} is in use by another petseg run (it holds {lock_path}); wait for that run to "
                "finish or use another --output") from None
        if os.path.exists(path):  # MLMD creates a missing one
            _check_sqlite(path, timeout)
        yield


def _check_sqlite(path: str, timeout: float) -> None:
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=timeout, isolation_level=None)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
            db.execute("BEGIN IMMEDIATE")  # waits up to `timeout` for another writer, then fails
            db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise MetadataUnavailable(f"cannot open the metadata store {path}: {exc}") from exc
        raise MetadataUnavailable(
            f"{path} is locked by another process (waited {timeout:.0f} s): another program holds a "
            "write transaction on it; stop it and rerun") from exc
    except sqlite3.DatabaseError as exc:
        raise MetadataUnavailable(
            f"{path} is not a usable metadata database ({exc}). Move it aside to start afresh (the cache "
            "and lineage of earlier runs are lost; serving/ keeps its models) or restore a backup") from exc


def _not_job_messages(record: logging.LogRecord) -> bool:
    """Drops the job server's messages (Java stacks) from the console; the run's log file keeps them and
    a failure still prints its Python traceback through PipelineFailed."""
    return not record.pathname.endswith("portable_runner.py")


@contextlib.contextmanager
def _logging_to(log_file: str, tracker: ProgressTracker) -> Iterator[None]:
    """Full INFO log into the run's folder; only progress lines (and warnings) on the console."""
    absl_logger = logging.getLogger("absl")
    root = logging.getLogger()
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Through absl's flag, not Logger.setLevel: TF's SavedModel export saves and restores the
    # verbosity via absl.logging.get_verbosity(), which reads the flag and would reset us to WARNING.
    saved_verbosity, saved_root_level = absl_logging.get_verbosity(), root.level
    # Libraries attach a stderr handler to the root logger on import; keep INFO noise off the console.
    consoles = {h: h.level for h in root.handlers}
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
        handler.addFilter(_not_job_messages)
    absl_logging.set_verbosity(absl_logging.INFO)
    root.setLevel(logging.INFO)
    root.addHandler(file_handler)
    absl_logger.addHandler(tracker)
    try:
        yield
    finally:
        absl_logger.removeHandler(tracker)
        root.removeHandler(file_handler)
        file_handler.close()
        for handler, level in consoles.items():
            handler.setLevel(level)
            handler.removeFilter(_not_job_messages)
        absl_logging.set_verbosity(saved_verbosity)
        root.setLevel(saved_root_level)


def run(config: PipelineConfig, stream: TextIO = sys.stderr,
        log_file: Optional[pathlib.Path] = None) -> Dict[str, object]:
    """Runs the pipeline to completion, then writes and returns the run summary."""
    output = config.output_dir
    log_file = log_file or console.new_log_file(output / "logs")
    pipeline = create_pipeline(
        config,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            config.metadata_path))
    tracker = ProgressTracker(stream)
    with metadata_guard(config.metadata_path), _logging_to(str(log_file), tracker):
        try:
            LocalDagRunner().run(pipeline)
        except Exception as exc:
            # A job on Flink/Spark fails with Java stacks around the Python traceback: keep the Python part.
            where = f"full log: {log_file}"
            if config.beam.runner == "flink":
                where += f"; Flink jobs and their exceptions: http://{config.beam.flink_master}/#/job/completed"
            raise PipelineFailed(f"{tracker.current or 'the pipeline'} failed: {errors.readable(str(exc))}\n"
                                 f"{where}") from exc
        result = summary.finish_run(config, stream)
        result["dashboard"] = dashboard.write_dashboard(str(output), pipeline_name=config.name)
        print(f"[petseg] dashboard: {result['dashboard']}", file=stream, flush=True)
        return result


"""The run's MLMD sqlite file, held exclusively and checked to open and write before any work starts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from typing import Iterator


class MetadataUnavailable(RuntimeError):
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
                "finish or use another --output-dir"
            ) from None
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
            "write transaction on it; stop it and rerun"
        ) from exc
    except sqlite3.DatabaseError as exc:
        raise MetadataUnavailable(
            f"{path} is not a usable metadata database ({exc}). Move it aside to start afresh (the cache "
            "and lineage of earlier runs are lost; serving/ keeps its models) or restore a backup"
        ) from exc

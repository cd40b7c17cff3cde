"""A corrupt, locked or concurrently used MLMD sqlite file stops `petseg run` with a clear error before any work."""

import contextlib
import sqlite3

import pytest

from pipeline import local_runner
from config.profiles import load_config


def _config(output):
    return load_config("tiny", overrides=[f"output={output}"])


def test_corrupt_metadata_is_a_clear_error(tmp_path):
    config = _config(tmp_path)
    tmp_path.joinpath("metadata.sqlite").write_bytes(b"\x00garbage, not sqlite" * 500)
    with pytest.raises(local_runner.MetadataUnavailable, match="not a usable metadata database.*Move it aside"):
        local_runner.run(config)
    assert not tmp_path.joinpath("pipeline_root").exists()  # stopped before any component ran


def test_locked_metadata_is_a_clear_error(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")  # another process mid-write
        with pytest.raises(local_runner.MetadataUnavailable, match="locked by another process"):
            with local_runner.metadata_guard(path, timeout=0.2):
                pass
        holder.execute("ROLLBACK")
    with local_runner.metadata_guard(path, timeout=0.2):
        pass  # released: usable again


def test_second_run_on_the_same_output_is_refused(tmp_path):
    config = _config(tmp_path)
    with local_runner.metadata_guard(config.metadata_path):
        with pytest.raises(local_runner.MetadataUnavailable, match="in use by another petseg run"):
            local_runner.run(config)

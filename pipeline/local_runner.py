"""Runs `create_pipeline(config)` with LocalDagRunner, its metadata in the run's own sqlite file."""

from __future__ import annotations

import logging
from typing import Optional

from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from config.settings import PipelineConfig
from engine import errors
from pipeline import freshness
from pipeline.metadata_lock import MetadataUnavailable, metadata_guard
from pipeline.pipeline import create_pipeline
from pipeline.progress import ProgressTracker

__all__ = ["MetadataUnavailable", "PipelineFailed", "run"]


class PipelineFailed(RuntimeError):
    """A component failed, or the run could not start; the message names which and why.

    `component` is the id of the node that failed (None when the run failed outside one).
    """

    def __init__(self, message: str, component: Optional[str] = None):
        super().__init__(message)
        self.component = component


def run(config: PipelineConfig, progress: Optional[ProgressTracker] = None) -> None:
    """Runs the pipeline to completion; `progress` hears which component runs, ends or comes from cache.

    Raises MetadataUnavailable before any work when the run's metadata store cannot be used, and
    PipelineFailed when a component fails.
    """
    progress = progress or ProgressTracker(None)
    pipeline = create_pipeline(
        freshness.pin(config, config.serving_dir),
        metadata_connection_config=metadata.sqlite_metadata_connection_config(config.metadata_path),
    )
    absl_logger = logging.getLogger("absl")
    try:
        with metadata_guard(config.metadata_path):
            absl_logger.addHandler(progress)
            LocalDagRunner().run(pipeline)
    except MetadataUnavailable:
        raise
    except Exception as exc:
        # A job on Flink/Spark fails with Java stacks around the Python traceback: keep the Python part.
        where = ""
        if config.beam.runner == "flink":
            where = f"\nFlink jobs and their exceptions: http://{config.beam.flink_master}/#/job/completed"
        raise PipelineFailed(
            f"{progress.current or 'the pipeline'} failed: {errors.readable(str(exc))}{where}", progress.current
        ) from exc
    finally:
        absl_logger.removeHandler(progress)

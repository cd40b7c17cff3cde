"""What a run reads from outside the pipeline: the newest span of data and the newest served model.

Both are node parameters. A runner that can read the data and serving folders when the run starts
pins them (`pin`), so a cached execution always means the same span and the same baseline; a
compiled spec run on a schedule cannot, so those nodes resolve "the newest" when they execute and
run uncached (`resolved_when_run`). `create_pipeline` itself reads nothing.
"""

from __future__ import annotations

import dataclasses
from typing import List

from components import serving_dir
from config import names
from config.settings import PipelineConfig
from dataset import spans


def resolved_when_run(config: PipelineConfig) -> List[str]:
    """Ids of the nodes that read "the newest" when they execute, and so must never come from a cache."""
    nodes = []
    if spans.has_span(config.data.oxford_raw_dir) and config.data.span is None:
        nodes.append(names.EXAMPLE_GEN_ID)
    if config.eval.baseline_version is None:
        nodes.append(names.LATEST_BLESSED_MODEL_ID)
    return nodes


def pin(config: PipelineConfig, serving: str) -> PipelineConfig:
    """`config` with the newest span and served version as they are now (a copy; left unset when there is none)."""
    data, evaluation = config.data, config.eval
    found = spans.find_spans(data.oxford_raw_dir) if spans.has_span(data.oxford_raw_dir) and data.span is None else {}
    if found:
        data = dataclasses.replace(data, span=max(found))
    if evaluation.baseline_version is None:
        evaluation = dataclasses.replace(evaluation, baseline_version=serving_dir.latest_version(serving))
    return dataclasses.replace(config, data=data, eval=evaluation)

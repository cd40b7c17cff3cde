"""Beam args as Beam's own PipelineOptions reads them, refusing any argument Beam does not know."""

import logging
from typing import List

from apache_beam.options.pipeline_options import PipelineOptions


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def parse(args: List[str]) -> PipelineOptions:
    """PipelineOptions of `args`; fails when Beam discards one of them as unknown (it only logs that)."""
    logger = logging.getLogger("apache_beam.options.pipeline_options")
    records = _Records()
    logger.addHandler(records)
    try:
        options = PipelineOptions(args)
        options.get_all_options()
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if "unparseable" in m], (records.messages, args)
    return options

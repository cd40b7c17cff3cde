"""Spans: data that arrives as numbered folders (`/data/pets/span-{SPAN}`), of which a run reads one."""

from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]

# In a raw-dir path, `{SPAN}` stands for a span number (like TFX input patterns): data arrives as
# new folders, e.g. /data/pets/span-1, span-2, ... and a run reads the latest one.
SPAN_TOKEN = "{SPAN}"


def has_span(raw_dir: Optional[PathLike]) -> bool:
    return bool(raw_dir) and SPAN_TOKEN in os.fspath(raw_dir)


def find_spans(pattern: PathLike) -> Dict[int, str]:
    """Span number -> folder for every existing folder matching a `{SPAN}` pattern (digits)."""
    pattern = os.fspath(pattern)
    if pattern.count(SPAN_TOKEN) != 1:
        raise ValueError(f"{pattern}: a span pattern needs exactly one {SPAN_TOKEN}")
    parent, leaf = os.path.split(pattern)
    if SPAN_TOKEN not in leaf:
        raise ValueError(f"{pattern}: {SPAN_TOKEN} must be in the last path component")
    regex = re.compile(re.escape(leaf).replace(re.escape(SPAN_TOKEN), r"(\d+)") + r"\Z")
    spans: Dict[int, str] = {}
    for entry in (sorted(os.listdir(parent)) if os.path.isdir(parent) else []):
        match = regex.match(entry)
        if match and os.path.isdir(os.path.join(parent, entry)):
            span = int(match.group(1))
            if span in spans:  # span-1 and span-01: which one is meant is a guess, so refuse
                raise ValueError(f"{pattern}: span {span} matches both {spans[span]} and {entry}")
            spans[span] = os.path.join(parent, entry)
    return spans


def resolve_span(pattern: PathLike, span: Optional[int] = None) -> Tuple[int, str]:
    """(span, folder) for the requested span, or the latest one when span is None or negative."""
    spans = find_spans(pattern)
    if not spans:
        raise FileNotFoundError(f"no folder matches {os.fspath(pattern)} ({SPAN_TOKEN} = digits)")
    if span is None or span < 0:
        span = max(spans)
    elif span not in spans:
        raise FileNotFoundError(f"span {span} of {os.fspath(pattern)} does not exist; found {sorted(spans)}")
    return span, spans[span]


def span_data_dir(data_dir: PathLike, span: int) -> str:
    """Each span is its own TFDS dataset (same name and version), so it needs its own data_dir."""
    return os.path.join(os.fspath(data_dir), f"span-{span}")

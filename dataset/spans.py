"""Spans: data that arrives as numbered folders (`/data/pets/span-{SPAN}`), of which a run reads the newest few."""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]

# In a raw-dir path, `{SPAN}` stands for a span number (like TFX input patterns): data arrives as
# new folders, e.g. /data/pets/span-1, span-2, ... and a run reads the latest one.
SPAN_TOKEN = "{SPAN}"


def has_span(raw_dir: Optional[PathLike]) -> bool:
    return bool(raw_dir) and SPAN_TOKEN in os.fspath(raw_dir)


def find_spans(pattern: PathLike) -> Dict[int, str]:
    """Span number -> folder for every existing folder matching a `{SPAN}` pattern (digits).

    Listed through tf.io.gfile, so the pattern may name a local folder or one on gs:// (any filesystem
    TensorFlow has).
    """
    import tensorflow as tf

    pattern = os.fspath(pattern)
    if pattern.count(SPAN_TOKEN) != 1:
        raise ValueError(f"{pattern}: a span pattern needs exactly one {SPAN_TOKEN}")
    parent, leaf = os.path.split(pattern)
    if SPAN_TOKEN not in leaf:
        raise ValueError(f"{pattern}: {SPAN_TOKEN} must be in the last path component")
    regex = re.compile(re.escape(leaf).replace(re.escape(SPAN_TOKEN), r"(\d+)") + r"\Z")
    spans: Dict[int, str] = {}
    # Object stores list folders with a trailing "/".
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(parent)) if tf.io.gfile.isdir(parent) else []
    for entry in entries:
        match = regex.match(entry)
        if match and tf.io.gfile.isdir(os.path.join(parent, entry)):
            span = int(match.group(1))
            if span in spans:  # span-1 and span-01: which one is meant is a guess, so refuse
                raise ValueError(f"{pattern}: span {span} matches both {spans[span]} and {entry}")
            spans[span] = os.path.join(parent, entry)
    return spans


def resolve_span(pattern: PathLike, span: Optional[int] = None) -> Tuple[int, str]:
    """(span, folder) for the requested span, or the latest one when span is None or negative."""
    return _pick(pattern, find_spans(pattern), span)


def _pick(pattern: PathLike, spans: Dict[int, str], span: Optional[int]) -> Tuple[int, str]:
    if not spans:
        raise FileNotFoundError(f"no folder matches {os.fspath(pattern)} ({SPAN_TOKEN} = digits)")
    if span is None or span < 0:
        span = max(spans)
    elif span not in spans:
        raise FileNotFoundError(f"span {span} of {os.fspath(pattern)} does not exist; found {sorted(spans)}")
    return span, spans[span]


def span_window(pattern: PathLike, span: Optional[int] = None, size: int = 1) -> List[Tuple[int, str]]:
    """(span, folder) of the `size` newest spans up to `span` (None: the newest), oldest first.

    Fewer when fewer exist: a schedule's first runs train on what has arrived so far.
    """
    if size < 1:
        raise ValueError(f"a span window holds at least one span, got {size}")
    found = find_spans(pattern)  # one listing: on gs:// each is a request
    newest, _ = _pick(pattern, found, span)
    return [(s, found[s]) for s in sorted(s for s in found if s <= newest)[-size:]]


def span_data_dir(data_dir: PathLike, span: int) -> str:
    """Each span is its own TFDS dataset (same name and version), so it needs its own data_dir."""
    return os.path.join(os.fspath(data_dir), f"span-{span}")

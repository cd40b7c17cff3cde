"""What a score can be on the report: a number, undefined (NaN, a 0/0 in metrics.segmentation) or missing (None)."""

from __future__ import annotations

import math
from typing import Any, Optional

# What an undefined or missing score shows as, on the page and in its charts.
NA = "\u2014"
# Why a score shows as NA instead of a number (metrics.segmentation explains the convention).
ABSENT_CLASS_HINT = (
    "Undefined: this class has no pixels in this slice's truth or predictions (0/0). "
    "It is left out of the slice's mean IoU / mean Dice."
)
NO_PIXELS_HINT = "Undefined: this slice has no pixels."
MISSING_HINT = "Not computed for this model."


def undefined(value: Any) -> bool:
    """True for a score that is missing (None) or undefined (NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def hint(key: str, value: Any) -> Optional[str]:
    """Why the score under `key` (e.g. "mean_iou", "iou/pet") shows as NA, or None when it is a number."""
    if not undefined(value):
        return None
    if value is None:
        return MISSING_HINT
    return ABSENT_CLASS_HINT if "/" in key else NO_PIXELS_HINT

"""Turns a failed portable-runner job's message (a Java stack wrapping the SDK's) into the Python traceback."""

from __future__ import annotations

import re

_TRACEBACK = "Traceback (most recent call last):"
# Lines of a Java stack, which the job server wraps around the SDK harness's Python traceback.
_JAVA_LINE = re.compile(r"^\s*(at [\w$.<>/]+\(.*\)|\.\.\. \d+ more|Caused by: |Suppressed: )")


def readable(message: str) -> str:
    """The last Python traceback in `message`, without the Java frames around it; else `message` without them.

    The job server reports a Python error as `java.lang.RuntimeException: Error received from SDK harness
    for instruction N: Traceback ...` inside Java stacks; only the Python part says what went wrong.
    """
    start = message.rfind(_TRACEBACK)
    if start < 0:
        return "\n".join(line for line in message.splitlines() if not _JAVA_LINE.match(line))
    lines = []
    for line in message[start:].splitlines():
        if _JAVA_LINE.match(line):
            break
        lines.append(line)
    head = message[:start].splitlines()[0] if message[:start].strip() else ""
    return "\n".join(([head.strip(), "Python traceback from a Beam worker:"] if head else []) + lines).rstrip()

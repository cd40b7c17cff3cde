"""A quiet console for `petseg run`: petseg's own lines, our warnings and every error; the rest goes to the log.

TensorFlow's C++ runtime prints to file descriptor 2 directly (and reads its log level only once, at
import), and Python warnings and library log handlers write to `sys.stderr`; none of them can be
filtered from Python. So for the run, descriptor 2 itself points at the run's log file, and petseg
writes to a duplicate of the original. Child processes (Beam workers) inherit the redirection.
Standard output is left alone: it carries Keras's one line per epoch.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pathlib
import sys
from typing import Iterator, TextIO

from absl import logging as absl_logging

# Loggers whose warnings are about the user's run (e.g. a broken sample skipped); other libraries'
# warnings stay in the log file unless they are errors.
OUR_LOGGERS = ("cli", "pipeline", "components", "dataset", "transform", "trainer", "metrics", "kubeflow", "report")


def new_log_file(logs_dir: pathlib.Path) -> pathlib.Path:
    logs_dir.mkdir(parents=True, exist_ok=True)
    return logs_dir / f"run-{datetime.datetime.now():%Y%m%d-%H%M%S}.log"


# Beam's portable runner relays the job server's messages (Java stacks) through its module's logger.
_JOB_MESSAGES_LOGGER = "apache_beam.runners.portability.portable_runner"


def _not_job_messages(record: logging.LogRecord) -> bool:
    """Drops the job server's messages from the console; the run's log file keeps them and a failure
    still prints its Python traceback through the runner's error."""
    return record.name != _JOB_MESSAGES_LOGGER


@contextlib.contextmanager
def full_log(log_file: pathlib.Path) -> Iterator[None]:
    """Every INFO record into `log_file`; libraries' console handlers keep only warnings."""
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
    try:
        yield
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        for handler, level in consoles.items():
            handler.setLevel(level)
            handler.removeFilter(_not_job_messages)
        absl_logging.set_verbosity(saved_verbosity)
        root.setLevel(saved_root_level)


class _Worth(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] in OUR_LOGGERS


@contextlib.contextmanager
def quiet(log_file: pathlib.Path) -> Iterator[TextIO]:
    """Points descriptor 2 at `log_file` and yields the console stream for petseg's own lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    with open(log_file, "ab") as log:
        os.dup2(log.fileno(), 2)
    handler = logging.StreamHandler(console)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_Worth())
    handler.setFormatter(logging.Formatter("[petseg] %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield console
    finally:
        logging.getLogger().removeHandler(handler)
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.close()

"""Waiting on events instead of polling: a path appearing (Linux inotify) unless a process ends first (pidfd)."""

from __future__ import annotations

import glob
import os
import pathlib
import select
import subprocess
import time
from typing import Dict, Optional

from inotify_simple import INotify, flags

_MASK = flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE


class ProcessEnded(AssertionError):
    """The process that was to make the path ended before it appeared."""


class _Watcher:
    """inotify watches on a folder and every folder created under it."""

    def __init__(self, root: pathlib.Path):
        self.inotify = INotify(nonblocking=True)
        self.fd = self.inotify.fileno()
        self.folders: Dict[int, str] = {}
        self.add_tree(str(root))

    def add_tree(self, top: str) -> None:
        # Watch first, then list: whatever appears in between shows up in the listing or as an event.
        for folder, _, _ in os.walk(top):
            try:
                self.folders[self.inotify.add_watch(folder, _MASK)] = folder
            except OSError:  # a folder removed meanwhile is simply not watched
                pass

    def read(self) -> None:
        """Reads pending events; watches the folders they created."""
        for event in self.inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                for top in list(self.folders.values()):
                    self.add_tree(top)
            elif event.mask & flags.ISDIR and event.wd in self.folders:
                self.add_tree(os.path.join(self.folders[event.wd], event.name))

    def close(self) -> None:
        self.inotify.close()


def wait_for_path(
    root: pathlib.Path, pattern: str, process: Optional[subprocess.Popen] = None, timeout: float = 1800
) -> pathlib.Path:
    """The first path matching the glob `root/pattern`, woken by each file or folder created under `root`.

    `root` must exist. Raises ProcessEnded when `process` ends before the path appears, TimeoutError
    after `timeout` seconds.
    """
    watcher = _Watcher(root)
    pidfd = os.pidfd_open(process.pid) if process is not None else None
    deadline = time.monotonic() + timeout
    try:
        while True:
            found = sorted(glob.glob(str(root / pattern)))
            if found:
                return pathlib.Path(found[0])
            if process is not None and process.poll() is not None:
                raise ProcessEnded(
                    f"process {process.pid} ended (exit {process.returncode}) before {root / pattern} appeared"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{root / pattern} did not appear in {timeout:.0f} s")
            select.select([watcher.fd] + ([pidfd] if pidfd is not None else []), [], [], remaining)
            watcher.read()
    finally:
        watcher.close()
        if pidfd is not None:
            os.close(pidfd)

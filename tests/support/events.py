"""Waiting on events instead of polling: a path appearing (Linux inotify) unless a process ends first (pidfd)."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import pathlib
import select
import struct
import subprocess
import time
from typing import Dict, Optional

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# <sys/inotify.h>
IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x008, 0x080, 0x100
IN_Q_OVERFLOW, IN_ISDIR, IN_NONBLOCK, IN_CLOEXEC = 0x4000, 0x40000000, 0o4000, 0o2000000
_MASK = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class ProcessEnded(AssertionError):
    """The process that was to make the path ended before it appeared."""


class _Watcher:
    """inotify watches on a folder and every folder created under it."""

    def __init__(self, root: pathlib.Path):
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders: Dict[int, str] = {}
        self.add_tree(str(root))

    def add_tree(self, top: str) -> None:
        # Watch first, then list: whatever appears in between shows up in the listing or as an event.
        for folder, _, _ in os.walk(top):
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(folder), _MASK)
            if wd >= 0:  # a folder removed meanwhile is simply not watched
                self.folders[wd] = folder

    def read(self) -> None:
        """Reads pending events; watches the folders they created."""
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            wd, mask, _, size = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
            offset += _EVENT.size + size
            if mask & IN_Q_OVERFLOW:
                for top in list(self.folders.values()):
                    self.add_tree(top)
            elif mask & IN_ISDIR and wd in self.folders:
                self.add_tree(os.path.join(self.folders[wd], os.fsdecode(name)))

    def close(self) -> None:
        os.close(self.fd)


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

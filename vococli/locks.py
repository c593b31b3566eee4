"""Exclusive folder locks (flock), so that two processes never write one cache or one run folder.

A lock is held until `release()`, until it is collected, or until the process ends (also by
kill -9). Platforms without flock get a lock that holds nothing.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path

from vococli.errors import FolderBusy


class FolderLock:
    """An exclusive lock on one folder (see `lock_folder`)."""

    def __init__(self, fd: int | None = None):
        self._close = weakref.finalize(self, os.close, fd) if fd is not None else None

    def release(self) -> None:
        """Let another process take the folder (runs once; later calls do nothing)."""
        if self._close is not None:
            self._close()


def lock_folder(folder: Path, busy: str, wait_s: float = 0.0, on_wait=None) -> FolderLock:
    """The exclusive lock of `folder`. If another process holds it, wait up to `wait_s` seconds
    (`on_wait()` is called once when waiting starts), then raise FolderBusy("FOLDER: BUSY")."""
    try:
        import fcntl
    except ImportError:
        return FolderLock()
    fd = os.open(folder, os.O_RDONLY)
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return FolderLock(fd)
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise FolderBusy(f"{folder}: {busy}") from None
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

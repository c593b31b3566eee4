"""Exclusive folder locks (flock), so that two processes never write one cache or one run folder.

A lock is held while its owner object lives (released at `release`, when the owner is collected,
or when the process ends, also by kill -9). Platforms without flock get no lock.
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path

from vococli.errors import FolderBusy


def lock_folder(owner, folder: Path, busy: str, wait_s: float = 0.0, on_wait=None) -> None:
    """Take the exclusive lock of `folder` for `owner` (its `release()` or collection frees it).
    If another process holds it, wait up to `wait_s` seconds (`on_wait()` is called once when
    waiting starts), then raise FolderBusy("FOLDER: BUSY")."""
    try:
        import fcntl
    except ImportError:
        return
    fd = os.open(folder, os.O_RDONLY)
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise FolderBusy(f"{folder}: {busy}") from None
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    finalizer = weakref.finalize(owner, os.close, fd)  # runs once: at release() or when owner is collected
    owner.release = finalizer

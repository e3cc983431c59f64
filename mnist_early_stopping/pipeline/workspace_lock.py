"""One writer at a time: an exclusive lock on a file, held while a stage writes outside DVC's knowledge.

The lock is `flock`, which the kernel releases when its process dies, so a
lock left by a killed run is simply taken over; the file names the holder,
so a refused run can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator


class LockedError(Exception):
    """Another process holds the lock; the message names it."""


def _acquire(path: Path) -> int:
    """An open descriptor of `path` holding its lock, or LockedError."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "a process that is starting"
            os.close(fd)
            raise LockedError(holder) from None
        # The previous holder may have removed the file between our open and
        # our lock: then we hold a lock on a name nobody else sees. Start over.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(path: Path, what: str) -> Iterator[None]:
    """Hold the lock at `path` for the block, recording this process as `what`; the file is removed after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()}, started {started})\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: a waiting process re-checks the inode
        os.close(fd)

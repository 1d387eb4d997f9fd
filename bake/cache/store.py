"""bake's own records of the local store: the per-key build lock and when each key was used.

The images themselves are the engine's (:mod:`bake.engine`); what bake keeps
beside them, in its state folder, is one lock file per key (one builder per key,
across processes) and one "last used" stamp per key (for ``bake prune``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..state import state_dir

__all__ = ["key_lock", "last_used", "record_use"]


@contextlib.contextmanager
def key_lock(
    key: str, *, on_wait: Callable[[], None] | None = None, poll: float = 0.2
) -> Iterator[None]:
    """Hold the build lock for ``key``: one builder per key, across processes and threads.

    ``flock`` belongs to the open file, so the kernel drops it when its holder
    dies: a lock left by a killed process never blocks anyone.
    """
    folder = state_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                # Polling rather than a blocking flock keeps Ctrl-C and SIGTERM responsive.
                time.sleep(poll)
        yield
    finally:
        os.close(fd)


def _uses_dir() -> Path:
    folder = state_dir() / "used"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record_use(key: str) -> None:
    """Note that the image for ``key`` was built, hit or run now (for LRU pruning)."""
    path = _uses_dir() / key
    path.touch()
    os.utime(path)


def last_used(key: str) -> float | None:
    try:
        return (_uses_dir() / key).stat().st_mtime
    except FileNotFoundError:
        return None

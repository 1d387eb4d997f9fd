"""The local image store: key hits, the per-key build lock, pulls, listing, removal.

Hits go through the lean Engine client (:mod:`bake.cache.engine`); everything
slower uses the docker SDK, imported only here, in the registry module and in
the runner, and only when needed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EngineError
from ..settings import state_dir
from .engine import engine_hint, inspect_image

if TYPE_CHECKING:
    import docker

__all__ = [
    "docker_client",
    "has_image",
    "key_lock",
    "last_used",
    "pull_image",
    "record_use",
    "remove_image",
]


def has_image(ref: str) -> bool:
    return inspect_image(ref) is not None


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


def docker_client(*, max_pool_size: int = 10) -> docker.DockerClient:
    """``max_pool_size``: connections held at once (a multi-node run follows every
    node's output and exit at the same time)."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=600, max_pool_size=max_pool_size)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"cannot reach the Docker Engine: {exc}", hint=engine_hint()) from exc
    return client


def pull_image(ref: str) -> None:
    import docker.errors

    client = docker_client()
    try:
        client.images.pull(ref)
    except docker.errors.APIError as exc:
        raise EngineError(
            f"cannot pull {ref}: {exc.explanation or exc}",
            hint=f"pull it by hand, or make a base from Debian packages: bake base build "
            f"--tag {ref}",
        ) from exc


def remove_image(ref: str, *, force: bool = False) -> None:
    import docker.errors

    client = docker_client()
    try:
        client.images.remove(ref, force=force, noprune=False)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot remove {ref}: {exc.explanation or exc}") from exc


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

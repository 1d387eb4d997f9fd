"""A node's ``/out``: a filesystem of bounded size while the job runs, a bounded copy after.

A job writes its results to ``/out``; ``bake run --output DIR`` hands them to the
seller.  Nothing the job says about its output is trusted:

* **While it runs**, ``/out`` is a filesystem of its own, made for this run and
  mounted from the host: an ext4 image on a loop device (a sparse file that grows
  only as the job writes), or, where the kernel gives no loop device, a tmpfs.
  Either way the kernel stops the job with ENOSPC a little past ``[run] output``
  (:func:`fs_size`), so the host's disk never pays more than that, however the job
  writes.
* **After it ends**, :func:`collect` measures what is there as the seller's disk
  would hold it (every file at its full size, rounded up to 4 KiB blocks, so that
  sparse files and hard links count as what a copy makes of them; every folder one
  block), and copies it only when it is within ``[run] output``.  The copy counts
  the bytes it reads, not the sizes it was told, and lands in a private folder
  inside ``DIR`` first, so a file that grows while copied stops it.
* **Past the limit, nothing of that node's output is kept** (and ``bake run``
  says so in one line): a file cut short by ENOSPC looks like a whole one, and a
  part of a result must not pass for the result.  Within it, every regular file
  and folder is kept; links, devices and fifos are named and skipped, as before.

Mounting needs root (bake runs as root: it also sets firewall rules); without it
``--output`` is refused before the job starts rather than left unbounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import proc
from .errors import RunError
from .state import state_dir

__all__ = ["Collected", "Outbox", "collect", "fs_size", "open_outbox", "sweep_outboxes"]

BLOCK = 4096
_CHUNK = 1 << 20
_INCOMING = ".bake-incoming-"


def fs_size(limit: int) -> int:
    """The size of the filesystem behind ``/out``: the limit, plus room for ext4's own
    tables (about 3.5 %) and some more, so that a job can write a little *past* the
    limit and be caught by the measure rather than stopped just short of it."""
    size = limit + limit // 16 + (16 << 20)
    return -(-size // (1 << 20)) * (1 << 20)


def cost(size: int) -> int:
    """What a file of ``size`` bytes costs against the limit: whole 4 KiB blocks, at least one."""
    return max(BLOCK, -(-size // BLOCK) * BLOCK)


@dataclass(frozen=True)
class Outbox:
    holder: Path  # a private folder (0700) under the state dir
    mount: Path  # holder/out: what the container sees as /out
    limit: int
    kind: str  # "ext4" or "tmpfs"


@dataclass(frozen=True)
class Collected:
    over_limit: bool
    used: int  # bytes measured (or counted, when the copy stopped)
    skipped: tuple[str, ...] = ()


def _run(argv: list[str]) -> proc.Completed:
    try:
        return proc.run(argv, timeout=120)
    except OSError as exc:  # not installed, or hung
        return proc.Completed(tuple(argv), 127, "", f"{argv[0]}: {exc.strerror or exc}")


def _runs_dir() -> Path:
    root = state_dir() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def open_outbox(limit: int, user: str, owner: str) -> Outbox:
    """Make and mount a node's ``/out`` of ``fs_size(limit)`` bytes, owned by the job's user."""
    if os.geteuid() != 0:
        raise RunError(
            "bounding the job's /out needs root: bake mounts a size-limited filesystem for it",
            hint="run bake as root (it also sets the firewall rules of multi-node jobs), "
            "or run without --output",
        )
    holder = Path(tempfile.mkdtemp(prefix="run-", dir=_runs_dir()))
    (holder / "owner").write_text(owner)
    mount = holder / "out"
    mount.mkdir()
    uid, _, gid = user.partition(":")
    gid = gid or uid
    size = fs_size(limit)
    kind = "ext4"
    try:
        image = holder / "out.img"
        with open(image, "wb") as fh:
            fh.truncate(size)  # sparse: the host's disk pays only for what the job writes
        made = _run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-m", "0", "-O", "^has_journal",
                     "-E", f"lazy_itable_init=1,root_owner={uid}:{gid}", str(image)])
        mounted = made.ok and _run(
            ["mount", "-o", "loop,nosuid,nodev", str(image), str(mount)]).ok
        if not mounted:
            image.unlink()
            # No mkfs.ext4 or no loop device (a container, some VMs): a tmpfs, which the
            # kernel bounds just as well, in memory charged to the job that writes it.
            kind = "tmpfs"
            done = _run(["mount", "-t", "tmpfs", "-o",
                         f"size={size},mode=0755,uid={uid},gid={gid},nosuid,nodev",
                         "bake-out", str(mount)])
            if not done.ok:
                raise RunError(f"cannot mount a size-limited /out for the job: "
                               f"{done.last_line()}",
                               hint="bake needs mount(8) and either mkfs.ext4 with a loop "
                               "device or tmpfs")
        with contextlib.suppress(FileNotFoundError):
            (mount / "lost+found").rmdir()
    except BaseException:
        _release(holder)
        raise
    return Outbox(holder, mount, limit, kind)


def close_outbox(box: Outbox) -> None:
    _release(box.holder)


def _mounted(path: Path) -> bool:
    target = str(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            return any(line.split()[4] == target for line in fh if len(line.split()) > 4)
    except OSError:
        return False


def _release(holder: Path) -> None:
    """Unmount (the loop device goes with it) and remove a run's folder."""
    mount = holder / "out"
    for _ in range(3):
        if not _mounted(mount):
            break
        if not _run(["umount", str(mount)]).ok:
            _run(["umount", "-l", str(mount)])
    if _mounted(mount):
        return  # never remove files under a mount we could not take away
    shutil.rmtree(holder, ignore_errors=True)


def sweep_outboxes(is_orphan: Callable[[str], bool]) -> int:
    """Release the ``/out`` of runs whose bake is gone (SIGKILL); returns how many."""
    swept = 0
    for holder in _runs_dir().glob("run-*"):
        try:
            label = (holder / "owner").read_text().strip()
        except OSError:
            continue
        if is_orphan(label):
            _release(holder)
            swept += 1
    return swept


def _walk_cost(staging: Path) -> int:
    """What the output would cost (see :func:`cost`), from lstat: no link is followed."""
    total = 0
    for root, dirs, files in os.walk(staging, followlinks=False):
        total += BLOCK * len(dirs)
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += cost(st.st_size)
    return total


class _OverLimit(Exception):
    pass


def collect(staging: Path, dest: Path, limit: int) -> Collected:
    """Copy what the job left in ``staging`` into ``dest``: all of it, if it is within
    ``limit``, else nothing.  Regular files and folders only: links, devices and fifos
    are named in ``skipped``, and no link, the job's or one already in ``dest``, is
    followed."""
    used = _walk_cost(staging)
    dest.mkdir(parents=True, exist_ok=True)
    if used > limit:
        return Collected(True, used)
    incoming = dest / f"{_INCOMING}{uuid.uuid4().hex[:12]}"
    incoming.mkdir(mode=0o700)
    skipped: list[str] = []
    try:
        spent = _copy_tree(staging, incoming, limit, skipped)
        _merge(incoming, dest, Path(), skipped, incoming.name)
    except _OverLimit as exc:
        return Collected(True, int(str(exc)))
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return Collected(False, spent, tuple(skipped))


def _copy_tree(staging: Path, target: Path, limit: int, skipped: list[str]) -> int:
    spent = 0
    for root, dirs, files in os.walk(staging, followlinks=False):
        rel_root = Path(root).relative_to(staging)
        target_root = target / rel_root
        for name in list(dirs):
            if (Path(root) / name).is_symlink():
                skipped.append(str(rel_root / name))
                dirs.remove(name)
                continue
            spent += BLOCK
            if spent > limit:
                raise _OverLimit(spent)
            (target_root / name).mkdir()
        for name in files:
            src = Path(root) / name
            st = os.lstat(src)
            if not stat.S_ISREG(st.st_mode):
                skipped.append(str(rel_root / name))
                continue
            try:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                skipped.append(str(rel_root / name))  # unreadable to bake: name it
                continue
            with os.fdopen(fd, "rb") as fin:
                # Check the file we opened, not the name: it may have changed since lstat.
                if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                    skipped.append(str(rel_root / name))
                    continue
                out_fd = os.open(target_root / name,
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(out_fd, "wb") as fout:
                    copied = 0
                    while chunk := fin.read(_CHUNK):
                        copied += len(chunk)
                        # Bytes read, not the size lstat gave: the file may be growing.
                        if spent + cost(copied) > limit:
                            raise _OverLimit(spent + cost(copied))
                        fout.write(chunk)
                    spent += cost(copied)
            # Setuid/setgid bits and group/other write never cross to the host.
            os.chmod(target_root / name, st.st_mode & 0o755)
    return spent


def _merge(src: Path, dest: Path, rel: Path, skipped: list[str], incoming: str) -> None:
    """Move the copied tree into ``dest``, never through a link already there."""
    for entry in sorted(os.listdir(src)):
        if not rel.parts and entry == incoming:
            continue
        source, target = src / entry, dest / entry
        if source.is_dir():
            if target.is_symlink():
                skipped.append(str(rel / entry))
            elif not target.exists():
                os.rename(source, target)
            elif target.is_dir():
                _merge(source, target, rel / entry, skipped, incoming)
            else:
                skipped.append(str(rel / entry))
        elif target.is_dir() and not target.is_symlink():
            skipped.append(str(rel / entry))
        else:
            os.replace(source, target)  # replaces a link itself, never what it points to

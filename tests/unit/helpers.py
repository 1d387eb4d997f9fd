"""Unit-test helpers: resolve and lock a spec with a fixed base digest, no engine, no network."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bake.job import PinnedJob, ResolvedJob
from bake.lock.format import (
    Distribution,
    Lock,
    LockedFile,
    LockedRepo,
    PythonLock,
    Target,
)
from bake.lock.locking import declared_of
from bake.resolve import resolve
from bake.settings import DEFAULT_ALLOW, Settings
from bake.spec import load_spec

BASE_DIGEST = "sha256:" + "b" * 64
COMMIT = "c" * 40
TARGET = Target("3.11.2", "cpython", "cp311", "x86_64", "glibc 2.36")
# Where the default allowlist lets setup steps fetch files from (named there, not here).
INDEX_FILES = "https://" + next(h for h in DEFAULT_ALLOW if h.startswith("files.")) + "/packages"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PIN = re.compile(r"==\s*([A-Za-z0-9.+!-]+)")


def fixed_base(ref: str) -> tuple[str, str]:
    return ref, BASE_DIGEST


def fake_dist(requirement: str) -> Distribution:
    """What a resolver might lock a requirement to: its pinned version, else 1.0."""
    found = _NAME.match(requirement)
    assert found, requirement
    name = re.sub(r"[-_.]+", "-", found.group(0)).lower()
    pin = _PIN.search(requirement)
    version = pin.group(1) if pin else "1.0"
    file = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return Distribution(name, version, file, hashlib.sha256(file.encode()).hexdigest(),
                        f"{INDEX_FILES}/{file}")


def fake_lock(pinned: PinnedJob, *, commit: str = COMMIT) -> Lock:
    """A lock as the resolvers would make it: every requirement to one wheel, every Hub
    repo to ``commit`` and one file."""
    spec = pinned.spec
    declared = declared_of(spec, pinned.base_ref)
    python = None
    if spec.requirements:
        dists = {d.name: d for d in map(fake_dist, spec.requirements)}
        python = PythonLock(TARGET, tuple(sorted(dists.values(), key=lambda d: d.name)))
    repos = [LockedRepo(r.kind, r.repo, r.revision, commit, r.include, r.exclude,
                        (LockedFile("config.json", 2, blob="a" * 40),))
             for r in (*declared.models, *declared.datasets)]
    return Lock(declared, pinned.base_digest, python,
                tuple(r for r in repos if r.kind == "model"),
                tuple(r for r in repos if r.kind == "dataset"))


def lock_job(pinned: PinnedJob, *, commit: str = COMMIT) -> ResolvedJob:
    return pinned.locked(fake_lock(pinned, commit=commit))


def resolved(spec_path: Path, settings: Settings | None = None,
             digest: str = BASE_DIGEST, *, commit: str = COMMIT) -> ResolvedJob:
    pinned = resolve(load_spec(spec_path), settings or Settings(),
                     base_lookup=lambda ref: (ref, digest))
    return lock_job(pinned, commit=commit)

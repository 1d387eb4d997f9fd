"""The lock stage: a job's pinned spec -> its :class:`~bake.lock.format.Lock`.

A ``bake.lock`` shipped beside the spec, else the resolver cache while fresh, else the
resolvers the caller passes in (:class:`Resolvers`).  The resolvers are callbacks, so that
this module starts no build and no proxy: the pipeline passes one that runs the confined
resolve step (:func:`bake.pipeline.resolve_requirements`, a setup step with its own setup
window) and one that asks the Hub (:func:`hub_locker`).  The fast path passes none: then
anything but a fresh answer is :class:`~bake.errors.NotLocked` ("no fast answer"), never a
network request.  With a fresh cache or a shipped lock neither resolver is called, so a key
hit makes no network request at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..hub import is_commit, lock_repo
from ..job import PinnedJob
from ..settings import Settings
from ..spec import HubRepo, JobSpec
from ..state import state_dir
from .cache import Answer, ResolverCache, cached
from .format import (
    DEFAULT_INDEX,
    LOCK_NAME,
    Declared,
    DeclaredRepo,
    Lock,
    LockedFile,
    LockedRepo,
    PythonLock,
    PythonRequest,
    parse_lock,
    public_url,
    python_from_doc,
    python_to_doc,
    read_lock_text,
    repo_from_doc,
    repo_to_doc,
)

__all__ = [
    "DEFAULT_HUB",
    "HubLocker",
    "Locked",
    "PythonResolver",
    "Resolvers",
    "declared_of",
    "hub_endpoint_of",
    "hub_locker",
    "index_url_of",
    "lock_for",
    "lock_path",
    "resolver_cache",
]

DEFAULT_HUB = "https://huggingface.co"
PythonResolver = Callable[[PythonRequest], PythonLock]
HubLocker = Callable[[DeclaredRepo], LockedRepo]


@dataclass(frozen=True)
class Locked:
    """The lock stage's answer: the lock, and what it depends on (for the fast path's record
    of the lookup, :mod:`bake.cache.hits`)."""

    lock: Lock
    #: The files the answer was read from: ``bake.lock`` beside the spec (present or not: one
    #: that appears changes the answer) and the resolver cache entries used.
    inputs: tuple[Path, ...]
    #: When the earliest resolution it used stops being fresh; ``None``: never (a shipped
    #: lock, repos pinned by commit, no outside input at all).
    fresh_until: float | None
    #: An outage was answered with an old resolution (stale-if-error).
    stale: bool = False


@dataclass(frozen=True)
class Resolvers:
    """Who answers what the cache cannot: the requirements, and each Hub repo."""

    python: PythonResolver
    hub: HubLocker


def lock_path(spec: JobSpec) -> Path:
    """``bake.lock`` beside the spec's ``bake.toml``."""
    return spec.path.resolve().parent / LOCK_NAME


def resolver_cache() -> ResolverCache:
    return ResolverCache(state_dir() / "resolve")


def declared_of(spec: JobSpec, base_ref: str) -> Declared:
    """What the spec declares that a lock answers (``base_ref``: the spec's base, else the
    template's default)."""
    return Declared(
        base=base_ref,
        requirements=spec.requirements,
        only_binary=spec.only_binary,
        models=tuple(_declared_repo(r) for r in spec.models),
        datasets=tuple(_declared_repo(r) for r in spec.datasets),
    )


def _declared_repo(repo: HubRepo) -> DeclaredRepo:
    return DeclaredRepo(repo.kind, repo.repo, repo.revision, repo.include, repo.exclude)


def index_url_of(settings: Settings) -> str:
    """The index a resolution asks, without credentials: it is mounted where buyer code may
    run and written into bake's state dir (the egress relay adds credentials, issue 13)."""
    return public_url(settings.build.pip_index_url or DEFAULT_INDEX)


def hub_endpoint_of(settings: Settings) -> str:
    return settings.hub_endpoint or DEFAULT_HUB


def lock_for(
    job: PinnedJob,
    settings: Settings,
    *,
    resolvers: Resolvers | None,
    upgrade: bool = False,
    use_shipped: bool = True,
    now: Callable[[], float] = time.time,
    warn: Callable[[str], None] = lambda text: None,
    cache: ResolverCache | None = None,
) -> Locked:
    """The job's lock, and what it was read from.

    A ``bake.lock`` beside the spec is used as it is (no resolution, no network) when it
    matches the spec; one that does not is a :class:`SpecError` naming the fields.  Otherwise
    each part comes from the resolver cache while fresh (``build.resolve_ttl``), else from
    ``resolvers`` (stale-if-error, see :mod:`bake.lock.cache`); with ``resolvers=None``
    anything but a fresh entry is :class:`~bake.errors.NotLocked`.  ``upgrade`` ignores a
    shipped lock and fresh entries (``bake lock --upgrade``).
    """
    spec = job.spec
    declared = declared_of(spec, job.base_ref)
    store = cache or resolver_cache()
    path = lock_path(spec)
    if use_shipped and not upgrade and path.is_file():
        return Locked(_shipped(job, declared, path, store, warn), (path,), None)
    ttl = settings.build.resolve_ttl
    clock = now()
    answers: list[tuple[Answer[Any], float]] = []  # each with its TTL
    python: PythonLock | None = None
    if spec.requirements:
        request = PythonRequest(spec.requirements, spec.only_binary, job.base_from,
                                job.base_digest, index_url_of(settings))
        answer = cached(
            store, request.cache_key(), what="the requirements", ttl=ttl, now=clock,
            fetch=None if resolvers is None else lambda: resolvers.python(request),
            encode=python_to_doc,
            decode=lambda doc: python_from_doc(doc, only_binary=spec.only_binary),
            warn=warn, refresh=upgrade,
        )
        answers.append((answer, ttl))
        python = answer.value
    endpoint = hub_endpoint_of(settings)

    def locked(asked: DeclaredRepo) -> LockedRepo:
        key = {"hub": asked.kind, "repo": asked.repo, "revision": asked.revision,
               "include": list(asked.include), "exclude": list(asked.exclude),
               "endpoint": endpoint}
        # A commit never moves: its files are fresh for ever.
        repo_ttl = math.inf if is_commit(asked.revision) else ttl
        answer = cached(
            store, key, what=f"{asked.kind} {asked.repo}@{asked.revision}",
            ttl=repo_ttl, now=clock,
            fetch=None if resolvers is None else lambda: resolvers.hub(asked),
            encode=repo_to_doc, decode=repo_from_doc,
            warn=warn, refresh=upgrade and not is_commit(asked.revision),
        )
        answers.append((answer, repo_ttl))
        return answer.value

    lock = Lock(
        declared=declared,
        base_digest=job.base_digest,
        python=python,
        models=tuple(locked(r) for r in declared.models),
        datasets=tuple(locked(r) for r in declared.datasets),
    )
    until = [a.stored_at + t for a, t in answers if not math.isinf(t)]
    return Locked(lock, (path, *(a.path for a, _ in answers)), min(until, default=None),
                  stale=any(a.stale for a, _ in answers))


def _shipped(job: PinnedJob, declared: Declared, path: Path, store: ResolverCache,
             warn: Callable[[str], None]) -> Lock:
    """A ``bake.lock`` beside the spec, checked against it.

    Its text is checked in full (``packaging`` included) the first time bake sees it, then
    remembered by digest, so that a key hit does not load ``packaging`` again.

    The base: a registry digest names the same bytes on every machine, so a lock whose
    base digest differs is stale (exit 2, "run bake lock").  A base made on this machine
    (``bake base build``, ``docker import``: no registry digest) is known only by its image
    id, which every machine's copy of it has differently; refusing would make a shipped lock
    useless with such bases, so bake builds on this machine's base and says so.  That is
    safe: the key holds this engine's base id, every locked file is still installed
    --require-hashes, and a base whose Python cannot take the locked wheels fails the
    install step (exit 3) rather than installing other bytes.
    """
    spec = job.spec
    text = read_lock_text(path)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    deep = not store.checked(digest)
    shipped = parse_lock(text, where=str(path), deep=deep)
    if deep:
        store.mark_checked(digest)
    changed = shipped.declared.changed(declared)
    if changed:
        raise SpecError(
            f"{LOCK_NAME} does not match the spec: {', '.join(changed)} changed since it "
            "was locked",
            path=str(path),
            hint=f"run `bake lock {spec.path}` to lock the spec again",
        )
    if shipped.base_digest != job.base_digest:
        if not job.base_is_local:
            raise SpecError(
                f"{LOCK_NAME} does not match the spec: base {job.base_ref} is now "
                f"{job.base_digest}, the lock has {shipped.base_digest}",
                path=str(path), field="tool.bake.base.digest",
                hint=f"run `bake lock {spec.path}` to lock the spec again",
            )
        warn(f"{LOCK_NAME} was locked on another copy of the base {job.base_ref} "
             f"({shipped.base_digest[:19]}); this engine's was made here "
             f"({job.base_digest[:19]}), so the job builds on it, every locked file "
             "hash-checked")
        shipped = dataclasses.replace(shipped, base_digest=job.base_digest)
    return shipped


def hub_locker(settings: Settings) -> HubLocker:
    """Lock a declared repo through :func:`bake.hub.lock_repo` (the real Hub client)."""
    endpoint = settings.hub_endpoint
    token = settings.env.hf_token or None

    def lock(asked: DeclaredRepo) -> LockedRepo:
        snap = lock_repo(asked.kind, asked.repo, asked.revision, asked.include, asked.exclude,
                         endpoint=endpoint, token=token)
        return LockedRepo(
            asked.kind, asked.repo, asked.revision, snap.commit, asked.include, asked.exclude,
            tuple(LockedFile(f.path, f.size, f.sha256, None if f.sha256 else f.blob_id)
                  for f in snap.files),
        )

    return lock

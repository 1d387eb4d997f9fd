"""The resolver cache: (declared inputs, base digest, index or Hub endpoint) -> a locked part.

One entry per part of a lock: the Python half (requirements, only_binary, base digest, index
URL) and each Hub repo (kind, repo, revision, include, exclude, endpoint), so that an outage
of the index does not cost the Hub's answers and the other way round.  An entry is *fresh*
for ``build.resolve_ttl`` after it was stored; a repo pinned by commit is fresh for ever (a
commit never moves).  :func:`cached` is the whole policy, HTTP's stale-if-error:

- fresh: use it, no network at all;
- stale or missing: resolve again and store the answer;
- the resolver cannot reach the index or the Hub (:class:`~bake.errors.UnreachableError`):
  use the entry however old, and warn; with no entry, a clear error naming what was
  unreachable.  Any other failure (no such version, a missing repo) is never hidden.

:func:`decide` is pure; the clock is passed in, so tests use a fake.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import BakeError, NotLocked, UnreachableError
from ..units import format_duration

__all__ = ["Answer", "Decision", "Entry", "ResolverCache", "cached", "decide"]

T = TypeVar("T")
FORMAT = 1


class Decision(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    MISSING = "missing"


@dataclass(frozen=True)
class Entry:
    stored_at: float  # seconds since the epoch
    value: Mapping[str, Any]


def decide(entry: Entry | None, now: float, ttl: float) -> Decision:
    """Whether an entry may answer without asking the network.  Pure."""
    if entry is None:
        return Decision.MISSING
    age = now - entry.stored_at
    # An entry from the future (a clock set back) is not trusted to be fresh.
    if 0 <= age < ttl or math.isinf(ttl):
        return Decision.FRESH
    return Decision.STALE


def key_digest(key: Mapping[str, Any]) -> str:
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ResolverCache:
    """Entries as JSON files under ``folder`` (bake's state dir ``/resolve``)."""

    folder: Path

    def path(self, key: Mapping[str, Any]) -> Path:
        return self.folder / f"{key_digest(key)}.json"

    def get(self, key: Mapping[str, Any]) -> Entry | None:
        """The entry for ``key``; None when there is none or it cannot be read."""
        try:
            doc = json.loads(self.path(key).read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT or doc.get("key") != json.loads(json.dumps(key)):
                return None
            stored = float(doc["stored_at"])
            value = doc["value"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(value, dict) or not math.isfinite(stored):
            return None
        return Entry(stored, value)

    def put(self, key: Mapping[str, Any], value: Mapping[str, Any], now: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        doc = {"format": FORMAT, "key": key, "stored_at": now, "value": value}
        tmp.write_text(json.dumps(doc, sort_keys=True, indent=1), encoding="utf-8")
        tmp.replace(path)

    def drop(self, key: Mapping[str, Any]) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    # A shipped lock's text, once read with every check (``packaging`` included), is
    # remembered by its digest, so that a key hit reads it again without that import.

    def checked(self, digest: str) -> bool:
        return (self.folder / "checked" / digest).is_file()

    def mark_checked(self, digest: str) -> None:
        folder = self.folder / "checked"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / digest).touch()


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A value from the cache or its resolver, and what it depends on."""

    value: T
    path: Path  # the entry's file (rewritten when the entry is)
    stored_at: float  # when the entry was made (now, for a value just resolved)
    stale: bool = False  # stale-if-error: the resolver could not be reached


def cached(
    cache: ResolverCache,
    key: Mapping[str, Any],
    *,
    what: str,
    ttl: float,
    now: float,
    fetch: Callable[[], T] | None,
    encode: Callable[[T], Mapping[str, Any]],
    decode: Callable[[Mapping[str, Any]], T],
    warn: Callable[[str], None],
    refresh: bool = False,
) -> Answer[T]:
    """The value for ``key``: from a fresh entry, else ``fetch()`` (stale-if-error).

    ``refresh`` (``bake lock --upgrade``) treats a fresh entry as stale.  ``what`` names the
    part for messages ("the requirements", "model org/name@main").  ``fetch=None`` (the fast
    path, which asks no network) makes anything but a fresh entry a :class:`NotLocked`.
    A failure of ``fetch`` whose ``unreachable`` is true (an :class:`UnreachableError`, or an
    Engine that does not answer) falls back on the entry however old, with a warning.
    """
    entry = cache.get(key)
    old: T | None = None
    if entry is not None:
        try:
            old = decode(entry.value)
        except Exception:  # noqa: BLE001 - an entry bake cannot read is as good as none
            entry = None
    decision = decide(entry, now, ttl)
    path = cache.path(key)
    if decision is Decision.FRESH and not refresh and old is not None and entry is not None:
        return Answer(old, path, entry.stored_at)
    if fetch is None:
        raise NotLocked(f"{what}: no fresh resolution is cached ({decision.value})")
    try:
        value = fetch()
    except BakeError as exc:
        if not getattr(exc, "unreachable", False):
            raise
        if entry is None or old is None:
            if isinstance(exc, UnreachableError):
                raise UnreachableError(
                    f"{exc.message}; no earlier resolution of {what} is cached to fall back on",
                    what=exc.what, hint=exc.hint,
                ) from None
            raise
        warn(f"{exc.message}; using the resolution of {what} from "
             f"{format_duration(max(0.0, now - entry.stored_at))} ago")
        return Answer(old, path, entry.stored_at, stale=True)
    cache.put(key, encode(value), now)
    return Answer(value, path, now)

"""bake's images on this engine: list them, prune the least recently used.

Only images named ``<registry.repository or "bake">:<64-hex key>`` are bake's;
nothing else on the engine is ever listed or touched.  "Last used" is the time
bake last built, hit, pulled or ran the key (:func:`bake.cache.store.last_used`);
an image bake never recorded counts from its creation.

Plan, then execute: :func:`plan_prune` is pure; :func:`prune` asks the engine, plans, and removes
by tag (never by id, never forced), so the engine itself refuses to remove an
image that a container -- running or stopped -- still uses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine import Engine
from ..errors import EngineError, UsageError
from ..units import format_size
from .store import last_used

__all__ = [
    "BakedImage",
    "PrunePlan",
    "PruneReport",
    "list_images",
    "plan_prune",
    "prune",
]

_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BakedImage:
    """One of bake's images on this engine."""

    image: str  # <repo>:<key>
    key: str
    template: str
    size: int  # the whole image, base included
    unique_size: int  # what removing it alone would free (layers no other image shares)
    created: float  # epoch seconds
    last_used: float | None  # epoch seconds; None: bake never recorded a use
    id: str
    in_use: bool = False  # a container (running or not) was made from it

    @property
    def recency(self) -> float:
        """When it was last wanted: its last use, else its creation."""
        return self.last_used if self.last_used is not None else self.created

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image, "key": self.key, "template": self.template, "size": self.size,
            "unique_size": self.unique_size, "created": _iso(self.created),
            "last_used": _iso(self.last_used) if self.last_used is not None else None,
            "id": self.id, "in_use": self.in_use,
        }

    def row(self) -> tuple[str, str, str, str, str, str]:
        now = time.time()
        used = _ago(now - self.last_used) if self.last_used is not None else "never"
        return (self.image, self.key[:12], self.template or "-", format_size(self.size),
                _ago(now - self.created), used + (" (in use)" if self.in_use else ""))


# --- the plan: pure --------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[BakedImage, ...]  # least recently used first
    spared: tuple[BakedImage, ...]  # would have gone, but a container uses them


def plan_prune(images: Sequence[BakedImage], *, now: float, older_than: float | None,
               keep_size: int | None) -> PrunePlan:
    """What to remove, least recently used first; never an image in use.

    First every image unused for longer than ``older_than``; then, while the
    images left take more than ``keep_size`` (counting what each alone holds,
    since the base layers they share stay anyway), the least recently used.
    """
    order = sorted(images, key=lambda i: (i.recency, i.created, i.image))
    remove: list[BakedImage] = []
    spared: list[BakedImage] = []

    def drop(image: BakedImage) -> None:
        (spared if image.in_use else remove).append(image)

    left = list(order)
    if older_than is not None:
        cutoff = now - older_than
        for image in order:
            if image.recency < cutoff:
                drop(image)
                if not image.in_use:
                    left.remove(image)
    if keep_size is not None:
        total = sum(i.unique_size for i in left)
        for image in list(left):
            if total <= keep_size:
                break
            if image.in_use:
                if image not in spared:
                    spared.append(image)
                continue
            remove.append(image)
            left.remove(image)
            total -= image.unique_size
    return PrunePlan(tuple(remove), tuple(spared))


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[BakedImage, ...]
    spared: tuple[BakedImage, ...]  # in use: kept
    kept: int  # bake images left on the engine
    errors: tuple[str, ...] = field(default=())

    @property
    def freed(self) -> int:
        return sum(i.unique_size for i in self.removed)

    def to_json(self) -> dict[str, object]:
        return {
            "removed": [i.to_json() for i in self.removed],
            "spared_in_use": [i.image for i in self.spared],
            "freed": self.freed,
            "kept": self.kept,
            "errors": list(self.errors),
        }

    def describe(self) -> str:
        if not self.removed:
            text = f"nothing to remove; {self.kept} baked image(s) kept"
        else:
            text = (f"removed {len(self.removed)} image(s), freed about "
                    f"{format_size(self.freed)}; {self.kept} kept")
        if self.spared:
            text += f"; {len(self.spared)} spared because a container uses it"
        if self.errors:
            text += "; could not remove: " + "; ".join(self.errors)
        return text


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def baked_from(entries: Iterable[dict[str, Any]], repository: str,
               in_use: set[str]) -> list[BakedImage]:
    """bake's images among the engine's image list (``/system/df`` or ``/images/json``)."""
    found: list[BakedImage] = []
    prefix = f"{repository}:"
    for entry in entries:
        labels = entry.get("Labels") or {}
        size = int(entry.get("Size") or 0)
        shared = int(entry.get("SharedSize") or -1)
        image_id = str(entry.get("Id") or "")
        for ref in entry.get("RepoTags") or []:
            if not ref.startswith(prefix):
                continue
            tag = ref[len(prefix):]
            if not _KEY.fullmatch(tag):
                continue
            found.append(BakedImage(
                image=ref, key=tag, template=str(labels.get("bake.template") or ""),
                size=size, unique_size=size - shared if shared >= 0 else size,
                created=float(entry.get("Created") or 0), last_used=None, id=image_id,
                in_use=image_id in in_use,
            ))
    return found


# --- the execution: the engine ---------------------------------------------------------------


def _engine_state(engine: Engine) -> tuple[list[dict[str, Any]], set[str]]:
    """(the engine's images with their shared sizes, ids of images any container uses)."""
    try:
        # /system/df knows each image's shared size; plain /images/json does not.
        entries = list(engine.disk_usage().get("Images") or [])
    except EngineError as exc:
        if exc.unreachable:
            raise
        # e.g. "a disk usage operation is already running": sizes then count whole images.
        entries = engine.images(label="bake.key")
    containers = engine.containers(all=True)
    in_use = {str(c.get("ImageID") or "") for c in containers}
    return entries, in_use


def _images(engine: Engine, repository: str) -> list[BakedImage]:
    entries, in_use = _engine_state(engine)
    return [replace(i, last_used=last_used(i.key))
            for i in baked_from(entries, repository, in_use)]


def list_images(engine: Engine, repository: str) -> list[BakedImage]:
    """bake's images of ``repository`` on this engine, most recently used first."""
    return sorted(_images(engine, repository), key=lambda i: i.recency, reverse=True)


def prune(engine: Engine, repository: str, *, older_than: float | None = None,
          keep_size: int | None = None) -> PruneReport:
    """Remove the least recently used of bake's images; never one a container uses."""
    if older_than is None and keep_size is None:
        raise UsageError(
            "say what to remove: --older-than (unused for that long) and/or --keep-size "
            "(at most that much kept)",
            hint="e.g. bake prune --older-than 7d, or bake prune --keep-size 50g",
        )
    images = _images(engine, repository)
    plan = plan_prune(images, now=time.time(), older_than=older_than, keep_size=keep_size)

    removed: list[BakedImage] = []
    spared = list(plan.spared)
    errors: list[str] = []
    for image in plan.remove:
        try:
            # By tag and unforced: the engine refuses if a container appeared meanwhile,
            # and an image that carries other names only loses this one.
            if not engine.remove_image(image.image):
                continue
        except EngineError as exc:
            if exc.status == 409:
                spared.append(replace(image, in_use=True))
            elif exc.unreachable:
                raise
            else:
                errors.append(f"{image.image}: {exc.message}")
            continue
        removed.append(image)
    return PruneReport(tuple(removed), tuple(spared), len(images) - len(removed), tuple(errors))

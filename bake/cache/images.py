"""bake's images on this engine: list them, prune the least recently used.

Only images named ``<registry.repository or "bake">:<64-hex key>`` are bake's;
nothing else on the engine is ever listed or touched.  "Last used" is the time
bake last built, hit, pulled or ran the key (:func:`bake.cache.store.last_used`);
an image bake never recorded counts from its creation.

Stacks (:mod:`bake.stacks`): an image whose deps were built on a stack names it in its
``bake.stack.parent`` label, and its layers start with the stack's, so what it *adds*
is its size less the stack's (a stack's own, its size less its base's).  A stack is
wanted as long as an image built on it is: prune counts a stack as recently used as
the most recent image on it, removes those images first, and never removes a stack
while an image built on it stays (in use, or within the limits).

Plan, then execute: :func:`plan_prune` is pure; :func:`prune` asks the engine, plans, and removes
by tag (never by id, never forced), so the engine itself refuses to remove an
image that a container -- running or stopped -- still uses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine import Engine
from ..errors import EngineError, UsageError
from ..stacks.labels import parent_of, read_stack
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
    stack: bool = False  # a stack: other images' deps may be built on it
    variant: str = ""  # "template/variant" of a stack ``bake prebake`` made
    parent: str = ""  # the key of the stack its deps were built on; "" on the base
    #: Bytes beyond its stack (a stack: beyond its base); None: not known (no parent or base
    #: image on the engine to subtract), and ``unique_size`` stands in.
    adds: int | None = None
    base: str = ""  # the base image's digest, from its label

    @property
    def recency(self) -> float:
        """When it was last wanted: its last use, else its creation."""
        return self.last_used if self.last_used is not None else self.created

    @property
    def footprint(self) -> int:
        """What it holds on disk of its own: what it adds, else what no other image shares."""
        return self.adds if self.adds is not None else self.unique_size

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image, "key": self.key, "template": self.template, "size": self.size,
            "unique_size": self.unique_size, "created": _iso(self.created),
            "last_used": _iso(self.last_used) if self.last_used is not None else None,
            "id": self.id, "in_use": self.in_use, "stack": self.stack,
            "variant": self.variant or None, "parent": self.parent or None, "adds": self.adds,
        }

    def row(self) -> tuple[str, str, str, str, str, str, str, str]:
        now = time.time()
        used = _ago(now - self.last_used) if self.last_used is not None else "never"
        kind = ("stack " + self.variant).strip() if self.stack else self.template or "-"
        return (self.image, self.key[:12], kind, self.parent[:12] if self.parent else "base",
                format_size(self.size), "?" if self.adds is None else format_size(self.adds),
                _ago(now - self.created), used + (" (in use)" if self.in_use else ""))


#: ``bake images``' columns, in :meth:`BakedImage.row`'s order.
COLUMNS = ("image", "key", "template", "built on", "size", "adds", "created", "last used")


# --- the plan: pure --------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[BakedImage, ...]  # least recently used first; images before their stacks
    spared: tuple[BakedImage, ...]  # would have gone, but a container uses them
    held: tuple[BakedImage, ...] = ()  # would have gone, but an image kept is built on them


def children_of(images: Sequence[BakedImage]) -> dict[str, list[BakedImage]]:
    """Stack key -> the listed images built on it."""
    keys = {i.key for i in images}
    out: dict[str, list[BakedImage]] = {}
    for image in images:
        if image.parent and image.parent in keys and image.parent != image.key:
            out.setdefault(image.parent, []).append(image)
    return out


def _wanted(images: Sequence[BakedImage],
            children: Mapping[str, list[BakedImage]]) -> dict[str, tuple[float, int]]:
    """key -> (when it was last wanted, its height): a stack is wanted when any image built
    on it is, and comes after them (height: 0 for an image nothing is built on)."""
    memo: dict[str, tuple[float, int]] = {}

    def visit(image: BakedImage, path: frozenset[str]) -> tuple[float, int]:
        if image.key in memo:
            return memo[image.key]
        recency, height = image.recency, 0
        for child in children.get(image.key, ()):
            if child.key in path:  # labels that loop: not from bake; ignore the loop
                continue
            r, h = visit(child, path | {child.key})
            recency, height = max(recency, r), max(height, h + 1)
        memo[image.key] = (recency, height)
        return memo[image.key]

    for image in images:
        visit(image, frozenset({image.key}))
    return memo


def plan_prune(images: Sequence[BakedImage], *, now: float, older_than: float | None,
               keep_size: int | None) -> PrunePlan:
    """What to remove, least recently used first; never an image in use, never a stack an
    image that stays is built on.

    First every image unwanted for longer than ``older_than``; then, while the images
    left take more than ``keep_size`` (counting what each holds of its own, since the
    base layers they share stay anyway), the least recently wanted.  A stack counts as
    wanted when the latest image on it was, and goes only after all of them.
    """
    children = children_of(images)
    wanted = _wanted(images, children)
    order = sorted(images, key=lambda i: (wanted[i.key][0], wanted[i.key][1], i.created,
                                          i.image))
    gone: set[str] = set()
    remove: list[BakedImage] = []
    spared: list[BakedImage] = []
    held: list[BakedImage] = []

    def try_remove(image: BakedImage) -> bool:
        if image.key in gone:
            return True
        if image.in_use:
            if image not in spared:
                spared.append(image)
            return False
        if any(c.key not in gone for c in children.get(image.key, ())):
            if image not in held:
                held.append(image)
            return False
        gone.add(image.key)
        remove.append(image)
        if image in held:
            held.remove(image)
        return True

    if older_than is not None:
        cutoff = now - older_than
        for image in order:
            if wanted[image.key][0] < cutoff:
                try_remove(image)
    if keep_size is not None:
        total = sum(i.footprint for i in images if i.key not in gone)
        for image in order:
            if total <= keep_size:
                break
            if image.key not in gone and try_remove(image):
                total -= image.footprint
    return PrunePlan(tuple(remove), tuple(spared), tuple(held))


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[BakedImage, ...]
    spared: tuple[BakedImage, ...]  # in use: kept
    kept: int  # bake images left on the engine
    errors: tuple[str, ...] = field(default=())
    held: tuple[BakedImage, ...] = ()  # stacks kept because an image that stays is on them

    @property
    def freed(self) -> int:
        return sum(i.footprint for i in self.removed)

    def to_json(self) -> dict[str, object]:
        return {
            "removed": [i.to_json() for i in self.removed],
            "spared_in_use": [i.image for i in self.spared],
            "kept_as_stack": [i.image for i in self.held],
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
        if self.held:
            text += f"; {len(self.held)} stack(s) kept because an image that stays is built on it"
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
            stack = read_stack(ref, tag, labels)
            found.append(BakedImage(
                image=ref, key=tag, template=str(labels.get("bake.template") or ""),
                size=size, unique_size=size - shared if shared >= 0 else size,
                created=float(entry.get("Created") or 0), last_used=None, id=image_id,
                in_use=image_id in in_use, stack=stack is not None,
                variant=stack.variant if stack is not None else "",
                parent=parent_of(labels),
                base=str(labels.get("org.opencontainers.image.base.digest") or ""),
            ))
    return with_adds(found, entries)


def with_adds(images: Sequence[BakedImage], entries: Iterable[dict[str, Any]]) -> list[BakedImage]:
    """Each image with the bytes it adds beyond its stack (a stack: beyond its base).

    An image built on a stack starts with the stack's layers (``FROM`` it), so the
    difference of the two sizes is exactly its own layers'.
    """
    sizes: dict[str, int] = {}
    for entry in entries:
        size = int(entry.get("Size") or 0)
        sizes[str(entry.get("Id") or "")] = size
        for ref in entry.get("RepoDigests") or []:
            sizes[ref.partition("@")[2]] = size
    by_key = {i.key: i for i in images}
    out = []
    for image in images:
        below = by_key[image.parent].size if image.parent in by_key else (
            sizes.get(image.base) if image.stack and not image.parent else None)
        adds = image.size - below if below is not None and below <= image.size else None
        out.append(replace(image, adds=adds))
    return out


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
    children = children_of(images)

    removed: list[BakedImage] = []
    gone: set[str] = set()  # keys removed, or found gone already
    spared = list(plan.spared)
    held = list(plan.held)
    errors: list[str] = []
    for image in plan.remove:
        if any(c.key not in gone for c in children.get(image.key, ())):
            # An image on this stack could not be removed after all: the stack stays.
            held.append(image)
            continue
        try:
            # By tag and unforced: the engine refuses if a container appeared meanwhile,
            # and an image that carries other names only loses this one.
            if not engine.remove_image(image.image):
                gone.add(image.key)
                continue
        except EngineError as exc:
            if exc.status == 409:
                spared.append(replace(image, in_use=True))
            elif exc.unreachable:
                raise
            else:
                errors.append(f"{image.image}: {exc.message}")
            continue
        gone.add(image.key)
        removed.append(image)
    return PruneReport(tuple(removed), tuple(spared), len(images) - len(removed), tuple(errors),
                       tuple(held))

"""Which stack a job's deps layer is built on.  Pure.

A *stack* is a baked deps layer: an image whose ``/opt/venv`` holds an exact set of
locked wheels on an exact base.  A job may build on a stack when the stack holds
nothing but wheels the job's lock names, byte for byte (same sha256: so the same
name, version and file), on the same base image (digest) and target interpreter, made
by the same deps recipe.  The job's own step then installs only the rest.

:func:`choose` picks the stack that holds the most of the job's wheels; among equals
the smallest key wins, so every machine that sees the same candidates picks the same
one.  A stack with anything the job's lock does not name (another version, another
build of the same version, a package the job does not want) is never a candidate: a
conflict is never resolved, it is avoided.  No candidate is no error: the job builds
on its base exactly as it would without stacks.

The choice never touches the job's key: the key is the hash of the lock, and the
installed set is the lock's whichever stack it was built on.

A stack's identity (:meth:`Held.key`) is the sha256 of a canonical manifest of what
it holds, so a stack is ``<repository>:<key>`` like every baked image, and the same
set on the same base has the same name on every machine and in the registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from ..job import ResolvedJob
from ..lock.format import PythonLock

__all__ = [
    "STACK_FORMAT",
    "Choice",
    "Held",
    "Need",
    "Stack",
    "StacksMode",
    "Wheel",
    "choose",
    "need_of",
    "preferred_pins",
    "sdists_of",
    "stacks_mode",
    "variant_may_fit",
]

#: Bump when what a stack holds, or how it is laid out, changes meaning.
STACK_FORMAT = 1

StacksMode = Literal["variants", "images", "none"]


@dataclass(frozen=True)
class Wheel:
    """One locked file: a wheel (an sdist has the same shape, for the job's own step)."""

    name: str  # canonical (PEP 503)
    version: str
    file: str
    sha256: str  # 64 lowercase hex
    url: str = field(default="", compare=False)  # where it was served when locked


@dataclass(frozen=True)
class Held:
    """What a deps layer holds, as far as building on it goes."""

    base_digest: str  # "sha256:..." of the base image
    recipe: str  # "sha256:..." of the deps recipe (:attr:`bake.templates.Template.recipe`)
    python: str  # the target interpreter, e.g. "cpython 3.11.2 cp311 x86_64 glibc 2.36"
    wheels: frozenset[str]  # the sha256 of every wheel installed

    def manifest(self) -> dict[str, Any]:
        """Canonical inputs of the stack's key: no names (a sha256 names the bytes)."""
        return {
            "stack": STACK_FORMAT,
            "base": self.base_digest,
            "recipe": self.recipe,
            "python": self.python,
            "wheels": sorted(self.wheels),
        }

    @cached_property
    def key(self) -> str:
        text = json.dumps(self.manifest(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def fits(self, other: Held) -> bool:
        """Could a layer holding ``other`` be built on this one?"""
        return (self.base_digest == other.base_digest and self.recipe == other.recipe
                and self.python == other.python and self.wheels <= other.wheels)


@dataclass(frozen=True)
class Need:
    """The job's side: its base, recipe, target, and every locked wheel it installs.

    Sdists are not here: they are built in the job's own step and never shared.
    """

    base_digest: str
    recipe: str
    python: str
    wheels: tuple[Wheel, ...]  # sorted by name

    @cached_property
    def held(self) -> Held:
        """What the job's deps layer holds once its wheels are installed."""
        return Held(self.base_digest, self.recipe, self.python,
                    frozenset(w.sha256 for w in self.wheels))


def need_of(job: ResolvedJob) -> Need:
    """A locked job's :class:`Need`: its base, its template's deps recipe, its target
    interpreter, and every locked wheel of its lock (not its sdists)."""
    python = job.lock.python
    target = ""
    if python is not None:
        t = python.target
        target = f"{t.implementation} {t.python} {t.abi} {t.machine} {t.libc}".strip()
    wheels = tuple(Wheel(d.name, d.version, d.file, d.sha256, d.url)
                   for d in job.lock.distributions if d.is_wheel)
    return Need(job.lock.base_digest, job.template.recipe, target,
                tuple(sorted(wheels, key=lambda w: w.name)))


def sdists_of(job: ResolvedJob) -> tuple[Wheel, ...]:
    """A locked job's sdists (``only_binary = false``): built in its own step, never shared."""
    return tuple(Wheel(d.name, d.version, d.file, d.sha256, d.url)
                 for d in job.lock.distributions if not d.is_wheel)


@dataclass(frozen=True)
class Stack:
    """A candidate: a baked deps layer, on this engine or in the registry."""

    image: str  # <repository>:<key>
    held: Held
    variant: str = ""  # "template/variant" when ``bake prebake`` made it
    in_registry: bool = False  # not on this engine: it has to be pulled first

    @property
    def key(self) -> str:
        return self.held.key

    def describe(self) -> str:
        what = f"stack {self.key[:12]}"
        if self.variant:
            what += f" ({self.variant})"
        return what + (" from the registry" if self.in_registry else "")


@dataclass(frozen=True)
class Choice:
    """Where the job's deps layer starts, and what its own step installs."""

    stack: Stack | None  # None: the base image
    install: tuple[Wheel, ...]  # the job's wheels the stack lacks (all of them on the base)
    considered: int = 0  # candidates that were looked at
    reason: str = field(default="", compare=False)

    @property
    def parent(self) -> str:
        """The stack's key for the image's label; "" on the base."""
        return self.stack.key if self.stack is not None else ""


def stacks_mode(value: str) -> StacksMode:
    """The seller's ``build.stacks`` (checked by the settings) as a mode."""
    if value == "variants":
        return "variants"
    if value == "images":
        return "images"
    return "none"


def choose(need: Need, candidates: Iterable[Stack], mode: StacksMode) -> Choice:
    """The stack that holds the most of ``need``'s wheels and nothing else; ties: lowest key.

    ``mode`` is the seller's ``build.stacks``: "variants" takes only stacks that
    ``bake prebake`` made, "images" any stack, "none" never builds on one.
    """
    everything = tuple(need.wheels)
    if mode == "none":
        return Choice(None, everything, reason="build.stacks = \"none\": built on the base")
    seen = list(candidates)
    fitting = [s for s in seen
               if s.held.wheels and s.held.fits(need.held) and (mode == "images" or s.variant)]
    if not fitting:
        return Choice(None, everything, considered=len(seen),
                      reason=f"no stack holds only wheels of this lock ({len(seen)} looked at): "
                      "built on the base")
    # On this engine before the registry: the same key is the same content, no pull needed.
    best = min(fitting, key=lambda s: (-len(s.held.wheels), s.key, s.in_registry))
    rest = tuple(w for w in everything if w.sha256 not in best.held.wheels)
    return Choice(best, rest, considered=len(seen),
                  reason=f"built on {best.describe()}: it holds {len(best.held.wheels)} of "
                  f"{len(everything)} wheels, {len(rest)} installed on it")


def preferred_pins(lock: PythonLock,
                   variants: Iterable[tuple[str, PythonLock]]) -> tuple[str, PythonLock] | None:
    """The prebaked variant whose versions a resolution should keep to, if any.  Pure.

    A variant's stack fits a job only when the job's lock holds every wheel of it, byte for
    byte; a job that leaves a dependency unpinned (``torch`` pulls a dozen) locks the newest
    release of it, which a stack baked a week earlier lacks, and builds on the base.  The
    variant returned holds only projects ``lock`` holds, some at other files: resolving
    again with its pins as constraints may make it fit.  The largest such variant (the
    most wheels, then the lowest name); None when every one already fits or none could.
    """
    held = {d.name: d.sha256 for d in lock.distributions}
    best: tuple[tuple[int, str], tuple[str, PythonLock]] | None = None
    for name, variant in variants:
        wheels = variant.distributions
        if (not wheels or variant.target != lock.target
                or any(d.name not in held or not d.is_wheel for d in wheels)
                or all(held[d.name] == d.sha256 for d in wheels)):
            continue
        rank = (-len(wheels), name)
        if best is None or rank < best[0]:
            best = (rank, (name, variant))
    return None if best is None else best[1]


def variant_may_fit(requirements: Iterable[str], need: Need) -> bool:
    """Could a variant declaring ``requirements`` be a stack of ``need``'s?  A cheap test on
    the declarations alone, before anything is locked: every requirement names a project
    the job's lock holds, at a version its specifier allows (so ``numpy==2.1.3`` rules a
    variant out for a job locked to numpy 2.3.5, without resolving the variant)."""
    from packaging.requirements import InvalidRequirement, Requirement  # noqa: PLC0415
    from packaging.utils import canonicalize_name  # noqa: PLC0415

    held = {w.name: w.version for w in need.wheels}
    asked = list(requirements)
    if not asked:
        return False
    for line in asked:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return False
        version = held.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            return False
    return True

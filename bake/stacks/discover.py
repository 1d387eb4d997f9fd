"""The stacks a job could build on: those on this engine, and prebaked ones in the registry.

On this engine a stack is a baked image ``<repository>:<key>`` whose ``bake.stack`` label
says what it holds and hashes to its key (:func:`~bake.stacks.labels.read_stack`); one
list call finds them all.  In the registry nothing can be listed cheaply, so the
candidates there are the variants the templates declare: the caller computes a
variant's lock (the resolver cache, or a resolution), from which its key follows, and
:func:`registry_stacks` keeps those the registry has.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ..engine import Engine
from .choice import Held, Need, Stack
from .labels import STACK, read_stack

__all__ = ["engine_stacks", "registry_stacks"]

_KEY = re.compile(r"[0-9a-f]{64}")


def engine_stacks(engine: Engine, repository: str) -> list[Stack]:
    """Every stack of ``repository`` on this engine (one Engine API call)."""
    found: dict[str, Stack] = {}
    prefix = f"{repository}:"
    for entry in engine.images(label=STACK):
        labels = entry.get("Labels") or {}
        for ref in entry.get("RepoTags") or []:
            tag = ref[len(prefix):] if ref.startswith(prefix) else ""
            if not _KEY.fullmatch(tag):
                continue
            stack = read_stack(ref, tag, labels)
            if stack is not None:
                found[ref] = stack
    return [found[ref] for ref in sorted(found)]


def registry_stacks(
    need: Need,
    variants: Iterable[tuple[str, Held | None]],
    *,
    repository: str,
    exists: Callable[[str], bool],
    skip: Iterable[str] = (),
) -> list[Stack]:
    """The prebaked variants in the registry that could be the job's stack.

    ``variants``: ("template/variant", what its deps layer holds on the job's base, or None
    when that is unknown).  Only those that fit the job are looked up (``exists``: one
    registry request each); ``skip`` holds keys already on this engine.
    """
    known = set(skip)
    out: list[Stack] = []
    for name, held in variants:
        if held is None or not held.wheels or held.key in known or not held.fits(need.held):
            continue
        known.add(held.key)
        image = f"{repository}:{held.key}"
        if exists(image):
            out.append(Stack(image, held, name, in_registry=True))
    return out

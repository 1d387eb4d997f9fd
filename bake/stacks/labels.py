"""The labels a baked image carries about stacks.  Pure.

::

    bake.stack          what a stack holds: {"format", "base", "recipe", "python",
                        "wheels": [sha256, ...]} (canonical JSON); "" on a job's image
    bake.stack.variant  "template/variant" on a stack ``bake prebake`` made; "" otherwise
    bake.stack.parent   the key of the stack the image's deps were built on; "" on the base

Every image bake builds sets all three, empty where they do not apply: a child image
inherits its parent's labels, and a job built on a stack must not claim to be one.

The wheels are listed by sha256 alone (a sha256 names the bytes, so the name, version
and file too): 67 bytes a wheel in the label, so that a stack of a thousand wheels is a
68 KB argument, well within the 128 KiB Linux allows one argument of ``docker build``
(MAX_ARG_STRLEN).  A set larger than :data:`MAX_STACK_LABEL` is not made a stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from .choice import STACK_FORMAT, Held, Stack

__all__ = [
    "MAX_STACK_LABEL",
    "PARENT",
    "STACK",
    "VARIANT",
    "encode_held",
    "parent_of",
    "read_stack",
    "stack_labels",
]

STACK = "bake.stack"
VARIANT = "bake.stack.variant"
PARENT = "bake.stack.parent"

#: Most characters of the ``bake.stack`` label: below one argv string's 128 KiB, with room
#: for ``--label bake.stack=`` itself.
MAX_STACK_LABEL = 120_000

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_KEY = re.compile(r"[0-9a-f]{64}")
_VARIANT = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")


def encode_held(held: Held) -> str | None:
    """The ``bake.stack`` label of a stack holding ``held``; None when it would be too long."""
    text = json.dumps(
        {"format": STACK_FORMAT, "base": held.base_digest, "recipe": held.recipe,
         "python": held.python, "wheels": sorted(held.wheels)},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return text if len(text) <= MAX_STACK_LABEL else None


def stack_labels(held: Held | None, *, variant: str = "", parent: str = "") -> dict[str, str]:
    """All three labels, for any image bake builds (``held``: None unless it is a stack)."""
    if variant and not _VARIANT.fullmatch(variant):
        raise ValueError(f"not a template/variant name: {variant!r}")
    if parent and not _KEY.fullmatch(parent):
        raise ValueError(f"not a stack key: {parent!r}")
    encoded = encode_held(held) if held is not None else ""
    if encoded is None:
        raise ValueError(f"a stack of {len(held.wheels) if held else 0} wheels does not fit "
                         "in one label")
    return {STACK: encoded, VARIANT: variant if held is not None else "", PARENT: parent}


def read_stack(image: str, key: str, labels: Mapping[str, str] | None) -> Stack | None:
    """The stack an image is, from its labels; None when it is not one.

    Strict: a label that does not parse, or whose set does not hash to the image's own key
    (its tag), makes the image no stack at all, never a stack of some other set.
    """
    if not labels:
        return None
    text = labels.get(STACK) or ""
    if not text or len(text) > MAX_STACK_LABEL:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != STACK_FORMAT:
        return None
    base, recipe, python, wheels = (doc.get(k) for k in ("base", "recipe", "python", "wheels"))
    if not (isinstance(base, str) and _DIGEST.fullmatch(base)
            and isinstance(recipe, str) and _DIGEST.fullmatch(recipe)
            and isinstance(python, str) and python.isprintable() and len(python) < 200
            and isinstance(wheels, list)
            and all(isinstance(w, str) and _SHA256.fullmatch(w) for w in wheels)):
        return None
    held = Held(base, recipe, python, frozenset(wheels))
    if held.key != key:
        return None
    variant = labels.get(VARIANT) or ""
    return Stack(image, held, variant if _VARIANT.fullmatch(variant) else "")


def parent_of(labels: Mapping[str, str] | None) -> str:
    """The key of the stack an image was built on; "" on the base (or when not said)."""
    parent = (labels or {}).get(PARENT) or ""
    return parent if _KEY.fullmatch(parent) else ""

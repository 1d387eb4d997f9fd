"""JobSpec -> PinnedJob (:mod:`bake.job`): what the engine and the spec's folder pin.

The template is found, the base image pinned to its digest (the registry digest when
the engine has one, else the local image id), each job file to the sha256 of its
bytes.  What comes from the package index and the Hub is the lock stage's
(:mod:`bake.lock.locking`), which starts from this value.  The key is computed from
both, so a rebuilt base or an edited file gives a new key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from .engine import Engine
from .errors import EngineError, SpecError
from .job import PinnedJob
from .reference import parse_image_ref
from .settings import Settings
from .spec import JobSpec
from .templates import find_template
from .units import format_size

__all__ = ["BaseLookup", "base_digest", "check_context_size", "resolve"]

#: ``base_lookup(ref)`` -> (what FROM should say, the digest that feeds the key).
BaseLookup = Callable[[str], tuple[str, str]]


def resolve(
    spec: JobSpec,
    settings: Settings,
    *,
    base_lookup: BaseLookup,
) -> PinnedJob:
    """Pin the spec's base and files.  ``base_lookup`` asks the Engine (:func:`base_digest`,
    or a fixed answer in unit tests)."""
    template = find_template(spec.template, settings.build.templates)
    base_ref = spec.base or template.default_base
    if not settings.base_allowed(base_ref):
        field = "base" if spec.base else "template"
        raise SpecError(
            f"base image {base_ref!r} is not allowed on this host",
            field=field,
            hint=f"the seller allows: {', '.join(settings.build.bases) or 'none'}",
        )
    check_context_size(spec, settings.build.max_context)
    base_from, digest = base_lookup(base_ref)
    return PinnedJob(
        spec=spec,
        template=template,
        base_ref=base_ref,
        base_from=base_from,
        base_digest=digest,
        file_digests=tuple(_sha256(f.source) for f in spec.files),
    )


def check_context_size(spec: JobSpec, limit: int) -> None:
    """The seller's bound on the job files a build copies (``build.max_context``), checked
    before any of them is read: exit 2 naming the limit and the largest files."""
    total = sum(f.size for f in spec.files)
    if total <= limit:
        return
    largest = sorted(spec.files, key=lambda f: f.size, reverse=True)[:3]
    names = ", ".join(f"{f.dest} ({format_size(f.size)})" for f in largest)
    raise SpecError(
        f"job files total {format_size(total)}, more than this host allows "
        f"(build.max_context = {format_size(limit)}); the largest: {names}",
        field="job.files",
        hint="ship data as a [[datasets]] entry (fetched at setup), or ask the seller to "
        "raise build.max_context",
    )


def base_digest(engine: Engine, ref: str, *, pull: bool = True) -> tuple[str, str]:
    """(what FROM should say, the digest that feeds the key) for a base image.

    A base the engine does not have is pulled (by the engine, outside the proxy:
    DESIGN.md, which is why the seller's ``build.bases`` limits what a job may name).
    """
    info = engine.inspect_image(ref)
    if info is None and pull:
        try:
            engine.pull(ref)
        except EngineError as exc:
            raise EngineError(
                f"cannot pull the base image {ref}: {exc.message}",
                hint=f"pull it by hand, or make one from Debian packages: bake base build "
                f"--tag {ref}",
            ) from exc
        info = engine.inspect_image(ref)
    if info is None:
        raise EngineError(
            f"base image {ref!r} is not on this engine and could not be pulled",
            hint=f"pull it, or make one from Debian packages: bake base build --tag {ref}",
        )
    parsed = parse_image_ref(ref)
    if parsed.digest:
        return ref, parsed.digest
    for repo_digest in info.get("RepoDigests") or []:
        name, _, digest = repo_digest.partition("@")
        if name == parsed.repository and digest.startswith("sha256:"):
            return f"{parsed}@{digest}", digest
    # An image made here (`bake base build`, `docker import`) has no registry
    # digest; its id is the digest of its config, which pins it just as well.
    return ref, str(info["Id"])


def _sha256(path: Any) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

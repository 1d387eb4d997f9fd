"""JobSpec -> ResolvedJob (:mod:`bake.job`): pin what a name alone does not fix.

The base image is pinned to its digest (the registry digest when the engine has
one, else the local image id), each model's and dataset's branch or tag to its
commit, each job file to the sha256 of its bytes.  The key is computed from the
result, so a moved branch or a rebuilt base gives a new key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import hub as hub_api
from .engine import Engine
from .errors import EngineError, SpecError
from .job import ResolvedJob, ResolvedRepo
from .reference import parse_image_ref
from .settings import Settings
from .spec import HubRepo, JobSpec
from .templates import find_template
from .units import format_size

__all__ = ["BaseLookup", "ClientHub", "Hub", "base_digest", "check_context_size", "resolve"]

#: ``base_lookup(ref)`` -> (what FROM should say, the digest that feeds the key).
BaseLookup = Callable[[str], tuple[str, str]]


def resolve(
    spec: JobSpec,
    settings: Settings,
    *,
    base_lookup: BaseLookup,
    hub: Hub | None = None,
) -> ResolvedJob:
    """Pin the spec's inputs.  ``base_lookup`` asks the Engine (:func:`base_digest`, or a
    fixed answer in unit tests); ``hub`` is asked only when the spec names models or
    datasets (default: the real Hub of the settings)."""
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
    models: tuple[ResolvedRepo, ...] = ()
    datasets: tuple[ResolvedRepo, ...] = ()
    if spec.models or spec.datasets:
        client = hub if hub is not None else ClientHub.from_settings(settings)
        models = tuple(_pin(r, client) for r in spec.models)
        datasets = tuple(_pin(r, client) for r in spec.datasets)
    return ResolvedJob(
        spec=spec,
        template=template,
        base_ref=base_ref,
        base_from=base_from,
        base_digest=digest,
        models=models,
        datasets=datasets,
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


class Hub(Protocol):
    """What resolving needs of the Hugging Face Hub; unit tests swap in a fake."""

    def resolve_revision(self, repo: HubRepo) -> str:
        """The 40-hex commit the repo's branch, tag or commit names now."""

    def list_files(self, repo: HubRepo, commit: str) -> list[str]:
        """The files a fetch of the repo at ``commit`` with its patterns gets; an error when an
        include pattern matches nothing or the token cannot read them."""


@dataclass(frozen=True)
class ClientHub:
    """The real Hub through ``bake.hub`` (the one module that imports huggingface_hub)."""

    endpoint: str | None
    token: str | None = field(default=None, repr=False)  # never in a repr, a log or a message

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientHub:
        return cls(settings.hub_endpoint, settings.env.hf_token or None)

    def resolve_revision(self, repo: HubRepo) -> str:
        return hub_api.resolve_revision(repo.kind, repo.repo, repo.revision,
                                        endpoint=self.endpoint, token=self.token)

    def list_files(self, repo: HubRepo, commit: str) -> list[str]:
        return hub_api.list_matching_files(repo.kind, repo.repo, commit, repo.include,
                                           repo.exclude, endpoint=self.endpoint, token=self.token)


def _pin(repo: HubRepo, hub: Hub) -> ResolvedRepo:
    commit = hub.resolve_revision(repo)
    # At key time, not in the build: an include pattern that matches nothing, or a gated
    # repo the token cannot read, is a bad spec (exit 2), not a setup failure minutes later.
    hub.list_files(repo, commit)
    return ResolvedRepo(repo, commit)


def _sha256(path: Any) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""A job with its inputs pinned: the value between resolving and the key.  Pure.

:func:`bake.resolve.resolve` makes it from a :class:`~bake.spec.JobSpec`: the
base image pinned to its digest, each Hub repo's branch or tag to its commit,
each job file to the sha256 of its bytes.  The key (:mod:`bake.cache.key`) and
the rendered build context (:mod:`bake.builder.render`) are computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import HubRepo, JobSpec
from .templates import Template

__all__ = ["ResolvedJob", "ResolvedRepo"]


@dataclass(frozen=True)
class ResolvedRepo:
    repo: HubRepo
    commit: str


@dataclass(frozen=True)
class ResolvedJob:
    spec: JobSpec
    template: Template
    base_ref: str  # as the spec or template names it
    base_from: str  # what the Dockerfile's FROM says: ref@digest when the engine knows one
    base_digest: str  # "sha256:..."
    models: tuple[ResolvedRepo, ...]
    datasets: tuple[ResolvedRepo, ...]
    file_digests: tuple[str, ...]

    @property
    def hub_repos(self) -> tuple[ResolvedRepo, ...]:
        return self.models + self.datasets

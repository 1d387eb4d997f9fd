"""A job with its inputs pinned, then locked: the values between the spec and the key.  Pure.

:func:`bake.resolve.resolve` makes a :class:`PinnedJob` from a :class:`~bake.spec.JobSpec`:
the template found, the base image pinned to its digest, each job file to the sha256 of its
bytes.  The lock stage (:func:`bake.lock.locking.lock_for`) then answers everything else that
comes from outside -- the requirements to exact files and hashes, each Hub repo to its commit
and file digests -- and :meth:`PinnedJob.locked` makes the :class:`ResolvedJob` that the key
(:mod:`bake.cache.key`) and the rendered build context (:mod:`bake.builder.render`) are
computed from.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lock.format import Lock, LockedRepo
from .spec import JobSpec
from .templates import Template

__all__ = ["PinnedJob", "ResolvedJob"]


@dataclass(frozen=True)
class PinnedJob:
    spec: JobSpec
    template: Template
    base_ref: str  # as the spec or template names it
    base_from: str  # what the Dockerfile's FROM says: ref@digest when the engine knows one
    base_digest: str  # "sha256:..."
    file_digests: tuple[str, ...]

    @property
    def base_is_local(self) -> bool:
        """A base with no registry digest (``bake base build``, ``docker import``): its digest
        is this engine's image id, which another machine's copy of the "same" base does not
        share."""
        return "@" not in self.base_from

    def locked(self, lock: Lock) -> ResolvedJob:
        return ResolvedJob(self.spec, self.template, self.base_ref, self.base_from,
                           self.base_digest, self.file_digests, lock)


@dataclass(frozen=True)
class ResolvedJob(PinnedJob):
    lock: Lock

    @property
    def models(self) -> tuple[LockedRepo, ...]:
        return self.lock.models

    @property
    def datasets(self) -> tuple[LockedRepo, ...]:
        return self.lock.datasets

    @property
    def hub_repos(self) -> tuple[LockedRepo, ...]:
        return self.lock.repos

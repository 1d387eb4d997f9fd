"""The pipeline's first act: which image a job spec names, and whether this engine has it.

    settings -> spec -> resolve (base digest, file digests) -> lock -> key -> local hit

Every verb of :mod:`bake.pipeline` starts here.  Each lookup of a spec on disk
writes down what it read (:mod:`bake.cache.hits`), and the fast path
(:mod:`bake.fast`) answers the next key hit from that record, loading none of
this act's modules.  The act is a module of its own because it is one story the
verbs share and the fast path's records describe: what a key depends on.

The lock stage (:func:`bake.lock.locking.lock_for`) answers from a shipped
``bake.lock`` or a fresh resolver cache entry; anything else needs the resolvers,
which only the pipeline has (they run a confined setup step and ask the Hub) and
passes in.  The fast path passes none: a missing or stale lock is then
:class:`~bake.errors.NotLocked`, "no fast answer", never a network request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import hits
from .cache.key import ImageKey, compute_key
from .engine import Engine
from .job import ResolvedJob
from .lock.format import Lock
from .lock.locking import Locked, Resolvers, lock_for
from .resolve import base_digest, resolve
from .settings import Settings
from .spec import JobSpec, load_spec

__all__ = ["Lookup", "lookup"]


@dataclass(frozen=True)
class Lookup:
    """A spec's inputs pinned and locked, its key, and whether its image is on the engine now."""

    settings: Settings
    engine: Engine
    job: ResolvedJob
    key: ImageKey
    image: str  # <repository>:<key>
    present: bool

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def lock(self) -> Lock:
        return self.job.lock


def lookup(
    spec: str | Path | JobSpec,
    settings: Settings,
    *,
    engine: Engine | None = None,
    pull_base: bool = True,
    resolvers: Resolvers | None = None,
    upgrade: bool = False,
    use_shipped: bool = True,
    warn: Callable[[str], None] = lambda text: None,
) -> Lookup:
    """The first six stages.  ``pull_base=False`` never pulls a base the engine lacks.
    ``resolvers=None`` answers only from a shipped ``bake.lock`` or a fresh resolver cache
    (else :class:`~bake.errors.NotLocked`); ``upgrade`` (``bake lock --upgrade``) resolves
    again, and ``use_shipped=False`` (``bake lock``) leaves a shipped ``bake.lock`` aside.

    A lookup of a spec on disk is remembered (:mod:`bake.cache.hits`), so that the
    fast path can answer the next hit without redoing it, until the lock's freshness ends.
    """
    engine = engine or Engine.from_settings(settings)
    job_spec = spec if isinstance(spec, JobSpec) else load_spec(spec)
    pinned = resolve(job_spec, settings,
                     base_lookup=lambda ref: base_digest(engine, ref, pull=pull_base))
    locked = lock_for(pinned, settings, resolvers=resolvers, upgrade=upgrade,
                      use_shipped=use_shipped, warn=warn)
    job = pinned.locked(locked.lock)
    image_key = compute_key(job)
    image = image_key.image(settings.image_repository)
    found = Lookup(settings, engine, job, image_key, image, engine.has_image(image))
    if not isinstance(spec, JobSpec) and use_shipped and not upgrade and not locked.stale:
        _remember(found, locked, hits.spec_file(str(spec)))
    return found


def _remember(found: Lookup, locked: Locked, spec_file: Path) -> None:
    """Write down what this lookup read, for the fast path's next answer: the lock's
    sources among the inputs, and an expiry when its resolutions stop being fresh (an
    answer from an outage's stale resolution is not written down at all)."""
    job, settings = found.job, found.settings
    base = found.engine.inspect_image(job.base_ref)
    if base is None:
        return
    hits.remember(
        name=hits.record_name(spec_file, settings.origin[0], settings.origin[1]),
        key=found.key.digest, image=found.image, engine=found.engine.address,
        base_ref=job.base_ref, base_info=base,
        inputs=(*job.spec.inputs, *job.template.inputs, *settings.probed,
                *settings.env.inputs, *locked.inputs, *hits.code_inputs()),
        expires=locked.fresh_until, locked=job.lock.digest(),
    )

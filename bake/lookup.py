"""The pipeline's first act: which image a job spec names, and whether this engine has it.

    settings -> spec -> resolve (base digest, Hub commits, file digests) -> key -> local hit

Every verb of :mod:`bake.pipeline` starts here, and so does the fast path
(:mod:`bake.fast`), which answers a key hit before the CLI is even imported.
That is why this act is a module of its own: it loads only what these stages
need (no jinja2, asyncio, docker CLI driver, registry client or proxy), which
measured is half of what a key hit may cost; the rest of the story, which
does need them, stays in :mod:`bake.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cache import hits
from .cache.key import ImageKey, compute_key
from .engine import Engine
from .job import ResolvedJob
from .resolve import Hub, base_digest, resolve
from .settings import Settings
from .spec import JobSpec, load_spec

__all__ = ["Lookup", "lookup"]


@dataclass(frozen=True)
class Lookup:
    """A spec's inputs pinned, its key, and whether its image is on the engine now."""

    settings: Settings
    engine: Engine
    job: ResolvedJob
    key: ImageKey
    image: str  # <repository>:<key>
    present: bool

    @property
    def spec(self) -> JobSpec:
        return self.job.spec


def lookup(
    spec: str | Path | JobSpec,
    settings: Settings,
    *,
    engine: Engine | None = None,
    pull_base: bool = True,
    hub: Hub | None = None,
) -> Lookup:
    """The first five stages.  ``pull_base=False`` never pulls a base the engine lacks.

    A lookup of a spec on disk is remembered (:mod:`bake.cache.hits`), so that the
    fast path can answer the next hit without redoing it.
    """
    engine = engine or Engine.from_settings(settings)
    job_spec = spec if isinstance(spec, JobSpec) else load_spec(spec)
    job = resolve(job_spec, settings,
                  base_lookup=lambda ref: base_digest(engine, ref, pull=pull_base), hub=hub)
    image_key = compute_key(job)
    image = image_key.image(settings.image_repository)
    found = Lookup(settings, engine, job, image_key, image, engine.has_image(image))
    if not isinstance(spec, JobSpec):
        _remember(found, hits.spec_file(str(spec)))
    return found


def _remember(found: Lookup, spec_file: Path) -> None:
    """Write down what this lookup read, for the fast path's next answer."""
    job, settings = found.job, found.settings
    if job.hub_repos:
        return  # a branch is pinned at every lookup: no answer may outlive it
    base = found.engine.inspect_image(job.base_ref)
    if base is None:
        return
    hits.remember(
        name=hits.record_name(spec_file, settings.origin[0], settings.origin[1]),
        key=found.key.digest, image=found.image, engine=found.engine.address,
        base_ref=job.base_ref, base_info=base,
        inputs=(*job.spec.inputs, *job.template.inputs, *settings.probed,
                *settings.env.inputs, *hits.code_inputs()),
    )

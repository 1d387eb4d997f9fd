"""``bake prebake``: bake the variants each template declares, before any job asks.

A variant (``template.toml`` ``[[variants]]``) is a common shape of job: a base
and a set of requirements.  Prebaking one runs the ordinary pipeline on a
synthetic spec -- the variant's requirements, no files, a fixed command -- so
its image is keyed, labelled and pushed like any other.

Why that helps a later job, whose own files and command give it another key:
what the two share is the dependency stage (same base, same requirements file,
same step), and so the same BuildKit cache key.  On the machine that prebaked,
BuildKit's cache already holds that layer.  On any other machine, the pipeline
looks for the job's *deps twin* (:func:`deps_twin`: the variant-shaped spec with
the job's template, base and requirements, whose key is the variant's when the
requirements match) and hands it to BuildKit as ``--cache-from``; bake's images
carry inline cache metadata (``BUILDKIT_INLINE_CACHE=1``), so the prebaked
dependency layer is reused instead of installed again.

This module holds the variant logic only (pure); :func:`bake.pipeline.prebake`
runs the ordinary pipeline on each variant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .job import ResolvedJob
from .lock.format import Lock
from .spec import JobSpec, parse_spec
from .templates import Template, Variant

__all__ = ["PREBAKE_COMMAND", "Outcome", "deps_twin", "twin_job", "variant_spec"]

# Part of every variant's key: changing it re-keys every prebaked image.
PREBAKE_COMMAND = ("python", "-c", "print('baked ahead by bake prebake')")


@dataclass(frozen=True)
class Outcome:
    """What ``bake prebake`` did for one variant."""

    template: str
    variant: str
    outcome: str  # "built" | "present" | "pulled" | "failed"
    image: str | None = None
    error: str = ""
    pushed: bool = False
    duration_s: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "template": self.template, "variant": self.variant, "outcome": self.outcome,
            "image": self.image, "error": self.error or None, "pushed": self.pushed,
            "duration_s": self.duration_s,
        }


def variant_spec(template: Template, variant: Variant, *, base: str | None = None) -> JobSpec:
    """The synthetic job of a variant, checked by the same rules as a buyer's ``bake.toml``."""
    data: dict[str, Any] = {
        "name": f"prebake-{template.name}-{variant.name}",
        "template": template.name,
        "python": {"requirements": list(variant.requirements)},
        "models": [dict(m) for m in variant.models],
        "job": {"command": list(PREBAKE_COMMAND)},
    }
    chosen = base or variant.base
    if chosen:
        data["base"] = chosen
    return parse_spec(data, root=template.folder, path=template.folder / "template.toml")


def deps_twin(spec: JobSpec) -> JobSpec | None:
    """The variant-shaped job with the same dependency stage as ``spec`` (None: it is one).

    Same template, base and requirements, nothing else: its key is the key that
    ``bake prebake`` gives a variant declaring these requirements, so its image,
    when present, holds exactly the dependency layer ``spec`` needs.
    """
    twin = dataclasses.replace(
        spec, name="", models=(), datasets=(), files=(), command=PREBAKE_COMMAND, env=(),
    )
    return None if twin == dataclasses.replace(spec, name="") else twin


def twin_job(job: ResolvedJob) -> ResolvedJob | None:
    """The resolved deps twin of a resolved job: it shares the job's template, base and
    requirements, so the Python half of the job's lock holds for it (no second lookup)."""
    twin = deps_twin(job.spec)
    if twin is None:
        return None
    lock = job.lock
    twin_lock = Lock(dataclasses.replace(lock.declared, models=(), datasets=()),
                     lock.base_digest, lock.python)
    return ResolvedJob(twin, job.template, job.base_ref, job.base_from, job.base_digest, (),
                       twin_lock)

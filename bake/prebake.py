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
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .builder.templates import Template, Variant, find_template, list_templates
from .errors import BakeError, Interrupted
from .spec import JobSpec, parse_spec

if TYPE_CHECKING:
    from .cache.registry import Registry
    from .pipeline import Reporter
    from .resolve import ResolvedJob
    from .settings import Settings

__all__ = ["PREBAKE_COMMAND", "Outcome", "deps_twin", "prebake", "prebaked_deps", "variant_spec"]

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


# --- the plan: pure --------------------------------------------------------------------------


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


# --- the execution -----------------------------------------------------------------------------


def prebaked_deps(job: ResolvedJob, cfg: Settings) -> tuple[str, ...]:
    """The image of ``job``'s deps twin, when this engine or the registry has it.

    The pipeline hands it to BuildKit as ``--cache-from``.  Asking first (an image
    inspect, then one manifest request) keeps BuildKit from trying a source that
    is not there, or a registry that is down.
    """
    from .cache.key import compute_key
    from .cache.registry import Registry
    from .cache.store import has_image
    from .errors import RegistryError

    twin = deps_twin(job.spec)
    if twin is None:
        return ()
    # The twin shares the job's template and base, so the job's resolution holds for it.
    twin_key = compute_key(dataclasses.replace(job, spec=twin, models=(), datasets=(),
                                               file_digests=()))
    ref = twin_key.image(cfg.image_repository)
    if has_image(ref):
        return (ref,)
    if cfg.registry.repository:
        try:
            return (ref,) if Registry(cfg).exists(ref) else ()
        except RegistryError:
            return ()  # the pull step has already warned about this registry
    return ()


def prebake(
    templates: Sequence[str],
    *,
    settings: Settings | None = None,
    push: bool = False,
    base: str | None = None,
    reporter: Reporter | None = None,
) -> list[Outcome]:
    """Bake every variant of ``templates`` (all templates when empty); one outcome each.

    A variant that fails is reported and the others go on.  With ``push``, a
    variant already in the registry is "present" (not pulled: CI publishes, it
    does not need a local copy), one present only locally is pushed.
    """
    from .cache.registry import Registry
    from .pipeline import NullReporter
    from .settings import load_settings

    cfg = settings if settings is not None else load_settings()
    report = reporter or NullReporter()
    names = list(templates) or list_templates(cfg.build.templates)
    # Every name is checked before anything is baked: a typo costs nothing.
    found = [find_template(name, cfg.build.templates) for name in names]
    registry = Registry.configured(cfg) if push else None
    outcomes: list[Outcome] = []
    for template in found:
        if not template.variants:
            report.warn(f"template {template.name!r} declares no variants: nothing to prebake")
        for variant in template.variants:
            outcomes.append(_prebake_one(template, variant, cfg, registry, base, report))
    return outcomes


def _prebake_one(template: Template, variant: Variant, cfg: Settings, registry: Registry | None,
                 base: str | None, report: Reporter) -> Outcome:
    from .cache.store import has_image, record_use
    from .pipeline import build, key

    started = time.monotonic()
    report.stage(f"prebaking {template.name}/{variant.name}")

    def outcome(kind: str, image: str | None, **kw: Any) -> Outcome:
        return Outcome(template.name, variant.name, kind, image,
                       duration_s=round(time.monotonic() - started, 3), **kw)

    image: str | None = None
    try:
        spec = variant_spec(template, variant, base=base)
        image_key = key(spec, settings=cfg)
        image = image_key.image(cfg.image_repository)
        if registry is not None:
            if registry.exists(image):
                return outcome("present", image)
            if has_image(image):
                record_use(image_key.digest)
                return outcome("present", image, pushed=registry.push(image, report))
        result = build(spec, settings=cfg, push=registry is not None, reporter=report)
    except Interrupted:
        raise
    except BakeError as exc:
        report.warn(f"prebake {template.name}/{variant.name} failed: {exc.message}")
        return outcome("failed", image, error=exc.message)
    kind = "present" if result.cached else "pulled" if result.pulled else "built"
    return outcome(kind, result.image, pushed=result.pushed)

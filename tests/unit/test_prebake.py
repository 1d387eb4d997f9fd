"""bake prebake's variant logic: a variant's synthetic job, and a job's deps twin."""

from __future__ import annotations

from pathlib import Path

from bake.cache.key import compute_key
from bake.job import PinnedJob, ResolvedJob
from bake.prebake import PREBAKE_COMMAND, deps_twin, twin_job, variant_spec
from bake.spec import JobFile, JobSpec, parse_spec
from bake.templates import Template, Variant
from tests.unit.helpers import lock_job


def _template(tmp_path: Path) -> Template:
    return Template(name="python", folder=tmp_path, search_path=(tmp_path,),
                    default_base="python:3.11-slim", digest="sha256:" + "1" * 64,
                    variants=(Variant("sci", None, ("numpy==2.1.3", "six==1.16.0")),))


def _resolved(spec: JobSpec, template: Template) -> ResolvedJob:
    pinned = PinnedJob(spec=spec, template=template, base_ref="python:3.11-slim",
                       base_from="python:3.11-slim", base_digest="sha256:" + "2" * 64,
                       file_digests=tuple("3" * 64 for _ in spec.files))
    return lock_job(pinned)


def test_variant_spec_is_a_checked_synthetic_job(tmp_path: Path) -> None:
    template = _template(tmp_path)
    spec = variant_spec(template, template.variants[0])
    assert spec.template == "python" and spec.base is None
    assert spec.requirements == ("numpy==2.1.3", "six==1.16.0")
    assert spec.files == () and spec.command == PREBAKE_COMMAND
    assert variant_spec(template, template.variants[0], base="python:3.12-slim").base == (
        "python:3.12-slim")


def test_a_jobs_deps_twin_has_the_variants_key(tmp_path: Path) -> None:
    """A buyer's job with a variant's requirements finds the variant's image as its twin."""
    template = _template(tmp_path)
    (tmp_path / "main.py").write_text("print(1)\n")
    job = parse_spec({
        "name": "buyer", "template": "python",
        "python": {"requirements": ["numpy==2.1.3", "six==1.16.0"]},
        "job": {"files": ["main.py"], "command": ["python", "main.py"], "env": {"A": "1"}},
    }, root=tmp_path)
    assert job.files and isinstance(job.files[0], JobFile)
    twin = deps_twin(job)
    assert twin is not None
    variant = variant_spec(template, template.variants[0])
    assert compute_key(_resolved(twin, template)) == compute_key(_resolved(variant, template))
    assert compute_key(_resolved(job, template)) != compute_key(_resolved(variant, template))
    assert deps_twin(variant) is None  # a variant is its own twin: no --cache-from of itself
    # The pipeline's twin of the locked job (its lock's Python half) keys as the variant.
    twin_of_job = twin_job(_resolved(job, template))
    assert twin_of_job is not None
    assert compute_key(twin_of_job) == compute_key(_resolved(variant, template))

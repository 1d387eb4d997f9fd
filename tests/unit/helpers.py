"""Unit-test helpers: resolve a spec with a fixed base digest and no engine."""

from __future__ import annotations

from pathlib import Path

from bake.job import ResolvedJob
from bake.resolve import resolve
from bake.settings import Settings
from bake.spec import load_spec

BASE_DIGEST = "sha256:" + "b" * 64


def fixed_base(ref: str) -> tuple[str, str]:
    return ref, BASE_DIGEST


def resolved(spec_path: Path, settings: Settings | None = None,
             digest: str = BASE_DIGEST) -> ResolvedJob:
    return resolve(load_spec(spec_path), settings or Settings(),
                   base_lookup=lambda ref: (ref, digest))

"""ResolvedJob -> ImageKey: sha256 of a canonical JSON manifest.  Pure.

The manifest holds every input that changes the image and nothing else
(DESIGN.md "The key"): not the spec's name, no host paths, no timestamps,
no allowlist.  Canonical = sorted keys, no whitespace, ASCII only, so the
same inputs give the same 64 hex characters on every machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..job import ResolvedJob, ResolvedRepo

__all__ = ["BUILDER_VERSION", "ImageKey", "canonical_json", "compute_key", "manifest_of"]

# Bump when a change to bake makes an older image unfit for the same inputs
# (the way the templates use the context, the venv location, the user...).
BUILDER_VERSION = "1"
MAX_LABEL = 64 * 1024


@dataclass(frozen=True)
class ImageKey:
    digest: str  # 64 hex
    manifest: dict[str, Any]

    @property
    def short(self) -> str:
        return self.digest[:12]

    def image(self, repository: str) -> str:
        return f"{repository}:{self.digest}"

    def manifest_json(self) -> str:
        return canonical_json(self.manifest)

    def label(self) -> str:
        """The manifest for the image's ``bake.manifest`` label, within a label's size.

        One docker argument may not pass 128 KiB (Linux's MAX_ARG_STRLEN), and a job
        of thousands of files would: past :data:`MAX_LABEL`, the per-file table gives
        way to its digest and count (``bake key --explain`` still shows it whole).
        """
        text = self.manifest_json()
        if len(text) <= MAX_LABEL:
            return text
        files = self.manifest.get("files", {})
        short = dict(self.manifest)
        short["files"] = {
            "count": len(files),
            "sha256": hashlib.sha256(canonical_json(files).encode("ascii")).hexdigest(),
        }
        return canonical_json(short)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def manifest_of(job: ResolvedJob) -> dict[str, Any]:
    spec = job.spec
    return {
        "bake": BUILDER_VERSION,
        "template": {"name": job.template.name, "digest": job.template.digest},
        "base": job.base_digest,
        "python": {"requirements": list(spec.requirements), "only_binary": spec.only_binary},
        "models": [_repo(r) for r in job.models],
        "datasets": [_repo(r) for r in job.datasets],
        "files": {f.dest: {"sha256": digest, "mode": f"{f.mode:o}"}
                  for f, digest in zip(spec.files, job.file_digests, strict=True)},
        "command": list(spec.command),
        "env": dict(spec.env),
    }


def compute_key(job: ResolvedJob) -> ImageKey:
    manifest = manifest_of(job)
    digest = hashlib.sha256(canonical_json(manifest).encode("ascii")).hexdigest()
    return ImageKey(digest, manifest)


def _repo(resolved: ResolvedRepo) -> dict[str, Any]:
    return {
        "repo": resolved.repo.repo,
        "revision": resolved.repo.revision,
        "commit": resolved.commit,
        "include": list(resolved.repo.include),
        "exclude": list(resolved.repo.exclude),
    }

"""ResolvedJob (+ its Lock) -> ImageKey: sha256 of a canonical JSON manifest.  Pure.

The manifest holds every input that changes the image and nothing else
(DESIGN.md "The key"): not the spec's name, no host paths, no timestamps,
no allowlist.  Canonical = sorted keys, no whitespace, ASCII only, so the
same inputs give the same 64 hex characters on every machine.

With a lock (:mod:`bake.lock`) the manifest holds what the declared inputs
locked to, not the declarations: the base digest, every distribution's file
and sha256, each repo's commit and file digests.  ``numpy>=2`` keys the numpy
it resolved to; where a file was served from (its URL) is not in it, so a
mirror and the index key the same bytes the same.  :func:`explain` shows the
declared inputs beside the manifest, for ``bake key --explain``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..job import ResolvedJob
from ..lock.format import DeclaredRepo, LockedRepo

__all__ = [
    "BUILDER_VERSION",
    "ImageKey",
    "canonical_json",
    "compute_key",
    "explain",
    "manifest_of",
]

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

        One docker argument may not pass 128 KiB (Linux's MAX_ARG_STRLEN), and a job of
        thousands of files, a Hub repo of thousands of shards or a lock of hundreds of
        distributions would: past :data:`MAX_LABEL`, the largest such table gives way to
        its digest and count, then the next, until the label fits (``bake key --explain``
        still shows every one whole; the key covers every one).
        """
        text = self.manifest_json()
        if len(text) <= MAX_LABEL:
            return text
        short = json.loads(text)
        for path in sorted(_tables(short), key=lambda p: -len(canonical_json(_at(short, p)))):
            table = _at(short, path)
            _put(short, path, {
                "count": len(table),
                "sha256": hashlib.sha256(canonical_json(table).encode("ascii")).hexdigest(),
            })
            text = canonical_json(short)
            if len(text) <= MAX_LABEL:
                break
        return text


def _tables(manifest: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """Where the manifest's long tables are: the job's files, each Hub repo's files, the
    locked distributions."""
    paths: list[tuple[str | int, ...]] = [("files",), ("python", "distributions")]
    for kind in ("models", "datasets"):
        paths += [(kind, i, "files") for i in range(len(manifest.get(kind) or []))]
    return [p for p in paths if isinstance(_at(manifest, p), dict | list)]


def _at(value: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _put(value: Any, path: tuple[str | int, ...], new: Any) -> None:
    for step in path[:-1]:
        value = value[step]
    value[path[-1]] = new


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def manifest_of(job: ResolvedJob) -> dict[str, Any]:
    """The key's manifest: what the job's declared inputs locked to, never the declarations
    (``numpy>=2`` keys the numpy it resolved to)."""
    spec, lock = job.spec, job.lock
    python: dict[str, Any] = {"only_binary": spec.only_binary, "distributions": []}
    if lock.python is not None:
        t = lock.python.target
        python["target"] = {"python": t.python, "implementation": t.implementation,
                            "abi": t.abi, "machine": t.machine, "libc": t.libc}
        python["distributions"] = [
            {"name": d.name, "version": d.version, "file": d.file, "sha256": d.sha256}
            for d in lock.python.distributions
        ]
    return {
        "bake": BUILDER_VERSION,
        "template": {"name": job.template.name, "digest": job.template.digest},
        "base": lock.base_digest,
        "python": python,
        "models": [_locked_repo(r) for r in lock.models],
        "datasets": [_locked_repo(r) for r in lock.datasets],
        "files": {f.dest: {"sha256": digest, "mode": f"{f.mode:o}"}
                  for f, digest in zip(spec.files, job.file_digests, strict=True)},
        "command": list(spec.command),
        "env": dict(spec.env),
    }


def _locked_repo(repo: LockedRepo) -> dict[str, Any]:
    return {
        "repo": repo.repo,
        # The revision stays: the image names it (refs/<revision> in the Hub cache).
        "revision": repo.revision,
        "commit": repo.commit,
        "include": list(repo.include),
        "exclude": list(repo.exclude),
        "files": {f.path: f.digest for f in repo.files},
    }


def compute_key(job: ResolvedJob) -> ImageKey:
    manifest = manifest_of(job)
    digest = hashlib.sha256(canonical_json(manifest).encode("ascii")).hexdigest()
    return ImageKey(digest, manifest)


def explain(job: ResolvedJob, key: ImageKey) -> dict[str, Any]:
    """What ``bake key --explain`` prints: the key, what the spec declared, the lock's digest
    and the manifest the key hashes (which holds what the declarations locked to)."""
    d = job.lock.declared
    return {
        "key": key.digest,
        "declared": {
            "base": d.base,
            "python": {"requirements": list(d.requirements), "only_binary": d.only_binary},
            "models": [_asked(r) for r in d.models],
            "datasets": [_asked(r) for r in d.datasets],
        },
        "locked": job.lock.digest(),
        "manifest": key.manifest,
    }


def _asked(repo: DeclaredRepo) -> dict[str, Any]:
    return {"repo": repo.repo, "revision": repo.revision, "include": list(repo.include),
            "exclude": list(repo.exclude)}

"""ResolvedJob -> BuildContext: the Dockerfile (Jinja, StrictUndefined) and its files.  Pure.

The context holds exactly: ``Dockerfile``, ``bake/requirements.txt``; when the job
fetches from the Hub, ``bake/hub-client.txt`` (the fetch stages' pinned client, a
files of the ``_base`` template), ``bake/hubfetch.py`` and ``bake/hub/<n>.json``;
and the job's declared files under ``job/``.  Nothing else of the host is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SetupError
from ..job import ResolvedJob

__all__ = ["BuildContext", "ContextFile", "hub_cache_dir", "render"]

HF_HOME = "/opt/hf"
HUB_CLIENT = "hub-client.txt"
HUBFETCH = "hubfetch.py"


@dataclass(frozen=True)
class ContextFile:
    path: str  # relative, POSIX
    data: bytes | None = None
    source: Path | None = None
    mode: int = 0o644
    sha256: str | None = None  # what the key says the file holds


@dataclass(frozen=True)
class BuildContext:
    dockerfile: str
    files: tuple[ContextFile, ...]

    def write(self, folder: Path) -> Path:
        """Write the context into an empty ``folder`` and return it."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Dockerfile").write_text(self.dockerfile, encoding="utf-8")
        (folder / "job").mkdir(exist_ok=True)
        for item in self.files:
            target = folder / item.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if item.data is not None:
                target.write_bytes(item.data)
            elif item.source is not None:
                _copy_checked(item, target)
            os.chmod(target, item.mode)
        return folder


def _copy_checked(item: ContextFile, target: Path) -> None:
    """Copy a job file, refusing one that changed since the key was computed.

    The key was made from the bytes read at resolve time; an image must hold those
    bytes, not whatever a symlink swap or an edit put there in between.
    """
    assert item.source is not None
    digest = hashlib.sha256()
    try:
        fd = os.open(item.source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SetupError(
            f"cannot read job file {item.path.removeprefix('job/')}: {exc.strerror} "
            "(replaced by a link since bake checked it?)",
            hint="leave the job's files alone until the build ends, then build again",
        ) from None
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            dst.write(chunk)
    if item.sha256 is not None and digest.hexdigest() != item.sha256:
        raise SetupError(
            f"job file {item.path.removeprefix('job/')} changed while bake was building",
            hint="leave the job's files alone until the build ends, then build again",
        )


def hub_cache_dir(kind: str, repo: str) -> str:
    """The Hub cache's folder for a repo: ``models--org--name`` (huggingface_hub's layout)."""
    return f"{kind}s--" + repo.replace("/", "--")


def render(job: ResolvedJob, *, ca_bundle: bool, hub_token: bool = False) -> BuildContext:
    import jinja2  # noqa: PLC0415 - heavy: never on a key hit

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in job.template.search_path]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    spec = job.spec
    hub = [
        {
            "index": i,
            "kind": r.repo.kind,
            "repo": r.repo.repo,
            "commit": r.commit,
            "cache_dir": hub_cache_dir(r.repo.kind, r.repo.repo),
        }
        for i, r in enumerate(job.hub_repos)
    ]
    dockerfile = env.get_template(f"{job.template.name}/Dockerfile.j2").render(
        base=job.base_from,
        requirements=bool(spec.requirements),
        only_binary=spec.only_binary,
        ca_bundle=ca_bundle,
        hub=hub,
        hub_token=hub_token,
        hf_home=HF_HOME,
    )
    files: list[ContextFile] = [
        ContextFile("bake/requirements.txt", "".join(f"{r}\n" for r in spec.requirements).encode())
    ]
    if hub:
        files.append(ContextFile("bake/hub-client.txt", source=job.template.base_file(HUB_CLIENT)))
        files.append(ContextFile("bake/hubfetch.py", source=job.template.base_file(HUBFETCH)))
        for entry, resolved in zip(hub, job.hub_repos, strict=True):
            doc = {
                "kind": resolved.repo.kind,
                "repo": resolved.repo.repo,
                "commit": resolved.commit,
                "revision": resolved.repo.revision,
                "include": list(resolved.repo.include),
                "exclude": list(resolved.repo.exclude),
            }
            files.append(ContextFile(f"bake/hub/{entry['index']}.json",
                                     json.dumps(doc, indent=1).encode()))
    files.extend(
        ContextFile(f"job/{f.dest}", source=f.source, mode=f.mode, sha256=digest)
        for f, digest in zip(spec.files, job.file_digests, strict=True)
    )
    return BuildContext(dockerfile, tuple(files))

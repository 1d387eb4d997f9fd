"""ResolvedJob -> BuildContext: the Dockerfile (Jinja, StrictUndefined) and its files.  Pure.

The context holds exactly: ``Dockerfile``; when the job installs anything,
``bake/tool-requirements.txt`` (bake's tool stage: uv, hash-pinned); for the locked wheels
its stack lacks (:mod:`bake.stacks`), ``bake/wheelhouse/`` (``files.json``: each one's URL
and sha256; ``wheelfetch.py``, bake's step that fetches and checks them into the shared
wheelhouse; and ``wheels.txt``, ``name==version --hash=sha256:...`` and each one's
wheelhouse folder, for uv's ``--no-index --require-hashes --no-deps``, which that step
deals out into the install layers);
for its sdists, ``bake/install/sdists/`` (the same three, for the job's own step);
when the job fetches from the Hub, ``bake/hub-client.txt`` (the fetch stages' pinned
client), ``bake/hubfetch.py`` and ``bake/hub/<n>.json`` (each repo's commit and every
locked file with its digest, checked before the layer is made); and the job's
declared files under ``job/``.  Nothing else of the host is sent.  Everything comes
from the job's lock (:mod:`bake.lock`): the build installs and fetches exactly the
locked bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SetupError
from ..job import ResolvedJob
from ..lock.format import LockedRepo
from ..stacks.choice import Choice, Wheel, need_of, sdists_of
from ..stacks.wheelhouse import (
    DOWNLOAD_MOUNT,
    FETCHED,
    INSTALL_MOUNT,
    MOUNT,
    NONCE_ARG,
    SDISTS,
    fetch_list,
    install_parts,
    install_requirements,
)

__all__ = ["BuildContext", "ContextFile", "hub_cache_dir", "render"]

HF_HOME = "/opt/hf"
HUB_CLIENT = "hub-client.txt"
HUBFETCH = "hubfetch.py"
TOOL_REQUIREMENTS = "tool-requirements.txt"
WHEELFETCH = "wheelfetch.py"


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


def render(job: ResolvedJob, *, ca_bundle: bool, hub_token: bool = False,
           relay_path: Callable[[str], str | None] | None = None,
           on: Choice | None = None, no_cache: bool = False) -> BuildContext:
    """The build context of a job: it installs and fetches exactly the job's locked bytes.

    ``on`` is where its deps layer starts (:func:`bake.stacks.choice.choose`): a stack, and
    the wheels it lacks; by default the base, and every wheel.  The key does not depend
    on it: the installed set is the lock's either way.  ``refetch`` fetches and checks
    every wheel again even when the wheelhouse has it (``bake build --no-cache``).

    ``relay_path`` maps a URL on the seller's index (``build.pip_index_url``) to its path on
    the proxy's relay (:meth:`bake.egress.relay.IndexRelay.relay_path`), which adds the
    index's credentials: such files are fetched through the relay, whose address the step
    reads from its ``bake_index`` secret; the others by their own URL, through CONNECT.
    """
    import jinja2  # noqa: PLC0415 - heavy: never on a key hit

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in job.template.search_path]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    spec, lock = job.spec, job.lock
    hub = [
        {
            "index": i,
            "kind": r.kind,
            "repo": r.repo,
            "commit": r.commit,
            "cache_dir": hub_cache_dir(r.kind, r.repo),
        }
        for i, r in enumerate(lock.repos)
    ]
    choice = on if on is not None else Choice(None, need_of(job).wheels)

    def relayed(files: tuple[Wheel, ...]) -> tuple[Wheel, ...]:
        return tuple(dataclasses.replace(w, url=(relay_path(w.url) if relay_path else None)
                                         or w.url) for w in files)

    wheels, sdists = relayed(choice.install), relayed(sdists_of(job))
    stack = choice.stack
    dockerfile = env.get_template(f"{job.template.name}/Dockerfile.j2").render(
        base=job.base_from,
        tool=bool(wheels or sdists),
        wheels=bool(wheels),
        sdists=bool(sdists),
        stack=None if stack is None else {
            "image": stack.image, "key": stack.key, "variant": stack.variant,
            "held": len(stack.held.wheels),
        },
        ca_bundle=ca_bundle,
        hub=hub,
        hub_token=hub_token,
        hf_home=HF_HOME,
        nonce_arg=NONCE_ARG,
        download_mount=DOWNLOAD_MOUNT,
        install_mount=INSTALL_MOUNT,
        wheelhouse=MOUNT,
        fetched=FETCHED,
        install_parts=install_parts(len(wheels)),
        sdist_folder=SDISTS,
        no_cache=no_cache,
    )
    files: list[ContextFile] = []
    if wheels or sdists:
        files.append(ContextFile("bake/tool-requirements.txt",
                                 source=job.template.base_file(TOOL_REQUIREMENTS)))
    fetcher = job.template.base_file(WHEELFETCH)
    if wheels:
        files += [
            ContextFile("bake/wheelhouse/files.json", fetch_list(wheels, refetch=no_cache)),
            ContextFile("bake/wheelhouse/wheelfetch.py", source=fetcher),
            ContextFile("bake/wheelhouse/wheels.txt", install_requirements(wheels)),
        ]
    if sdists:
        files += [
            ContextFile("bake/install/sdists/files.json", fetch_list(sdists, refetch=True)),
            ContextFile("bake/install/sdists/wheelfetch.py", source=fetcher),
            ContextFile("bake/install/sdists/sdists.txt",
                        install_requirements(sdists, folder=SDISTS)),
        ]
    if hub:
        files.append(ContextFile("bake/hub-client.txt", source=job.template.base_file(HUB_CLIENT)))
        files.append(ContextFile("bake/hubfetch.py", source=job.template.base_file(HUBFETCH)))
        for entry, repo in zip(hub, lock.repos, strict=True):
            files.append(ContextFile(f"bake/hub/{entry['index']}.json",
                                     json.dumps(fetch_spec(repo), indent=1).encode()))
    files.extend(
        ContextFile(f"job/{f.dest}", source=f.source, mode=f.mode, sha256=digest)
        for f, digest in zip(spec.files, job.file_digests, strict=True)
    )
    return BuildContext(dockerfile, tuple(files))


def fetch_spec(repo: LockedRepo) -> dict[str, object]:
    """hubfetch.py's spec for one repo: its commit, and every locked file with its digest."""
    return {
        "kind": repo.kind,
        "repo": repo.repo,
        "commit": repo.commit,
        "revision": repo.revision,
        "include": list(repo.include),
        "exclude": list(repo.exclude),
        "files": [{"path": f.path, "size": f.size,
                   **({"sha256": f.sha256} if f.sha256 else {"blob": f.blob})}
                  for f in repo.files],
    }


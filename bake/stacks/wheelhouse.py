"""The trusted wheelhouse: locked wheels shared by every job on this engine.  Pure.

It is a BuildKit cache mount (:data:`CACHE_ID`), laid out by content::

    <wheelhouse>/<sha256>/<wheel file name>     one locked wheel, its bytes hash to <sha256>
    <wheelhouse>/.incoming/                     downloads in flight (linked into place)

Two kinds of step see it, and only these:

- **bake's download step** (``_base/wheelfetch.py``, in a stage of its own on the base
  image) mounts it writable.  It runs no buyer code: the base's interpreter in isolated
  mode with no site (``python3 -I -S``), stdlib only; its inputs are the lock's file names,
  sha256 and URLs.  It fetches only wheels the lock lists that are not there yet, checks
  each one's sha256 before linking it into place, and is given nothing but the address of
  the proxy's index relay (no credentials: the proxy adds them) and the CA bundle.  A
  nonce build arg makes it run on every build (a cheap check when everything is there),
  so that a wheelhouse pruned since the last build is filled again.
- **the job's install step** mounts it read-only (:data:`INSTALL_MOUNT`), with no secret
  and no index: uv installs exactly the listed files, ``--no-index --require-hashes
  --no-deps``, found through one ``--find-links`` folder per wheel.  Installing starts
  the venv's interpreter (uv asks it what it is, and compiles bytecode with it), so a
  wheel's ``.pth`` runs there; it finds nothing to read and nothing it can write but the
  job's own layer.

An sdist (``only_binary = false``) never enters the wheelhouse: the job's own step fetches
it (the same script, into a tmpfs, :data:`SDISTS`) and builds it, and that step does not
mount the wheelhouse at all.

The layout is the lock's own: a wheel is found by its sha256, so two indexes serving
different bytes under one file name never meet.  A file in place is never replaced, but by
bake's step asked to fetch everything again (``bake build --no-cache``), with bytes it has
just checked: the way to mend a copy that changed on disk (the install step's hash check
refuses such a copy, naming it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from .choice import Wheel

__all__ = [
    "CACHE_ID",
    "DOWNLOAD_MOUNT",
    "FETCHED",
    "INSTALL_LAYERS",
    "INSTALL_MOUNT",
    "INSTALL_PART",
    "MOUNT",
    "NONCE_ARG",
    "SDISTS",
    "fetch_list",
    "install_parts",
    "install_requirements",
    "valid_wheel",
]

#: The BuildKit cache mount's id: the same in every build on the engine, so shared by all.
#: The version part changes when the layout does.
CACHE_ID = "bake-wheelhouse-1"
#: Where steps see it.
MOUNT = "/opt/bake/wheelhouse"
#: The Dockerfile mounts of the two steps that see it (the template spells them out; tests
#: check the rendered Dockerfile against these): bake's download step writes, with other
#: builds at once (each download is linked into place whole) ...
DOWNLOAD_MOUNT = f"--mount=type=cache,id={CACHE_ID},target={MOUNT},sharing=shared"
#: ... and the install step reads, and cannot write (BuildKit mounts it read-only; the
#: step has no capability to remount it).
INSTALL_MOUNT = f"--mount=type=cache,id={CACHE_ID},target={MOUNT},readonly"
#: Where the job's own step fetches its sdists to (a tmpfs: never shared, never kept).
SDISTS = "/tmp/bake/sdists"
#: The file bake's download step leaves in its stage: "<sha256> <file>" per wheel, sorted;
#: the install lists (:data:`INSTALL_PART`) go beside it.  The install steps mount those,
#: so BuildKit runs the download first; they are the same for the same wheels, so the
#: install steps' cache is not broken by the download's re-run.
FETCHED = "/bake/wheelhouse.txt"
#: The build arg that makes the download step run on every build.
NONCE_ARG = "BAKE_WHEELHOUSE_NONCE"
#: The layers the job's wheels are installed in, at most.  The engine digests an image's
#: new layers in parallel when it exports them: measured on this 2-core machine, 3 GB in
#: one layer exports in 9.1 s, in two layers of 1.5 GB in 4.4 s, in four in 4.5 s.  A cold
#: torch job's deps are one 6 GB layer otherwise.  Two, not one per core: the layout of a
#: job's image must not depend on the machine that built it.
INSTALL_LAYERS = 2
#: Where bake's download step leaves each install layer's list of wheels (the lines of the
#: install list, dealt out by the checked files' sizes): ``wheelfetch.py`` writes them
#: beside :data:`FETCHED`, under this name.
INSTALL_PART = "/bake/install-{}.txt"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,250}")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,100}")


def valid_wheel(wheel: Wheel) -> bool:
    """A locked file whose name, version, file, hash and URL may enter a step's files."""
    return bool(
        _NAME.fullmatch(wheel.name) and _VERSION.fullmatch(wheel.version)
        and _FILE.fullmatch(wheel.file) and _SHA256.fullmatch(wheel.sha256)
        and _valid_url(wheel.url, wheel.file)
    )


def _valid_url(url: str, file: str) -> bool:
    """An http(s) URL, or a path on the proxy's relay (``/bake-index/...``), of that file."""
    parts = urlsplit(url)
    if not (parts.scheme in ("http", "https") and parts.netloc) and not (
            not parts.scheme and not parts.netloc and url.startswith("/")):
        return False
    return unquote(parts.path.rsplit("/", 1)[-1]) == file


def _checked(wheels: Iterable[Wheel]) -> list[Wheel]:
    out = sorted(wheels, key=lambda w: (w.name, w.sha256))
    for wheel in out:
        if not valid_wheel(wheel):
            raise ValueError(f"not a locked file bake can fetch: {wheel!r}")
    return out


def fetch_list(files: Iterable[Wheel], *, refetch: bool = False) -> bytes:
    """The input of bake's fetch script (``_base/wheelfetch.py``): the locked files to have
    in its folder (each by file name, URL and sha256); ``refetch``: fetch and check every
    one again, even those in place (``bake build --no-cache``)."""
    doc = {
        "format": 1,
        "refetch": refetch,
        "files": [{"file": w.file, "url": w.url, "sha256": w.sha256} for w in _checked(files)],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def install_parts(wheels: int) -> tuple[str, ...]:
    """The lists the install steps read, one step (one layer) each: two for two wheels or
    more (the download step deals the wheels out by size), one for a single wheel."""
    return tuple(INSTALL_PART.format(i) for i in range(min(wheels, INSTALL_LAYERS)))


def install_requirements(files: Iterable[Wheel], *, folder: str = MOUNT) -> bytes:
    """uv's input: each file's folder (``<folder>/<sha256>``) and its pin and hash.

    uv takes exactly these files (with ``--no-index`` nothing else is looked at), checks
    each one's sha256 (``--require-hashes``) and resolves nothing (``--no-deps``).
    """
    lines = []
    for w in _checked(files):
        lines.append(f"--find-links {folder}/{w.sha256}\n")
        lines.append(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n")
    return "".join(lines).encode()

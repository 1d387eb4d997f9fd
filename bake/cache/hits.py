"""Remembered lookups: how the fast path answers a key hit without redoing the lookup.

A lookup's answer (the key) depends on nothing but what it read: the spec and its
job files, the seller config (and the files probed for it), the template and its
``_base``, bake's own code, the environment variables the settings read, and the
base image the engine has.  After each lookup of a spec on disk, :func:`remember`
writes that set down with the key -- every path's ``lstat`` (inode, size, mode,
mtime and ctime, or "absent"), the base image's id and registry digests, where the
engine is.  :func:`recall` checks the record instead of redoing the lookup: every
path unchanged, the same base image, the key's image still there (two inspects).
Anything else is a miss, and the full lookup runs and records again.

This is ccache's "direct mode" and git's index: a file whose ctime is unchanged has
unchanged content (ctime moves on every write and cannot be set back), except
within the clock tick the record was written in: for a path changed less than
:data:`RACY_SECONDS` before its record, the record keeps its content's digest
(a folder's: its listing), and :func:`recall` compares that instead.  A record can also carry
an expiry, for inputs that are only fresh for a while (a resolution from an index
or a Hub).  Records live in the state folder, one per (spec, ``--config``,
environment), written atomically.

Importing this module loads no heavy library: it is all the fast path imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.client import Engine, EngineAddress
from ..errors import EngineError
from ..state import environment_digest, state_dir

__all__ = ["RACY_SECONDS", "Recalled", "code_inputs", "recall", "record_name", "remember",
           "spec_file"]

FORMAT = 1
RACY_SECONDS = 2.0
_CODE = Path(__file__).resolve().parent.parent  # the bake package


@dataclass(frozen=True)
class Recalled:
    image: str
    key: str
    locked: str | None = None  # the digest of the lock the key was computed from


def record_name(spec_file: Path, config: str, environ: Mapping[str, str] | str) -> str:
    """The record's name: the spec file, the ``--config`` argument and the environment
    (or its :func:`~bake.state.environment_digest`)."""
    digest = environ if isinstance(environ, str) else environment_digest(environ)
    text = json.dumps([FORMAT, str(spec_file), config, digest])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def spec_file(argument: str) -> Path:
    """The spec file a command-line argument names, as ``load_spec`` reads it."""
    path = Path(argument)
    return (path / "bake.toml" if path.is_dir() else path).resolve()


def code_inputs() -> list[Path]:
    """bake's own modules and templates: a changed bake may key the same job differently."""
    return sorted(p for p in _CODE.rglob("*")
                  if p.suffix in (".py", ".j2", ".toml", ".txt") and "__pycache__" not in p.parts)


def _state(path: Path) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns]


def _content(path: Path) -> str | None:
    """What a path holds: a file's bytes, a folder's listing, a link's target (digested)."""
    digest = hashlib.sha256()
    try:
        if path.is_symlink():
            digest.update(b"link\0" + os.readlink(path).encode("utf-8", "surrogateescape"))
        elif path.is_dir():
            digest.update("\0".join(sorted(os.listdir(path))).encode("utf-8", "surrogateescape"))
        else:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _entry(path: Path, racy_ns: int) -> list[object]:
    state = _state(path)
    if state is not None and state[4] >= racy_ns:
        return [str(path), state, _content(path)]
    return [str(path), state]


def remember(*, name: str, key: str, image: str, engine: EngineAddress, base_ref: str,
             base_info: Mapping[str, Any], inputs: Iterable[Path],
             expires: float | None = None, locked: str | None = None) -> None:
    """Write the record of one lookup (best effort: a record that cannot be written is
    only a slower next hit)."""
    made = time.time_ns()
    racy = made - int(RACY_SECONDS * 1e9)
    record = {
        "format": FORMAT, "key": key, "image": image, "made_ns": made, "expires": expires,
        "locked": locked,
        "engine": [engine.url, engine.tls_verify, engine.cert_path],
        "base": [base_ref, base_info.get("Id"), sorted(base_info.get("RepoDigests") or [])],
        "files": [_entry(p, racy) for p in dict.fromkeys(inputs)],
    }
    folder = state_dir() / "hits"
    try:
        folder.mkdir(exist_ok=True)
        temporary = folder / f".{name}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(record), encoding="utf-8")
        os.replace(temporary, folder / f"{name}.json")
    except OSError:
        pass


def recall(name: str, *, now: float | None = None) -> Recalled | None:
    """The image of a remembered lookup, if every input is as it was and the image is there."""
    try:
        record = json.loads((state_dir() / "hits" / f"{name}.json").read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            return None
        expires = record["expires"]
        if expires is not None and (now if now is not None else time.time()) >= expires:
            return None
        if not _unchanged(record["files"], int(record["made_ns"])):
            return None
        url, tls_verify, cert_path = record["engine"]
        engine = Engine(EngineAddress(str(url), bool(tls_verify), str(cert_path)))
        base_ref, base_id, digests = record["base"]
        base = engine.inspect_image(str(base_ref))
        if base is None or base.get("Id") != base_id or \
                sorted(base.get("RepoDigests") or []) != digests:
            return None
        image, key = str(record["image"]), str(record["key"])
        found = engine.inspect_image(image)
    except (OSError, ValueError, KeyError, TypeError, EngineError):
        return None
    labels = ((found or {}).get("Config") or {}).get("Labels") or {}
    locked = record.get("locked")
    return Recalled(image, key, str(locked) if locked else None) \
        if labels.get("bake.key") == key else None


def _unchanged(files: Sequence[Sequence[object]], made_ns: int) -> bool:
    racy = made_ns - int(RACY_SECONDS * 1e9)
    for entry in files:
        path, recorded = Path(str(entry[0])), entry[1]
        now = _state(path)
        if now != recorded:
            return False
        # Changed within the record's own moment, when a later write could leave every
        # stat equal: only the content the record kept can tell.
        racy_now = now is not None and now[4] >= racy
        if racy_now and (len(entry) < 3 or entry[2] is None or _content(path) != entry[2]):
            return False
    return True

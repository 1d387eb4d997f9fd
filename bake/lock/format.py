"""``bake.lock``: the value every outside input of a job is locked to, and its file.  Pure.

The file is a PEP 751 lock file (``pylock.toml``'s format) with bake's own table under
``[tool.bake]``, which PEP 751 reserves for tools::

    lock-version = "1.0"                 # PEP 751
    created-by = "bake"
    requires-python = "==3.11.2"         # the target interpreter, exactly
    environments = ["python_full_version == '3.11.2' and ..."]

    [[packages]]                         # one per distribution: exactly one file each
    name = "numpy"
    version = "2.1.3"
    wheels = [{ name = "numpy-2.1.3-cp311-...whl", url = "https://...", hashes = { sha256 = "" } }]

    [tool.bake]
    format = 1
    base = { ref = "python:3.11-slim", digest = "sha256:..." }
    target = { python = "3.11.2", implementation = "cpython", abi = "cp311", machine = "x86_64",
               libc = "glibc 2.36" }
    [tool.bake.declared]                 # what bake.toml said when this was locked
    ...
    [[tool.bake.models]]                 # each Hub repo: commit and every selected file's digest
    ...

Why PEP 751 and not a format of bake's own: pip (``pip lock``) and uv (``uv pip compile
--format pylock.toml``, ``uv pip install -r pylock.toml``) users already read and diff that
format, and renaming ``bake.lock`` to ``pylock.bake.toml`` hands the Python half to either
installer.  What PEP 751 cannot say (the base image's digest, the Hub repos, what the spec
declared) goes under ``[tool.bake]``, much as a Nix ``flake.lock`` pins each input with its
content hash.  Unlike ``uv pip compile``'s output, bake locks exactly one file per
distribution (the one the target interpreter installs), so the lock names the bytes.

:func:`parse_lock` is strict: unknown keys, duplicates, hashes that are not hex, a wheel for
another Python or platform than the lock's target, a Hub path that leaves the repo are a
:class:`~bake.errors.SpecError` (exit 2) naming the field.  :func:`dumps` is deterministic.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import SpecError

__all__ = [
    "DEFAULT_INDEX",
    "FORMAT",
    "LOCK_NAME",
    "Declared",
    "DeclaredRepo",
    "Distribution",
    "Lock",
    "LockedFile",
    "LockedRepo",
    "PythonLock",
    "PythonRequest",
    "Target",
    "dumps",
    "parse_lock",
    "public_url",
    "read_lock",
    "read_lock_text",
    "write_lock",
]

FORMAT = 1
LOCK_NAME = "bake.lock"
DEFAULT_INDEX = "https://pypi.org/simple"
MAX_LOCK_BYTES = 16 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PYVER = re.compile(r"[0-9]+\.[0-9]+(?:\.[0-9]+)?")
_ABI = re.compile(r"(?:cp|pp)[0-9]{2,3}[a-z_0-9]*")
_MACHINE = re.compile(r"[a-z0-9_]{1,32}")
_LIBC = re.compile(r"(?:(glibc|musl) ([0-9]+)\.([0-9]+))?")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_CTRL = re.compile(r"[\x00-\x1f\x7f\\]")

Kind = Literal["model", "dataset"]


# -- the value ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeclaredRepo:
    kind: Kind
    repo: str
    revision: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Declared:
    """What ``bake.toml`` declared that the lock answers: a change here means re-locking."""

    base: str
    requirements: tuple[str, ...] = ()
    only_binary: bool = True
    models: tuple[DeclaredRepo, ...] = ()
    datasets: tuple[DeclaredRepo, ...] = ()

    def changed(self, now: Declared) -> list[str]:
        """The spec fields that differ between this (the lock's) and ``now`` (the spec's)."""
        out: list[str] = []
        if self.base != now.base:
            out.append("base")
        if self.requirements != now.requirements:
            out.append("python.requirements")
        if self.only_binary != now.only_binary:
            out.append("python.only_binary")
        for name in ("models", "datasets"):
            mine, theirs = getattr(self, name), getattr(now, name)
            if len(mine) != len(theirs):
                out.append(name)
                continue
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                out.extend(f"{name}[{i}].{f}" for f in ("repo", "revision", "include", "exclude")
                           if getattr(a, f) != getattr(b, f))
        return out


@dataclass(frozen=True)
class Target:
    """The interpreter the Python half was resolved for (the base image's ``python3``)."""

    python: str  # "3.11.2"
    implementation: str = "cpython"
    abi: str = "cp311"
    machine: str = "x86_64"
    libc: str = "glibc 2.36"  # "glibc X.Y" | "musl X.Y" | "" (neither)

    @cached_property
    def tags(self) -> tuple[str, ...]:
        """Every wheel tag this interpreter installs, best first (``packaging.tags.sys_tags``
        order, computed for the target rather than for the running interpreter)."""
        from packaging import tags  # noqa: PLC0415 - heavy: only where a lock is checked

        major, minor = (int(p) for p in self.python.split(".")[:2])
        platforms = _platforms(self.machine, self.libc)
        if self.implementation == "cpython":
            found = list(tags.cpython_tags((major, minor), [self.abi], platforms))
            interpreter = f"cp{major}{minor}"
        else:
            found = list(tags.generic_tags(f"pp{major}{minor}", [self.abi], platforms))
            interpreter = f"pp{major}{minor}"
        found += list(tags.compatible_tags((major, minor), interpreter, platforms))
        return tuple(dict.fromkeys(str(t) for t in found))

    @cached_property
    def ranks(self) -> dict[str, int]:
        return {tag: i for i, tag in enumerate(self.tags)}

    def rank(self, filename: str) -> int | None:
        """The best rank of a wheel file's tags for this target; None when it cannot install."""
        from packaging.utils import (  # noqa: PLC0415 - heavy: only where a lock is checked
            InvalidWheelFilename,
            parse_wheel_filename,
        )

        try:
            _name, _version, _build, wheel_tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            return None
        found = [self.ranks[str(t)] for t in wheel_tags if str(t) in self.ranks]
        return min(found) if found else None

    def marker(self) -> str:
        """A PEP 508 marker for PEP 751's ``environments``: the lock is for this target only."""
        sys_platform = "linux" if self.libc else "unknown"
        return (f"python_full_version == '{self.python}' and implementation_name == "
                f"'{self.implementation}' and platform_machine == '{self.machine}' and "
                f"sys_platform == '{sys_platform}'")


def _platforms(machine: str, libc: str) -> list[str]:
    """Platform tags of a Linux interpreter, best first, as packaging's ``platform_tags``."""
    match = _LIBC.fullmatch(libc)
    out = [f"linux_{machine}"]
    if match and match.group(1) == "glibc":
        top = int(match.group(3))
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        for minor in range(top, 4, -1):
            if minor < 17 and machine not in ("x86_64", "i686"):
                break
            out.append(f"manylinux_2_{minor}_{machine}")
            alias = legacy.get(minor)
            if alias and (minor == 17 or machine in ("x86_64", "i686")):
                out.append(f"{alias}_{machine}")
    elif match and match.group(1) == "musl":
        out += [f"musllinux_{match.group(2)}_{m}_{machine}"
                for m in range(int(match.group(3)), -1, -1)]
    return out


@dataclass(frozen=True)
class Distribution:
    """One locked distribution: the one file the target installs, and where it was served."""

    name: str  # canonical (PEP 503)
    version: str
    file: str  # the wheel's (or, with only_binary = false, the sdist's) file name
    sha256: str
    url: str

    @property
    def is_wheel(self) -> bool:
        return self.file.endswith(".whl")


@dataclass(frozen=True)
class PythonLock:
    target: Target
    distributions: tuple[Distribution, ...]  # sorted by name

    def install_requirements(self) -> bytes:
        """The install step's input: every locked file by name, version and sha256, for
        ``uv pip install --no-deps --require-hashes`` (uv takes only a file with that hash,
        resolves nothing, and refuses other bytes under the same name)."""
        return "".join(f"{d.name}=={d.version} --hash=sha256:{d.sha256}\n"
                       for d in self.distributions).encode()


@dataclass(frozen=True)
class LockedFile:
    """A Hub file: ``sha256`` for Git LFS files, else ``blob`` (its git blob id)."""

    path: str
    size: int
    sha256: str | None = None
    blob: str | None = None

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"git-blob:{self.blob}"


@dataclass(frozen=True)
class LockedRepo:
    kind: Kind
    repo: str
    revision: str
    commit: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    files: tuple[LockedFile, ...] = ()  # sorted by path

    @property
    def declared(self) -> DeclaredRepo:
        return DeclaredRepo(self.kind, self.repo, self.revision, self.include, self.exclude)


@dataclass(frozen=True)
class Lock:
    declared: Declared
    base_digest: str
    python: PythonLock | None = None  # None: no requirements, nothing to resolve
    models: tuple[LockedRepo, ...] = ()
    datasets: tuple[LockedRepo, ...] = ()

    @property
    def repos(self) -> tuple[LockedRepo, ...]:
        return self.models + self.datasets

    @property
    def distributions(self) -> tuple[Distribution, ...]:
        return self.python.distributions if self.python else ()

    def digest(self) -> str:
        """``sha256:`` of the lock file's bytes (what ``bake build --json`` calls ``locked``)."""
        return "sha256:" + hashlib.sha256(dumps(self).encode()).hexdigest()


@dataclass(frozen=True)
class PythonRequest:
    """What a resolution depends on (and so what the resolver cache keys it by).

    ``index_url`` never carries credentials (:func:`public_url`): it is mounted into the
    resolve step, where buyer code may run, and written into bake's state dir.
    """

    requirements: tuple[str, ...]
    only_binary: bool
    base_from: str  # what FROM says: ref@digest when the engine knows one
    base_digest: str
    index_url: str = DEFAULT_INDEX

    def cache_key(self) -> dict[str, Any]:
        return {"python": list(self.requirements), "only_binary": self.only_binary,
                "base": self.base_digest, "index": self.index_url}


def public_url(url: str) -> str:
    """``url`` without its userinfo (``https://user:secret@host/simple`` -> ``https://host/simple``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# -- writing --------------------------------------------------------------------------------------


def dumps(lock: Lock) -> str:
    """The lock file's text: the same lock gives the same bytes, on every machine."""
    out = ['lock-version = "1.0"', 'created-by = "bake"']
    if lock.python:
        out.append(f"requires-python = {_str('==' + lock.python.target.python)}")
        out.append(f"environments = [{_str(lock.python.target.marker())}]")
    for dist in lock.distributions:
        entry = _inline({"name": dist.file, "url": dist.url, "hashes": {"sha256": dist.sha256}})
        out += ["", "[[packages]]", f"name = {_str(dist.name)}", f"version = {_str(dist.version)}"]
        out.append(f"wheels = [{entry}]" if dist.is_wheel else f"sdist = {entry}")
    out += ["", "[tool.bake]", f"format = {FORMAT}",
            f"base = {_inline({'ref': lock.declared.base, 'digest': lock.base_digest})}"]
    if lock.python:
        t = lock.python.target
        out.append("target = " + _inline({"python": t.python, "implementation": t.implementation,
                                          "abi": t.abi, "machine": t.machine, "libc": t.libc}))
    d = lock.declared
    out += ["", "[tool.bake.declared]", f"base = {_str(d.base)}",
            f"requirements = {_array(d.requirements)}",
            f"only_binary = {'true' if d.only_binary else 'false'}"]
    for name, asked in (("models", d.models), ("datasets", d.datasets)):
        for a in asked:
            out += ["", f"[[tool.bake.declared.{name}]]", f"repo = {_str(a.repo)}",
                    f"revision = {_str(a.revision)}", f"include = {_array(a.include)}",
                    f"exclude = {_array(a.exclude)}"]
    for name, locked in (("models", lock.models), ("datasets", lock.datasets)):
        for r in locked:
            out += ["", f"[[tool.bake.{name}]]", f"repo = {_str(r.repo)}",
                    f"revision = {_str(r.revision)}", f"commit = {_str(r.commit)}",
                    f"include = {_array(r.include)}", f"exclude = {_array(r.exclude)}",
                    "files = ["]
            for f in r.files:
                doc: dict[str, Any] = {"path": f.path, "size": f.size}
                doc.update({"sha256": f.sha256} if f.sha256 else {"blob": f.blob})
                out.append(f"  {_inline(doc)},")
            out.append("]")
    return "\n".join(out) + "\n"


def _str(value: str) -> str:
    """A TOML basic string in ASCII: the file reads the same under any locale."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    out.append('"')
    return "".join(out)


def _array(values: Iterable[str]) -> str:
    return "[" + ", ".join(_str(v) for v in values) + "]"


def _inline(doc: Mapping[str, Any]) -> str:
    parts = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            text = _inline(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = _str(str(value))
        parts.append(f"{key} = {text}")
    return "{ " + ", ".join(parts) + " }"


def write_lock(path: Path, lock: Lock) -> None:
    """Write ``lock`` to ``path`` atomically (a reader never sees half a lock)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(lock), encoding="ascii")
    tmp.replace(path)


# -- reading --------------------------------------------------------------------------------------


def read_lock_text(path: Path) -> str:
    """A lock file's text, size-checked; a SpecError naming the file when it cannot be read."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_LOCK_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read the lock: {exc.strerror}", path=str(path)) from None
    if len(raw) > MAX_LOCK_BYTES:
        raise SpecError(f"larger than {MAX_LOCK_BYTES >> 20} MiB", path=str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", path=str(path)) from None


def read_lock(path: Path, *, deep: bool = True) -> Lock:
    """Read and check a lock file; every problem is a SpecError naming the field."""
    return parse_lock(read_lock_text(path), where=str(path), deep=deep)


def parse_lock(text: str, *, where: str | None = LOCK_NAME, deep: bool = True) -> Lock:
    """``deep=False`` leaves out the checks that need ``packaging`` (see :class:`_Reader`):
    for text that a deep read has accepted before."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}", path=where,
                        hint="run `bake lock SPEC` to write it again") from None
    except RecursionError:
        raise SpecError("not valid TOML: nested too deeply", path=where) from None
    try:
        return _Reader(deep=deep).lock(doc)
    except SpecError as exc:
        raise SpecError(exc.detail, field=exc.field, path=where,
                        hint=exc.hint or "a lock is written by `bake lock SPEC`, not by hand; "
                        "run it again") from None


class _Reader:
    """The strict reader.  ``deep`` adds the checks that need ``packaging`` (file names,
    versions, wheel tags against the target): a lock from outside (a shipped ``bake.lock``)
    gets them once; what bake wrote itself (its resolver cache) is read without."""

    def __init__(self, *, deep: bool = True) -> None:
        self.deep = deep

    def lock(self, doc: Mapping[str, Any]) -> Lock:
        _keys(doc, "", required=("lock-version", "created-by", "tool"),
              optional=("requires-python", "environments", "packages"))
        if doc["lock-version"] != "1.0":
            raise SpecError(f"unsupported lock-version {doc['lock-version']!r}",
                            field="lock-version")
        _string(doc["created-by"], "created-by")
        tool = _table(doc["tool"], "tool")
        _keys(tool, "tool", required=("bake",))
        bake = _table(tool["bake"], "tool.bake")
        _keys(bake, "tool.bake", required=("format", "base", "declared"),
              optional=("target", "models", "datasets"))
        if bake["format"] != FORMAT:
            raise SpecError(f"unsupported format {bake['format']!r} (this bake reads {FORMAT})",
                            field="tool.bake.format", hint="run `bake lock SPEC` with this bake")
        declared = self.declared(_table(bake["declared"], "tool.bake.declared"))
        base = _table(bake["base"], "tool.bake.base")
        _keys(base, "tool.bake.base", required=("ref", "digest"))
        if _string(base["ref"], "tool.bake.base.ref") != declared.base:
            raise SpecError("differs from tool.bake.declared.base", field="tool.bake.base.ref")
        digest = _match(base["digest"], _DIGEST, "tool.bake.base.digest", "sha256:<64 hex>")
        packages = _list(doc.get("packages", []), "packages")
        python: PythonLock | None = None
        if "target" in bake:
            target = self.target(_table(bake["target"], "tool.bake.target"))
            dists = self.packages(packages, target, declared.only_binary)
            python = PythonLock(target, dists)
            if doc.get("requires-python") not in (None, f"=={target.python}"):
                raise SpecError(f"must be '=={target.python}' (the target's Python)",
                                field="requires-python")
            envs = doc.get("environments")
            if envs is not None and envs != [target.marker()]:
                raise SpecError("does not match tool.bake.target", field="environments")
        elif packages:
            raise SpecError("packages without tool.bake.target", field="tool.bake.target",
                            hint="the target interpreter says which wheels may install")
        if declared.requirements and python is None:
            raise SpecError("the declared requirements have no resolution",
                            field="tool.bake.target")
        models = self.repos(bake.get("models", []), "model", declared.models)
        datasets = self.repos(bake.get("datasets", []), "dataset", declared.datasets)
        return Lock(declared, digest, python, models, datasets)

    def declared(self, d: Mapping[str, Any]) -> Declared:
        w = "tool.bake.declared"
        _keys(d, w, required=("base", "requirements", "only_binary"),
              optional=("models", "datasets"))
        only = d["only_binary"]
        if not isinstance(only, bool):
            raise SpecError("must be true or false", field=f"{w}.only_binary")
        reqs = _strings(d["requirements"], f"{w}.requirements")
        repos: dict[str, tuple[DeclaredRepo, ...]] = {}
        for name, kind in (("models", "model"), ("datasets", "dataset")):
            entries = []
            for i, item in enumerate(_list(d.get(name, []), f"{w}.{name}")):
                where = f"{w}.{name}[{i}]"
                t = _table(item, where)
                _keys(t, where, required=("repo", "revision", "include", "exclude"))
                entries.append(DeclaredRepo(
                    kind,  # type: ignore[arg-type]
                    _string(t["repo"], f"{where}.repo"),
                    _string(t["revision"], f"{where}.revision"),
                    _strings(t["include"], f"{where}.include"),
                    _strings(t["exclude"], f"{where}.exclude"),
                ))
            repos[name] = tuple(entries)
        return Declared(_string(d["base"], f"{w}.base"), reqs, only,
                        repos["models"], repos["datasets"])

    def target(self, t: Mapping[str, Any]) -> Target:
        w = "tool.bake.target"
        _keys(t, w, required=("python", "implementation", "abi", "machine", "libc"))
        impl = _string(t["implementation"], f"{w}.implementation")
        if impl not in ("cpython", "pypy"):
            raise SpecError(f"unknown implementation {impl!r}", field=f"{w}.implementation")
        return Target(
            _match(t["python"], _PYVER, f"{w}.python", "a version such as 3.11.2"),
            impl,
            _match(t["abi"], _ABI, f"{w}.abi", "an ABI tag such as cp311"),
            _match(t["machine"], _MACHINE, f"{w}.machine", "a machine such as x86_64"),
            _match(t["libc"], _LIBC, f"{w}.libc", "'glibc X.Y', 'musl X.Y' or ''"),
        )

    def packages(self, packages: Sequence[Any], target: Target,
                 only_binary: bool) -> tuple[Distribution, ...]:
        seen: set[str] = set()
        out = []
        for i, item in enumerate(packages):
            where = f"packages[{i}]"
            p = _table(item, where)
            _keys(p, where, required=("name", "version"), optional=("wheels", "sdist"))
            name = _match(p["name"], _NAME, f"{where}.name", "a normalised project name")
            if name in seen:
                raise SpecError(f"'{name}' is locked twice", field=f"{where}.name")
            seen.add(name)
            version = _string(p["version"], f"{where}.version")
            if ("wheels" in p) == ("sdist" in p):
                raise SpecError("needs exactly one of wheels (one wheel) or sdist", field=where)
            if "wheels" in p:
                wheels = _list(p["wheels"], f"{where}.wheels")
                if len(wheels) != 1:
                    raise SpecError("bake locks exactly one wheel per distribution",
                                    field=f"{where}.wheels")
                fw = f"{where}.wheels[0]"
                entry = _table(wheels[0], fw)
            else:
                fw = f"{where}.sdist"
                entry = _table(p["sdist"], fw)
            _keys(entry, fw, required=("name", "url", "hashes"))
            file = _string(entry["name"], f"{fw}.name")
            hashes = _table(entry["hashes"], f"{fw}.hashes")
            _keys(hashes, f"{fw}.hashes", required=("sha256",))
            sha = _match(hashes["sha256"], _SHA256, f"{fw}.hashes.sha256", "64 lowercase hex")
            url = _string(entry["url"], f"{fw}.url")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SpecError("must be an http(s) URL", field=f"{fw}.url")
            if parts.username is not None or parts.password is not None:
                raise SpecError("must carry no credentials", field=f"{fw}.url")
            if unquote(parts.path.rsplit("/", 1)[-1]) != file:
                raise SpecError(f"does not end with the file name {file!r}", field=f"{fw}.url")
            if "sdist" in p and only_binary:
                raise SpecError("an sdist, but the spec says only_binary = true",
                                field=f"{where}.sdist")
            if self.deep:
                _check_file(name, version, file, "wheels" in p, target, where, fw)
            out.append(Distribution(name, version, file, sha, url))
        return tuple(sorted(out, key=lambda d: d.name))

    def repos(self, value: Any, kind: Kind,
              declared: tuple[DeclaredRepo, ...]) -> tuple[LockedRepo, ...]:
        name = f"{kind}s"
        entries = _list(value, f"tool.bake.{name}")
        if len(entries) != len(declared):
            raise SpecError(f"{len(entries)} locked, {len(declared)} declared",
                            field=f"tool.bake.{name}")
        out = []
        for i, item in enumerate(entries):
            where = f"tool.bake.{name}[{i}]"
            t = _table(item, where)
            _keys(t, where, required=("repo", "revision", "commit", "include", "exclude", "files"))
            repo = LockedRepo(
                kind,
                _string(t["repo"], f"{where}.repo"),
                _string(t["revision"], f"{where}.revision"),
                _match(t["commit"], _SHA1, f"{where}.commit", "40 lowercase hex"),
                _strings(t["include"], f"{where}.include"),
                _strings(t["exclude"], f"{where}.exclude"),
                self.files(t["files"], f"{where}.files"),
            )
            if repo.declared != declared[i]:
                raise SpecError("differs from what tool.bake.declared says", field=where)
            for f in repo.files:
                if not selected(f.path, repo.include, repo.exclude):
                    raise SpecError(f"'{f.path}' is not selected by include/exclude",
                                    field=f"{where}.files")
            if not repo.files:
                raise SpecError("no files", field=f"{where}.files")
            out.append(repo)
        return tuple(out)

    def files(self, value: Any, where: str) -> tuple[LockedFile, ...]:
        out: dict[str, LockedFile] = {}
        for i, item in enumerate(_list(value, where)):
            w = f"{where}[{i}]"
            t = _table(item, w)
            _keys(t, w, required=("path", "size"), optional=("sha256", "blob"))
            path = _string(t["path"], f"{w}.path")
            if not safe_repo_path(path):
                raise SpecError(f"{path!r} is not a path inside the repo", field=f"{w}.path")
            size = t["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise SpecError("must be a whole number of bytes", field=f"{w}.size")
            if ("sha256" in t) == ("blob" in t):
                raise SpecError("needs exactly one of sha256 (LFS files) or blob", field=w)
            sha = _match(t["sha256"], _SHA256, f"{w}.sha256", "64 lowercase hex") \
                if "sha256" in t else None
            blob = _match(t["blob"], _SHA1, f"{w}.blob", "40 lowercase hex") \
                if "blob" in t else None
            if path in out:
                raise SpecError(f"'{path}' is listed twice", field=f"{w}.path")
            out[path] = LockedFile(path, size, sha, blob)
        return tuple(out[p] for p in sorted(out))


def _check_file(name: str, version: str, file: str, is_wheel: bool, target: Target,
                where: str, fw: str) -> None:
    """The checks that need ``packaging``: the version is PEP 440, the file name is this
    distribution's, a wheel installs on the lock's target."""
    from packaging.utils import (  # noqa: PLC0415 - heavy: only where a lock is checked
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from packaging.version import (  # noqa: PLC0415 - heavy: only where a lock is checked
        InvalidVersion,
        Version,
    )

    try:
        parsed_version = Version(version)
    except InvalidVersion:
        raise SpecError(f"{version!r} is not a version", field=f"{where}.version") from None
    try:
        if is_wheel:
            fname, fversion, _b, _t = parse_wheel_filename(file)
        else:
            fname, fversion = parse_sdist_filename(file)
    except (InvalidWheelFilename, InvalidSdistFilename):
        raise SpecError(f"{file!r} is not a wheel or sdist file name",
                        field=f"{fw}.name") from None
    if canonicalize_name(fname) != name or fversion != parsed_version:
        raise SpecError(f"{file!r} is not {name} {version}", field=f"{fw}.name")
    if is_wheel and target.rank(file) is None:
        raise SpecError(
            f"{file!r} does not install on the lock's target (Python {target.python}, "
            f"{target.abi}, {target.libc or 'no libc'} {target.machine})",
            field=f"{fw}.name")


def safe_repo_path(path: str) -> bool:
    """A path inside a repo: relative, POSIX, no '..', '.', empty parts or control bytes."""
    if not path or len(path) > 1024 or _CTRL.search(path) or path.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in PurePosixPath(path).parts) and \
        "//" not in path and not path.endswith("/")


def selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """huggingface_hub's ``filter_repo_objects`` for one path (a pattern ending in '/' is a
    folder: everything under it)."""
    def norm(p: str) -> str:
        return p + "*" if p.endswith("/") else p
    if include and not any(fnmatch.fnmatch(path, norm(p)) for p in include):
        return False
    return not any(fnmatch.fnmatch(path, norm(p)) for p in exclude)


# -- checkers -------------------------------------------------------------------------------------


def _keys(doc: Mapping[str, Any], where: str, *, required: Sequence[str],
          optional: Sequence[str] = ()) -> None:
    known = (*required, *optional)
    for key in doc:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise SpecError(f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close
                                                      else ""),
                            field=f"{where}.{key}" if where else key)
    for key in required:
        if key not in doc:
            raise SpecError("missing", field=f"{where}.{key}" if where else key)


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SpecError("must be a table", field=where)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SpecError("must be an array", field=where)
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.isprintable():
        raise SpecError("must be a string of printable characters", field=where)
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    return tuple(_string(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _match(value: Any, pattern: re.Pattern[str], where: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SpecError(f"must be {what}, not {value!r}"[:200], field=where)
    return value


# -- parts, for the resolver cache (the same shapes and checks as in the file) ------------------


def parse_target(doc: Mapping[str, Any]) -> Target:
    return _Reader().target(doc)


def python_to_doc(lock: PythonLock) -> dict[str, Any]:
    t = lock.target
    return {
        "target": {"python": t.python, "implementation": t.implementation, "abi": t.abi,
                   "machine": t.machine, "libc": t.libc},
        "packages": [
            {"name": d.name, "version": d.version,
             ("wheels" if d.is_wheel else "sdist"): (
                 [_file_doc(d)] if d.is_wheel else _file_doc(d))}
            for d in lock.distributions
        ],
    }


def _file_doc(d: Distribution) -> dict[str, Any]:
    return {"name": d.file, "url": d.url, "hashes": {"sha256": d.sha256}}


def python_from_doc(doc: Mapping[str, Any], *, only_binary: bool) -> PythonLock:
    """The resolver cache's entry (bake's own writing: read without ``packaging``)."""
    reader = _Reader(deep=False)
    _keys(doc, "python", required=("target", "packages"))
    target = reader.target(_table(doc["target"], "target"))
    return PythonLock(target, reader.packages(_list(doc["packages"], "packages"), target,
                                              only_binary))


def repo_to_doc(repo: LockedRepo) -> dict[str, Any]:
    return {
        "kind": repo.kind, "repo": repo.repo, "revision": repo.revision, "commit": repo.commit,
        "include": list(repo.include), "exclude": list(repo.exclude),
        "files": [{"path": f.path, "size": f.size,
                   **({"sha256": f.sha256} if f.sha256 else {"blob": f.blob})}
                  for f in repo.files],
    }


def repo_from_doc(doc: Mapping[str, Any]) -> LockedRepo:
    kind = doc.get("kind")
    if kind not in ("model", "dataset"):
        raise SpecError("must be 'model' or 'dataset'", field="kind")
    declared = DeclaredRepo(kind, _string(doc.get("repo"), "repo"),
                            _string(doc.get("revision"), "revision"),
                            _strings(doc.get("include"), "include"),
                            _strings(doc.get("exclude"), "exclude"))
    body = {k: v for k, v in doc.items() if k != "kind"}
    (repo,) = _Reader().repos([body], kind, (declared,))
    return repo

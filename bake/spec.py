"""``bake.toml`` -> :class:`JobSpec`: strict, frozen, every error names its field.

Nothing a buyer writes is trusted: requirement lines are parsed as PEP 508 and
refused if they carry pip options or URLs; paths may not leave the spec's folder
(symlinks included); repo ids, revisions and image references must be plain
words of their grammar.  A bad spec raises :class:`~bake.errors.SpecError`
(exit 2) with a close-match suggestion for typos.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .errors import SpecError
from .reference import parse_image_ref
from .units import format_size, parse_duration, parse_size

__all__ = [
    "HubRepo",
    "JobFile",
    "JobSpec",
    "RunLimits",
    "load_spec",
    "parse_requirement",
    "parse_spec",
]

MAX_SPEC_BYTES = 1 << 20
MAX_JOB_FILES = 10_000
MAX_TEXT = 4096
MAX_REQUIREMENTS = 1000
# The manifest (requirements, command, env) travels as one `--label` argument of the
# docker CLI, and Linux refuses any single argument over 128 KiB (MAX_ARG_STRLEN) with
# E2BIG: past this budget a valid-looking spec would fail as an Engine error.
MAX_MANIFEST_TEXT = 64 << 10

_WORD = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_REPO_PART}(?:/{_REPO_PART})?", re.ASCII)
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}", re.ASCII)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)
_GPUS = re.compile(r"|all|device=\d+(?:,\d+)*", re.ASCII)
_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
# PEP 508's name: starts and ends with a letter or digit.
_SIMPLE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_SIMPLE_PIN = re.compile(
    r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)[ \t]*==[ \t]*([0-9]+(?:\.[0-9]+)*)", re.ASCII
)


@dataclass(frozen=True)
class HubRepo:
    """A model or dataset to fetch from the Hub during setup."""

    kind: Literal["model", "dataset"]
    repo: str
    revision: str = "main"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobFile:
    """One file the build sees: ``dest`` under ``/job``, ``source`` on the host."""

    dest: str
    source: Path
    mode: int
    size: int = 0


@dataclass(frozen=True)
class RunLimits:
    memory: int = 4 << 30
    cpus: float = 2.0
    pids: int = 512
    gpus: str = ""
    timeout: int = 2 * 3600
    shm: int = 64 << 20
    tmp: int = 256 << 20
    output: int = 1 << 30  # most bytes a node may leave in /out (see bake/outbox.py)
    nodes: int = 1


@dataclass(frozen=True)
class JobSpec:
    name: str
    template: str
    base: str | None
    requirements: tuple[str, ...]
    only_binary: bool
    models: tuple[HubRepo, ...]
    datasets: tuple[HubRepo, ...]
    files: tuple[JobFile, ...]
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    run: RunLimits = field(default_factory=RunLimits)
    root: Path = Path(".")
    path: Path = Path("bake.toml")
    #: Every path the parser read or walked (the spec, a requirements file, job files as
    #: named and as resolved, folders walked): what the fast path's record checks.
    inputs: tuple[Path, ...] = field(default=(), compare=False)


# The schema: every table's keys and a checker for each.  Unknown keys are errors.
_TOP = ("name", "template", "base", "python", "models", "datasets", "job", "run")
_PYTHON = ("requirements", "requirements_file", "only_binary")
_HUB = ("repo", "revision", "include", "exclude")
_JOB = ("files", "command", "env")
_RUN = ("memory", "cpus", "pids", "gpus", "timeout", "shm", "tmp", "output", "nodes")
MAX_NODES = 16


def load_spec(path: str | Path) -> JobSpec:
    """Read and check a job spec; ``path`` may name the file or its folder."""
    spec_path = Path(path)
    if spec_path.is_dir():
        spec_path = spec_path / "bake.toml"
    if not spec_path.exists():
        raise SpecError(
            f"no job spec at {spec_path}", hint="pass the path of a bake.toml or its folder"
        )
    blob = _read_bounded(spec_path, MAX_SPEC_BYTES, what="a job spec")
    try:
        text = blob.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", path=str(spec_path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}", path=str(spec_path)) from None
    except RecursionError:
        # tomllib recurses per nested array or inline table.
        raise SpecError("not valid TOML: nested too deeply", path=str(spec_path)) from None
    return parse_spec(data, root=spec_path.resolve().parent, path=spec_path)


def _read_bounded(path: Path, limit: int, *, what: str, field: str | None = None) -> bytes:
    """Read a regular file of at most ``limit`` bytes.

    A FIFO would block forever and ``/dev/zero`` would never end, so only regular
    files are read, and never more than ``limit`` + 1 bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}", field=field) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise SpecError(f"{path} is not a regular file", field=field,
                            hint=f"pass {what} as a plain file")
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise SpecError(f"{path} is larger than {limit >> 10} KiB", field=field)
    return raw


def parse_spec(data: Mapping[str, Any], *, root: Path, path: Path | None = None) -> JobSpec:
    """Check a parsed TOML document against the schema."""
    where = str(path) if path else None
    try:
        return _Parser(root, where).spec(data, path or root / "bake.toml")
    except SpecError as exc:
        if exc.path is None and where:
            raise SpecError(exc.detail, field=exc.field, path=where, hint=exc.hint) from None
        raise


def parse_requirement(line: str, *, field: str = "python.requirements") -> str:
    """One PEP 508 requirement, normalised; pip options, URLs and paths are refused."""
    if not isinstance(line, str):
        raise SpecError("must be a string", field=field)
    if any(ch in line for ch in "\r\n\x00\x0b\x0c") or not line.isprintable():
        raise SpecError("a requirement is one line of printable text", field=field)
    text = line.strip()
    if not text:
        raise SpecError("empty requirement", field=field)
    if len(text) > 512:
        raise SpecError("a requirement is at most 512 characters", field=field)
    if text.startswith("-"):
        raise SpecError(
            f"pip options are not allowed ({text.split()[0]!r})",
            field=field,
            hint="list PEP 508 requirements such as 'numpy==2.1.3'; the index is the seller's",
        )
    lowered = text.lower()
    for marker in ("git+", "hg+", "svn+", "bzr+", "file:", "://"):
        if marker in lowered:
            raise SpecError(
                f"URLs and paths are not allowed in requirements ({_show(text)})",
                field=field,
                hint="name a package and version from the index, e.g. 'requests==2.32.3'",
            )
    simple = _SIMPLE_PIN.fullmatch(text)
    if simple:
        # The common case, "name==version", normalised exactly as packaging would,
        # without importing it: the key of a cache hit is computed on every build.
        return f"{_canonical_name(simple.group(1))}=={simple.group(2)}"
    # Heavy, and only needed past the common "name==version": never on a key hit.
    from packaging.requirements import InvalidRequirement, Requirement  # noqa: PLC0415
    from packaging.utils import canonicalize_name  # noqa: PLC0415

    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        # packaging adds lines that point a caret at the error; the first line says it.
        reason = str(exc).splitlines()[0] if str(exc) else "unparsable"
        raise SpecError(f"not a PEP 508 requirement: {reason} ({_show(text)})",
                        field=field) from None
    if req.url:
        raise SpecError(f"direct references ('@ URL') are not allowed ({_show(text)})",
                        field=field)
    if not _SIMPLE_NAME.fullmatch(req.name):
        # packaging's parser takes names such as "0_" that PEP 508 does not, and that
        # normalise to "0-", which packaging itself then refuses.
        raise SpecError(f"not a valid project name ({_show(req.name)})", field=field,
                        hint="a project name is letters and digits, with . _ - inside")
    req.name = canonicalize_name(req.name)
    normal = str(req)
    # The line is written to requirements.txt, which pip reads with its own rules: a
    # space-separated token starting with "-" is a per-requirement option
    # (--config-settings, --global-option, --hash), "#" starts a comment, a trailing
    # backslash joins the next line and ${NAME} expands the step's environment.  PEP 508
    # allows all of these inside a marker's quoted string, so refuse them outright.
    if (any(token.startswith("-") for token in normal.split(" ")[1:])
            or any(ch in normal for ch in "#\\") or "${" in normal):
        raise SpecError(
            f"{_show(text)} carries text that pip reads as an option, a comment, a line "
            "continuation or a variable",
            field=field,
            hint="a requirement is a name, a version and at most a plain environment marker",
        )
    return normal


def _canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Parser:
    def __init__(self, root: Path, where: str | None) -> None:
        self.root = root
        self.where = where
        self.read: list[Path] = []

    def spec(self, data: Mapping[str, Any], path: Path) -> JobSpec:
        _keys(data, _TOP, "")
        name = _text(data.get("name", ""), "name", limit=128)
        if not name.isprintable():
            raise SpecError("must be one line of printable text (it labels the image)",
                            field="name")
        template = data.get("template", "python")
        if not isinstance(template, str) or not _WORD.fullmatch(template):
            raise SpecError(
                "must be a template name such as 'python' or 'transformers'", field="template"
            )
        base = data.get("base")
        if base is not None:
            if not isinstance(base, str):
                raise SpecError("must be an image reference string", field="base")
            try:
                parse_image_ref(base)
            except ValueError as exc:
                raise SpecError(str(exc), field="base") from None

        python = _table(data.get("python", {}), "python")
        _keys(python, _PYTHON, "python")
        requirements = self.requirements(python)
        only_binary = python.get("only_binary", True)
        if not isinstance(only_binary, bool):
            raise SpecError("must be true or false", field="python.only_binary")

        models = tuple(self.hub(entry, "model", f"models[{i}]")
                       for i, entry in enumerate(_array(data.get("models", []), "models")))
        datasets = tuple(self.hub(entry, "dataset", f"datasets[{i}]")
                         for i, entry in enumerate(_array(data.get("datasets", []), "datasets")))

        job = _table(data.get("job", {}), "job")
        _keys(job, _JOB, "job")
        files = self.files(job.get("files", []))
        command = job.get("command")
        if command is None:
            raise SpecError('missing: the command that runs the job, e.g. ["python", "main.py"]',
                            field="job.command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(c, str) for c in command)):
            raise SpecError("must be a non-empty list of strings", field="job.command")
        for i, arg in enumerate(command):
            _text(arg, f"job.command[{i}]", allow_empty=i > 0)
        env_table = _table(job.get("env", {}), "job.env")
        env: list[tuple[str, str]] = []
        for key, value in env_table.items():
            if not _ENV_NAME.fullmatch(key):
                raise SpecError("not a valid environment variable name",
                                field=f"job.env.{_key_text(key)}")
            env.append((key, _text(value, f"job.env.{key}", allow_empty=True)))

        run = self.run(_table(data.get("run", {}), "run"))
        manifest_text = sum(len(t.encode()) for t in (*requirements, *command,
                                                      *(k + v for k, v in env)))
        if manifest_text > MAX_MANIFEST_TEXT:
            raise SpecError(
                f"requirements, command and env hold {manifest_text >> 10} KiB together, more "
                f"than {MAX_MANIFEST_TEXT >> 10} KiB",
                field="job",
                hint="pass large inputs as job files, not as arguments or variables",
            )
        return JobSpec(
            name=name,
            template=template,
            base=base,
            requirements=requirements,
            only_binary=only_binary,
            models=models,
            datasets=datasets,
            files=files,
            command=tuple(command),
            env=tuple(sorted(env)),
            run=run,
            root=self.root,
            path=path,
            inputs=(path, *self.read),
        )

    def requirements(self, python: Mapping[str, Any]) -> tuple[str, ...]:
        lines = python.get("requirements", [])
        if not isinstance(lines, list):
            raise SpecError("must be a list of strings", field="python.requirements")
        found = [parse_requirement(line, field=f"python.requirements[{i}]")
                 for i, line in enumerate(lines)]
        req_file = python.get("requirements_file")
        if req_file is not None:
            source = self.inside(req_file, "python.requirements_file")
            self.read.append(source)
            if not source.is_file():
                raise SpecError(f"{req_file} is not a file", field="python.requirements_file")
            blob = _read_bounded(source, MAX_SPEC_BYTES, what="a requirements file",
                                 field="python.requirements_file")
            try:
                text = blob.decode("utf-8")
            except UnicodeDecodeError:
                raise SpecError(f"cannot read {req_file} as UTF-8 text",
                                field="python.requirements_file") from None
            for number, raw in enumerate(text.splitlines(), start=1):
                line = raw.split(" #", 1)[0].strip()
                if not line or line.startswith("#"):
                    continue
                found.append(parse_requirement(line, field=f"{req_file}:{number}"))
        if len(found) > MAX_REQUIREMENTS:
            raise SpecError(f"at most {MAX_REQUIREMENTS} requirements", field="python.requirements")
        return tuple(sorted(set(found)))

    def hub(self, entry: Any, kind: Literal["model", "dataset"], where: str) -> HubRepo:
        table = _table(entry, where)
        _keys(table, _HUB, where)
        repo = table.get("repo")
        if (not isinstance(repo, str) or not _REPO_ID.fullmatch(repo) or ".." in repo
                or "--" in repo):
            raise SpecError(
                f"must be a Hub repo id such as 'org/name', not {_show(repo)}",
                field=f"{where}.repo",
            )
        revision = table.get("revision", "main")
        if (not isinstance(revision, str) or not _REVISION.fullmatch(revision)
                or ".." in revision or revision.endswith("/")):
            raise SpecError(
                f"must be a branch, tag or commit, not {_show(revision)}",
                field=f"{where}.revision",
            )
        patterns: dict[str, tuple[str, ...]] = {}
        for key in ("include", "exclude"):
            values = table.get(key, [])
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SpecError("must be a list of glob patterns", field=f"{where}.{key}")
            for i, value in enumerate(values):
                if not _PATTERN.fullmatch(value):
                    raise SpecError("a pattern is 1-256 printable characters",
                                    field=f"{where}.{key}[{i}]")
            patterns[key] = tuple(sorted(set(values)))
        return HubRepo(kind, repo, revision, patterns["include"], patterns["exclude"])

    def inside(self, value: Any, field_name: str) -> Path:
        """Resolve a spec-relative path, refusing anything that leaves the spec's folder."""
        if not isinstance(value, str) or not value or "\x00" in value:
            raise SpecError("must be a relative path", field=field_name)
        pure = PurePosixPath(value)
        if pure.is_absolute() or value.startswith("~"):
            raise SpecError(f"{value!r} is absolute; paths are relative to the spec's folder",
                            field=field_name)
        if ".." in pure.parts:
            raise SpecError(f"{value!r} leaves the spec's folder", field=field_name)
        candidate = self.root / pure
        resolved = candidate.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise SpecError(f"{value!r} points outside the spec's folder (a symlink?)",
                            field=field_name)
        if not candidate.exists():
            raise SpecError(f"{value!r} does not exist", field=field_name)
        return candidate

    def files(self, value: Any) -> tuple[JobFile, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError("must be a list of relative paths", field="job.files")
        found: dict[str, JobFile] = {}
        for i, entry in enumerate(value):
            where = f"job.files[{i}]"
            source = self.inside(entry, where)
            walk = sorted(source.rglob("*")) if source.is_dir() else [source]
            self.read.append(source)
            for item in walk:
                self.read.append(item)
                if item.is_symlink():
                    target = item.resolve()
                    if self.root not in target.parents:
                        raise SpecError(f"{item.relative_to(self.root)} is a symlink out of "
                                        "the spec's folder", field=where)
                if item.is_dir():
                    continue
                if not item.is_file():
                    raise SpecError(f"{item.relative_to(self.root)} is not a regular file",
                                    field=where)
                dest = item.relative_to(self.root).as_posix()
                stat = item.stat()
                mode = 0o755 if stat.st_mode & 0o111 else 0o644
                # The real file, not the link: the build opens it without following
                # links, so a link swapped in after this check cannot lead out.
                found[dest] = JobFile(dest, item.resolve(), mode, stat.st_size)
                if found[dest].source != item:
                    self.read.append(found[dest].source)
        if len(found) > MAX_JOB_FILES:
            raise SpecError(f"more than {MAX_JOB_FILES} files", field="job.files")
        return tuple(found[k] for k in sorted(found))

    def run(self, table: Mapping[str, Any]) -> RunLimits:
        _keys(table, _RUN, "run")
        defaults = RunLimits()
        cpus = table.get("cpus", defaults.cpus)
        if (isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not math.isfinite(cpus)
                or not 0 < cpus <= 1024):
            raise SpecError("must be a number of CPUs greater than 0", field="run.cpus")
        pids = table.get("pids", defaults.pids)
        if isinstance(pids, bool) or not isinstance(pids, int) or not 16 <= pids <= 1_000_000:
            raise SpecError("must be a whole number from 16 to 1000000", field="run.pids")
        gpus = table.get("gpus", defaults.gpus)
        if not isinstance(gpus, str) or not _GPUS.fullmatch(gpus):
            raise SpecError("must be \"\", \"all\" or \"device=0,1\"", field="run.gpus")
        nodes = table.get("nodes", defaults.nodes)
        if (isinstance(nodes, bool) or not isinstance(nodes, int)
                or not 1 <= nodes <= MAX_NODES):
            raise SpecError(f"must be a whole number from 1 to {MAX_NODES}", field="run.nodes")
        return RunLimits(
            memory=_size(table.get("memory", defaults.memory), "run.memory", minimum=6 << 20),
            cpus=float(cpus),
            pids=pids,
            gpus=gpus,
            timeout=_duration(table.get("timeout", defaults.timeout), "run.timeout"),
            shm=_size(table.get("shm", defaults.shm), "run.shm", minimum=1 << 20),
            tmp=_size(table.get("tmp", defaults.tmp), "run.tmp", minimum=1 << 20),
            output=_size(table.get("output", defaults.output), "run.output", minimum=1 << 20),
            nodes=nodes,
        )


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: quoted, and cut so one huge value stays one line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _key_text(key: str) -> str:
    """A TOML key for a field name: quoted keys may hold newlines or be megabytes long."""
    return key if key.isprintable() and len(key) <= 64 else _show(key)


def _keys(table: Mapping[str, Any], allowed: tuple[str, ...], section: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            shown = _key_text(key)
            name = f"{section}.{shown}" if section else shown
            raise SpecError("unknown key", field=name, hint=hint)


def _table(value: Any, field_name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SpecError("must be a table", field=field_name)
    return value


def _array(value: Any, field_name: str) -> list[Any]:
    if not isinstance(value, list):
        raise SpecError(f"must be an array of tables ([[{field_name}]])", field=field_name)
    return value


def _text(value: Any, field_name: str, *, limit: int = MAX_TEXT, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise SpecError("must be a string", field=field_name)
    if "\x00" in value:
        raise SpecError("must not contain NUL characters", field=field_name)
    if len(value) > limit:
        raise SpecError(f"at most {limit} characters", field=field_name)
    if not allow_empty and not value:
        raise SpecError("must not be empty", field=field_name)
    return value


def _size(value: Any, field_name: str, *, minimum: int) -> int:
    try:
        number = parse_size(value)
    except ValueError as exc:
        raise SpecError(str(exc), field=field_name) from None
    if number < minimum:
        raise SpecError(f"must be at least {format_size(minimum)}", field=field_name)
    if number > 1 << 50:
        raise SpecError(f"must be at most {format_size(1 << 50)}", field=field_name)
    return number


def _duration(value: Any, field_name: str) -> int:
    try:
        seconds = int(parse_duration(value))
    except ValueError as exc:
        raise SpecError(str(exc), field=field_name) from None
    if not 1 <= seconds <= 7 * 24 * 3600:
        raise SpecError("must be between 1 second and 7 days", field=field_name)
    return seconds

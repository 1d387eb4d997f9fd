"""Requirements -> :class:`~bake.lock.format.PythonLock`, with uv, as a confined setup step.

Plan, then execute:

- :func:`resolve_context` (pure) is the resolve build's context: a tool stage that installs
  a pinned uv, with the hashes of its wheels, into a venv of bake's own (the same stage every
  locked job build uses, so BuildKit builds it once per base), and a step that runs
  ``uv pip compile --format pylock.toml --python <the base's python3>`` on the requirements.
- :func:`bake.pipeline.resolve_requirements` runs it as a setup step of its own (proof of
  confinement, a proxy of its own, ``docker build --output type=local``): the result comes
  back as files, and no image is made; :func:`read_result` reads them.
- :func:`python_lock` (pure) turns uv's lock into bake's: uv lists every file of a version
  the target can install (``regex`` has two compatible wheels); bake keeps the one the
  target's installer picks, the wheel whose best tag ranks first for the target interpreter.
- :meth:`PythonLock.install_requirements` (pure) is the install step's input: ``name==version
  --hash=sha256:...`` for exactly the locked files, installed with ``--no-deps
  --require-hashes`` (uv refuses any other bytes and resolves nothing).

Why uv rather than ``pip lock``: both resolve from here, but uv resolves the ``transformers``
template's 31 distributions in about 0.7 s inside the step where pip takes several seconds,
and the same binary is the installer issue 11 asks for.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..builder.render import BuildContext, ContextFile
from ..errors import SetupError, SpecError, UnreachableError
from ..templates import BUILTIN_DIR
from .format import Distribution, PythonLock, PythonRequest, parse_target

__all__ = [
    "RESOLVE_STEP",
    "TOOL_REQUIREMENTS",
    "name_locked_files",
    "python_lock",
    "read_result",
    "resolve_context",
]

_BASE = BUILTIN_DIR / "_base"
TOOL_REQUIREMENTS = _BASE / "tool-requirements.txt"
RESOLVE_STEP = _BASE / "resolve_step.py"


# -- plan -----------------------------------------------------------------------------------------


def resolve_context(request: PythonRequest, *, ca_bundle: bool, nonce: str,
                    constraints: tuple[str, ...] = ()) -> BuildContext:
    """The resolve build's Dockerfile and files.  Pure (but for reading bake's own files).

    ``constraints`` (``name==version`` lines, a stack's pins) are versions uv keeps to for
    every project the resolution takes, and adds none."""
    import jinja2  # noqa: PLC0415 - heavy: never on a key hit

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(BUILTIN_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    dockerfile = env.get_template("_base/resolve.Dockerfile.j2").render(
        base=request.base_from, ca_bundle=ca_bundle, no_cache=False)
    # The nonce makes every resolution a new step for BuildKit, whose cache would otherwise
    # answer the same requirements with the same (old) lock for ever.
    doc = {"only_binary": request.only_binary, "nonce": nonce}
    files: tuple[ContextFile, ...] = (
        ContextFile("bake/tool-requirements.txt", source=TOOL_REQUIREMENTS),
        ContextFile("bake/resolve/resolve_step.py", source=RESOLVE_STEP),
        ContextFile("bake/resolve/requirements.in",
                    "".join(f"{r}\n" for r in request.requirements).encode()),
        ContextFile("bake/resolve/request.json", json.dumps(doc, sort_keys=True).encode()),
    )
    if constraints:
        files += (ContextFile("bake/resolve/constraints.txt",
                              "".join(f"{line}\n" for line in constraints).encode()),)
    return BuildContext(dockerfile, files)


def python_lock(pylock_text: str, target_doc: Mapping[str, Any],
                environment: Mapping[str, str], *, only_binary: bool,
                url_map: Callable[[str], str] = lambda url: url) -> PythonLock:
    """uv's pylock.toml (for the target interpreter) -> one file per distribution.  Pure."""
    from packaging.markers import InvalidMarker, Marker  # noqa: PLC0415 - heavy
    from packaging.utils import canonicalize_name  # noqa: PLC0415 - heavy

    target = parse_target(target_doc)
    doc = tomllib.loads(pylock_text)
    out: list[Distribution] = []
    for package in doc.get("packages", []):
        name = canonicalize_name(str(package["name"]))
        version = str(package["version"])
        marker = package.get("marker")
        if marker:
            try:
                applies = Marker(str(marker)).evaluate(dict(environment))
            except InvalidMarker:
                applies = True
            if not applies:
                continue  # a dependency of another platform: not installed here
        best: tuple[int, str, Mapping[str, Any]] | None = None
        for wheel in package.get("wheels", []):
            file = _file_name(wheel)
            rank = target.rank(file)
            if rank is not None and (best is None or (rank, file) < best[:2]):
                best = (rank, file, wheel)
        if best is not None:
            entry, file = best[2], best[1]
        elif not only_binary and package.get("sdist"):
            entry = package["sdist"]
            file = _file_name(entry)
        else:
            raise SpecError(
                f"{name} {version} has no wheel for Python {target.python} on "
                f"{target.libc or 'this'} {target.machine}",
                field="python.requirements",
                hint="pick a version that ships one, or set only_binary = false",
            )
        sha = str((entry.get("hashes") or {}).get("sha256", ""))
        if not sha:
            raise SetupError(f"the index gave no sha256 for {file}",
                             hint="use an index that serves hashes (PEP 503 #sha256 links)")
        out.append(Distribution(name, version, file, sha, url_map(str(entry["url"]))))
    return PythonLock(target, tuple(sorted(out, key=lambda d: d.name)))


def name_locked_files(error: SetupError, lock: PythonLock) -> SetupError:
    """The setup error with each ``name==version`` it mentions followed by the locked file's
    name, so that a hash mismatch names the file (uv names the requirement only)."""
    message = error.message
    for d in lock.distributions:
        pin = f"{d.name}=={d.version}"
        if pin in message and d.file not in message:
            message = message.replace(pin, f"{pin} ({d.file})", 1)
    if message == error.message:
        return error
    return SetupError(message, log_tail=error.log_tail, hint=error.hint)


def _file_name(entry: Mapping[str, Any]) -> str:
    if entry.get("name"):
        return str(entry["name"])
    return unquote(urlsplit(str(entry["url"])).path.rsplit("/", 1)[-1])


# -- reading what the step left ------------------------------------------------------------------


def read_result(out: Path, request: PythonRequest, *,
                url_map: Callable[[str], str] = lambda url: url) -> PythonLock:
    """The resolve build's output folder (``--output type=local``) -> the lock, or a bake error.

    ``url_map`` turns a file URL as the step saw it into the one the lock keeps (a URL on
    the proxy's relay, which names this build's port, back to the seller's index).

    Raises :class:`SpecError` when nothing satisfies the requirements (exit 2),
    :class:`UnreachableError` when the index could not be reached, :class:`SetupError` else.
    """
    try:
        result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SetupError(f"the resolve step left no result ({exc})") from None
    if not isinstance(result, dict):
        raise SetupError("the resolve step left a result bake cannot read")
    if not result.get("ok"):
        message = str(result.get("message", "")).strip()
        last = message.splitlines()[-1].strip() if message else "no output"
        if result.get("error") == "unsatisfiable":
            raise SpecError(f"the requirements cannot be resolved: {_uv_cause(message)}",
                            field="python.requirements",
                            hint="check the names and versions against the index")
        if result.get("error") == "unreachable":
            raise UnreachableError(
                f"cannot reach the package index at {request.index_url}: {last}",
                what=request.index_url,
                hint="check build.pip_index_url, egress.allow and the network")
        raise SetupError(f"resolving the requirements failed: {last}", log_tail=message)
    try:
        text = (out / "pylock.toml").read_text(encoding="utf-8")
        return python_lock(text, result["target"], result["environment"],
                           only_binary=request.only_binary, url_map=url_map)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupError(f"the resolve step left a lock bake cannot read ({exc})") from None


def _uv_cause(message: str) -> str:
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("cause:") or line.startswith("╰─▶"):
            return line.split(None, 1)[1][:300] if " " in line else line
    return (message.splitlines() or ["no solution"])[-1][:300]

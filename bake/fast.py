"""The fast path of ``bake build``: answer a key hit before the CLI is even imported.

Docker's own fully cached build answers in about 0.07 s here; typer and rich
alone take longer than that to import, and the lookup's own modules (the spec
grammar, the settings, the egress policy) a good part of it.  So when the command
line is a plain ``bake [--config F] [--debug] build SPEC [--json] [--push|--no-push]``,
this module asks the record of the last lookup of that spec with that config and
environment (:mod:`bake.cache.hits`): every file it read unchanged, the same base
image, the image still there.  Anything else -- no record, a changed input, an
option it does not know, another command -- returns ``None`` and the full CLI takes
over, whose lookup then records again.  :func:`parse` must agree with the typer app
on every command line it accepts; ``tests/unit/test_cli.py`` holds the table.

Importing this module loads none of asyncio, docker, jinja2, typer, rich or
packaging, nor the lookup's modules (a unit test checks).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from .cache.hits import recall, record_name, spec_file
from .cache.store import record_use
from .types import BuildResult

__all__ = ["FastBuild", "parse", "try_hit"]


@dataclass(frozen=True)
class FastBuild:
    """A ``bake build`` command line the fast path may answer."""

    spec: str
    config: str | None
    json: bool


def parse(argv: list[str]) -> FastBuild | None:
    """The build this command line asks for, or ``None`` when it is anything else."""
    config: str | None = None
    rest = iter(argv)
    for arg in rest:  # the root command's options, before the subcommand
        if arg == "--config":
            config = next(rest, None)
            if config is None or config.startswith("-"):
                return None
        elif arg.startswith("--config="):
            config = arg.partition("=")[2]
        elif arg == "--debug":
            continue
        elif arg == "build":
            break
        else:
            return None
    else:
        return None
    spec: str | None = None
    as_json = False
    for arg in rest:  # build's own
        if arg == "--json":
            as_json = True
        elif arg in ("--push", "--no-push"):
            continue  # on a key hit nothing is pushed, whichever is given
        elif arg.startswith("-") or spec is not None:
            return None
        else:
            spec = arg
    return FastBuild(spec, config, as_json) if spec else None


def try_hit(argv: list[str], *, environ: dict[str, str] | None = None) -> int | None:
    """Answer ``bake build`` from a remembered lookup: the exit code, or ``None`` to go on."""
    parsed = parse(argv)
    if parsed is None:
        return None
    started = time.monotonic()
    try:
        name = record_name(spec_file(parsed.spec), parsed.config or "",
                           os.environ if environ is None else environ)
    except (OSError, RuntimeError):
        return None
    found = recall(name)
    if found is None:
        return None
    record_use(found.key)
    result = BuildResult(found.image, found.key, round(time.monotonic() - started, 3),
                         cached=True, locked=found.locked)
    if parsed.json:
        sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"\u2713 {result.describe()}\n")
    return 0

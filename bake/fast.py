"""The fast path of ``bake build``: answer a key hit before the CLI is imported.

Docker's own fully cached build answers in about 0.12 s here; typer and rich
alone take a third of that to import.  So when the command line is a plain
``bake [--config F] [--debug] build SPEC [--json] [--push|--no-push]``, this
module runs the pipeline's first act (:func:`bake.lookup.lookup`) and answers
if the image is there.  Anything else -- a miss, an error, another command, an
option it does not know -- returns ``None`` and the full CLI takes over (and
reports errors properly).  :func:`parse` must agree with the typer app on every
command line it accepts; ``tests/unit/test_cli.py`` holds the table.

Importing this module loads none of asyncio, docker, jinja2, typer, rich or
packaging (a unit test checks).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from .cache.store import record_use
from .errors import BakeError
from .lookup import lookup
from .settings import load_settings
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


def try_hit(argv: list[str]) -> int | None:
    """Answer ``bake build`` from the key alone: the exit code, or ``None`` to go on."""
    parsed = parse(argv)
    if parsed is None:
        return None
    started = time.monotonic()
    try:
        found = lookup(parsed.spec, load_settings(parsed.config), pull_base=False)
    except (BakeError, OSError):
        return None
    if not found.present:
        return None
    record_use(found.key.digest)
    result = BuildResult(found.image, found.key.digest, round(time.monotonic() - started, 3),
                         cached=True)
    if parsed.json:
        sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"\u2713 {result.describe()}\n")
    return 0

"""``python -m bake`` and the ``bake`` console script.

A key hit must answer about as fast as Docker's own cached build, so before the
CLI (typer, rich) is imported, :mod:`bake.fast` tries to answer ``bake build``
from the key alone; anything it cannot answer goes to the full CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    from .fast import try_hit  # noqa: PLC0415 - before anything else loads

    code = try_hit(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from .cli import main as cli_main  # noqa: PLC0415 - typer and rich: only on a miss

    cli_main()


if __name__ == "__main__":
    main()

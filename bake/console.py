"""All of bake's terminal output: progress, tables, errors.  The library never prints.

A TTY gets a live view (a spinner on the current stage and the last lines of
the build log); anything else gets plain lines, one per event, so logs and CI
read well.  Job output is not ours to decorate: ``bake run`` passes it through.
"""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .errors import BakeError

__all__ = ["ConsoleReporter", "err", "out"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class ConsoleReporter:
    """Implements :class:`bake.pipeline.Reporter` on stderr."""

    def __init__(self, *, quiet: bool = False, window: int = 12) -> None:
        self.quiet = quiet
        self._stage = "starting"
        self._lines: collections.deque[str] = collections.deque(maxlen=window)
        self._live: Live | None = None
        if err.is_terminal and not quiet:
            self._live = Live(self._render(), console=err, refresh_per_second=8, transient=True)

    def __enter__(self) -> ConsoleReporter:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def _render(self) -> Group:
        log = Text("\n".join(self._lines), style="dim", overflow="ellipsis", no_wrap=True)
        return Group(Spinner("dots", text=Text(self._stage, style="bold")), log)

    def stage(self, text: str) -> None:
        self._stage = text
        self._lines.clear()
        if self._live is not None:
            err.print(f"[bold blue]→[/] {escape(text)}")
            self._live.update(self._render())
        elif not self.quiet:
            err.print(f"bake: {text}", markup=False)

    def log(self, line: str) -> None:
        if self._live is not None:
            self._lines.append(line)
            self._live.update(self._render())
        elif not self.quiet:
            err.print(f"  {line}", markup=False)

    def warn(self, text: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(text)}")


def error(exc: BakeError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"  [dim]hint:[/] {escape(exc.hint)}", soft_wrap=True)


def unexpected(exc: BaseException) -> None:
    err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}")
    err.print("  [dim]hint:[/] run again with --debug for the traceback, and report it")


def done(text: str) -> None:
    err.print(f"[green]✓[/] {escape(text)}")


def json_line(data: Mapping[str, Any] | Sequence[Any]) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    t = Table(*columns, box=None, pad_edge=False)
    for row in rows:
        t.add_row(*row)
    out.print(t)


def plain(text: str) -> None:
    out.print(text, markup=False)


def note(text: str, *, label: str = "bake:", style: str = "yellow") -> None:
    err.print(f"[{style}]{escape(label)}[/] {escape(text)}")


def check_line(ok: bool, name: str, detail: str, fix: str | None) -> None:
    mark = "[green]✓[/]" if ok else "[red]✗[/]"
    out.print(f"{mark} {escape(name)}: {escape(detail)}")
    if not ok and fix:
        out.print(f"    [dim]fix:[/] {escape(fix)}")

"""The egress log: one JSON line per decision and per closed tunnel.

The log is the seller's record of what a build reached and what it tried to
reach.  Each line is written and flushed on its own, so that a build killed
half-way still leaves every line it produced, and :func:`summarize` skips a
torn last line instead of failing on it.

A line::

    {"time": "2024-05-01T12:00:00.123456Z", "event": "decision", "client": "172.17.0.2:41234",
     "host": "pypi.org", "port": 443, "decision": "allowed", "reason": "allowlisted",
     "address": "151.101.0.223", "bytes_up": 0, "bytes_down": 0, "duration_s": 0.0}
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

__all__ = ["EgressLedger", "EgressStats", "summarize"]

Event = Literal["decision", "tunnel"]


@dataclass(frozen=True)
class EgressStats:
    """Counts over one proxy's life: decisions, and bytes through its tunnels."""

    allowed: int = 0
    denied: int = 0
    bytes_up: int = 0  # from the build to the internet
    bytes_down: int = 0  # from the internet into the build

    def one_line(self) -> str:
        """``egress: 12 allowed, 3 denied, 41.2 MB in / 0.3 MB out``."""
        return (
            f"egress: {self.allowed} allowed, {self.denied} denied, "
            f"{self.bytes_down / 1e6:.1f} MB in / {self.bytes_up / 1e6:.1f} MB out"
        )


class EgressLedger:
    """Writes the egress log (when given a path) and keeps running totals.

    Thread-safe: the proxy's loop thread writes while the caller reads
    :meth:`stats` from another thread.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        self._allowed = 0
        self._denied = 0
        self._bytes_up = 0
        self._bytes_down = 0

    def decision(
        self,
        *,
        client: str,
        allowed: bool,
        reason: str,
        host: str = "",
        port: int = 0,
        address: str = "",
    ) -> None:
        """Record one allow/deny decision (exactly one per request)."""
        with self._lock:
            if allowed:
                self._allowed += 1
            else:
                self._denied += 1
            self._write(
                "decision",
                client=client,
                host=host,
                port=port,
                decision="allowed" if allowed else "denied",
                reason=reason,
                address=address,
                bytes_up=0,
                bytes_down=0,
                duration_s=0.0,
            )

    def tunnel(
        self,
        *,
        client: str,
        host: str,
        port: int,
        address: str,
        reason: str,
        bytes_up: int,
        bytes_down: int,
        duration_s: float,
    ) -> None:
        """Record a closed tunnel (or forwarded request) and why it closed."""
        with self._lock:
            self._bytes_up += bytes_up
            self._bytes_down += bytes_down
            self._write(
                "tunnel",
                client=client,
                host=host,
                port=port,
                decision="allowed",
                reason=reason,
                address=address,
                bytes_up=bytes_up,
                bytes_down=bytes_down,
                duration_s=round(duration_s, 3),
            )

    def stats(self) -> EgressStats:
        with self._lock:
            return EgressStats(self._allowed, self._denied, self._bytes_up, self._bytes_down)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _write(self, event: Event, **fields: object) -> None:
        if self._file is None:
            return
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        line = json.dumps({"time": now, "event": event, **fields}, separators=(", ", ": "))
        self._file.write(line + "\n")
        # One flush per line: the log must survive the build being killed.
        self._file.flush()


def summarize(path: Path) -> EgressStats:
    """Totals of an egress log; a missing log (no proxy ran) counts as nothing."""
    allowed = denied = bytes_up = bytes_down = 0
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return EgressStats()
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if not isinstance(line, dict):
            continue
        if line.get("event") == "decision":
            if line.get("decision") == "allowed":
                allowed += 1
            else:
                denied += 1
        elif line.get("event") == "tunnel":
            bytes_up += _count(line.get("bytes_up"))
            bytes_down += _count(line.get("bytes_down"))
    return EgressStats(allowed, denied, bytes_up, bytes_down)


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0

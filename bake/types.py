"""Types that several floors share: the reporter every stage talks to, and build results.

On the ground floor with :mod:`bake.errors`: the CLI, the fast path, the
pipeline and the services all import these, and these import nothing of bake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["BuildResult", "NullReporter", "Reporter"]


class Reporter(Protocol):
    """Where the pipeline tells a person what it does; the CLI's console implements it."""

    def stage(self, text: str) -> None: ...
    def log(self, line: str) -> None: ...
    def warn(self, text: str) -> None: ...


class NullReporter:
    """A reporter that says nothing (the Python API's default)."""

    def stage(self, text: str) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class BuildResult:
    image: str
    key: str
    duration_s: float
    cached: bool = False
    pulled: bool = False
    pushed: bool = False
    built: bool = False
    egress: str = ""  # "enforced" | "advisory" | "offline" (no network at all) | "" (no build)
    egress_log: str | None = None
    egress_summary: str | None = None
    locked: str | None = None  # the digest of the lock the image was keyed by ("sha256:...")
    stack: str | None = None  # the key of the stack a build's deps started from; None: base

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image, "key": self.key, "cached": self.cached, "pulled": self.pulled,
            "pushed": self.pushed, "egress": self.egress or None, "egress_log": self.egress_log,
            "duration_s": self.duration_s, "locked": self.locked, "stack": self.stack,
        }

    def describe(self) -> str:
        how = ("cached" if self.cached else "pulled from the registry" if self.pulled
               else "built")
        if self.stack:
            how += f", on stack {self.stack[:12]}"
        if self.pushed:
            how += ", pushed"
        if self.egress:
            how += f", egress {self.egress}"
        return f"{self.image} ({how}, {self.duration_s:.2f} s)"

"""One grammar for sizes and durations, wherever bake reads or prints them.  Pure.

Sizes are bytes: a number and an optional binary unit, as ``docker run -m`` reads
them (``"512m"``, ``"8g"``, ``"1.5t"``, ``"64MiB"``, ``"4096"``).  Durations are
seconds: one or more number-unit parts from ``w d h m s`` (``"90s"``, ``"1h30m"``,
``"1.5h"``, ``"2w"``), or a bare whole number of seconds.  The same text means the
same thing in ``bake.toml`` (``[run] memory``, ``timeout``, ``output``), in the
seller config (``build.resolve_ttl``, ``build.max_context``) and on the command
line (``bake prune --older-than 1d --keep-size 50g``).

The parsers raise :class:`ValueError` with a message that shows an accepted
example; each caller turns it into its own error (a spec field, a setting, an
option), so the message names what the person wrote it in.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

# Longer strings are not sizes or durations: they would only overflow float() or
# trip int()'s digit limit (a traceback instead of a clear error).
_MAX_TEXT = 32
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.ASCII | re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])", re.ASCII)
_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}

SIZE_EXAMPLE = 'a number and a unit, e.g. "512m", "8g" or "1.5t"'
DURATION_EXAMPLE = 'a number and a unit (w, d, h, m, s), e.g. "90s", "30m", "1h30m" or "7d"'


def parse_size(value: str | int) -> int:
    """``"8g"`` -> 8 GiB in bytes; a whole number is bytes already."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{value} is negative; a size is {SIZE_EXAMPLE}")
        return value
    text = value.strip() if isinstance(value, str) else ""
    match = _SIZE.fullmatch(text) if 0 < len(text) <= _MAX_TEXT else None
    if match is None:
        raise ValueError(f"{_show(value)} is not a size; write {SIZE_EXAMPLE}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: str | int) -> float:
    """``"1h30m"`` -> 5400.0 seconds; a whole number is seconds already."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{value} is negative; a duration is {DURATION_EXAMPLE}")
        return float(value)
    text = value.strip().lower() if isinstance(value, str) else ""
    if text.isdigit() and len(text) <= _MAX_TEXT:
        return float(text)
    pos, total = 0, 0.0
    if len(text) <= _MAX_TEXT:
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _SECONDS[match.group(2)]
            pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"{_show(value)} is not a duration; write {DURATION_EXAMPLE}")
    return total


def format_size(size: int) -> str:
    """Bytes for people, in the binary units the parser reads: ``"1.5 GiB"``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.3g} {unit}"
    return f"{size} B"


def format_duration(seconds: float) -> str:
    """Seconds for people: ``"2h"``, ``"1d12h"``, ``"90s"`` (whole seconds)."""
    left = int(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, left = divmod(left, _SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"

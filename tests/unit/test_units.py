"""One grammar for sizes and durations (bake/units.py), wherever bake reads them."""

from __future__ import annotations

import pytest

from bake.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("1024", 1024), ("500m", 500 << 20), ("50g", 50 << 30), ("50G", 50 << 30),
    ("1.5t", int(1.5 * (1 << 40))), ("512MiB", 512 << 20), ("2gb", 2 << 30), ("64k", 64 << 10),
    (" 8g ", 8 << 30), (4096, 4096),
])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "g", "-1g", "5x", "1e9", "ten", "9" * 40, -1, True])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="512m"):
        parse_size(text)


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 7 * 86400), ("12h", 12 * 3600), ("1d12h", 36 * 3600), ("2w", 14 * 86400),
    ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("1h30m", 5400), ("90", 90), (300, 300),
])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "7days", "soon", "1h-2m", "h1", "1" * 40 + "s",
                                  -5, False])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="90s"):
        parse_duration(text)


def test_one_grammar_for_spec_settings_and_options() -> None:
    """The same text means the same in bake.toml, the seller config and on the command line
    (it did not: "1d" was refused by [run] timeout and accepted by prune --older-than)."""
    from bake.settings import load_settings
    from bake.spec import parse_spec

    spec = parse_spec({"job": {"command": ["x"]}, "run": {"timeout": "1d", "memory": "1.5g"}},
                      root=__import__("pathlib").Path("."))
    assert spec.run.timeout == 86400 and spec.run.memory == int(1.5 * (1 << 30))
    settings = load_settings(None, environ={"BAKE_BUILD_RESOLVE_TTL": "1d",
                                            "BAKE_BUILD_MAX_CONTEXT": "1.5g"})
    assert settings.build.resolve_ttl == 86400
    assert settings.build.max_context == int(1.5 * (1 << 30))


def test_printing_uses_the_units_the_parser_reads() -> None:
    assert format_size(1536 << 20) == "1.5 GiB"
    assert parse_size("1.5g") == 1536 << 20
    assert format_size(512) == "512 B"
    assert format_duration(5400) == "1h30m" and parse_duration("1h30m") == 5400
    assert format_duration(0) == "0s"

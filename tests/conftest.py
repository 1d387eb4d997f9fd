"""Shared by both tiers: a private state folder per test, and no stray settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Variables that would let the machine's own set-up leak into a test.
_STRIP = (
    "BAKE_CONFIG", "HF_TOKEN", "HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE",
    "HUGGING_FACE_HUB_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
    "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
)


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> Iterator[None]:
    import os

    for name in _STRIP:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("BAKE_") and not name.startswith("BAKE_TEST_"):
            monkeypatch.delenv(name, raising=False)
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("BAKE_STATE_DIR", str(state))
    # No seller config from the machine: tests name theirs explicitly.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
    yield


def write_job(folder: Path, spec: str, files: dict[str, str] | None = None) -> Path:
    """A job folder with ``bake.toml`` and the given files; returns the spec's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    path = folder / "bake.toml"
    path.write_text(spec)
    return path

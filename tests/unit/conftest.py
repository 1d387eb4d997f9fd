"""Unit tier: no engine, no network.  The Docker socket is pointed at nothing."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A unit test that reaches for the Engine fails fast and loudly instead of using
    # whatever engine the machine happens to run.
    dead = tmp_path_factory.mktemp("nodocker") / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")

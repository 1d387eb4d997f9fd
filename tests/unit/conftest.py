"""Unit tier: no engine, no network.  The Docker socket is pointed at nothing."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A unit test that reaches for the Engine fails fast and loudly instead of using
    # whatever engine the machine happens to run.
    dead = tmp_path_factory.mktemp("nodocker") / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
    # ... and so does one that makes its settings by hand (Settings(): no DOCKER_HOST).
    monkeypatch.setattr("bake.engine.client.DEFAULT_HOST", f"unix://{dead}")


_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names resolve only to this machine: a unit test never asks a DNS server."""
    import ipaddress
    import socket

    real = socket.getaddrinfo

    def local_only(host: object, *args: object, **kw: object) -> object:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            if host is not None and text.lower() not in _LOCAL_NAMES:
                raise socket.gaierror(socket.EAI_NONAME,
                                      f"unit tests resolve no names ({text})") from None
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", local_only)

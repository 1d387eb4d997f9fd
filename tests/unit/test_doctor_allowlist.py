"""doctor's allowlist check: names the proxy would refuse after DNS, and the exact fix."""

from __future__ import annotations

import socket

import pytest

from bake.doctor import check_allowlist_addresses, refused_addresses
from bake.settings import load_settings


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}

    def fake(host: str, port: int, *args: object, **kw: object) -> list[tuple[object, ...]]:
        # doctor asks as the proxy does: the absolute name, so no search domain applies.
        assert host.endswith("."), host
        host = host.removesuffix(".")
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return answers


def test_public_addresses_pass(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["151.101.0.223"]
    assert refused_addresses(load_settings(environ={})) == {}
    assert check_allowlist_addresses(load_settings(environ={})).ok


def test_a_documentation_range_gateway_is_named_with_its_fix(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["203.0.113.80"]
    dns["files.pythonhosted.org"] = ["203.0.113.80", "151.101.0.223"]
    settings = load_settings(environ={})
    assert refused_addresses(settings) == {"pypi.org": ["203.0.113.80"],
                                           "files.pythonhosted.org": ["203.0.113.80"]}
    check = check_allowlist_addresses(settings)
    assert not check.ok
    assert 'allow_cidrs = ["203.0.113.80/32"]' in check.fix


def test_allow_cidrs_settles_it(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["203.0.113.80"]
    settings = load_settings(environ={"BAKE_EGRESS_ALLOW_CIDRS": "203.0.113.0/24"})
    assert check_allowlist_addresses(settings).ok


def test_loopback_is_refused_even_for_an_allowlisted_name(dns: dict[str, list[str]]) -> None:
    dns["pypi.org"] = ["127.0.0.1"]
    assert refused_addresses(load_settings(environ={})) == {"pypi.org": ["127.0.0.1"]}

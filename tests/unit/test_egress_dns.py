"""How the proxy resolves an allowed name: the hosts file by exact name, else the absolute name."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bake.egress import dns
from bake.egress.policy import EgressPolicy


def test_hosts_file_lookup_is_by_exact_name(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# a comment mirror.internal\n"
        "10.0.0.5   Mirror.Internal mirror  # trailing comment\n"
        "fe80::5%eth0 mirror.internal\n"
        "10.0.0.5 mirror.internal\n"  # a repeat
        "not-an-address mirror.internal\n"
        "10.0.0.6 mirror.internal.corp.example\n"
    )
    assert dns.hosts_file_addresses("mirror.internal", hosts) == ["10.0.0.5", "fe80::5"]
    assert dns.hosts_file_addresses("mirror.internal.", hosts) == ["10.0.0.5", "fe80::5"]
    assert dns.hosts_file_addresses("internal", hosts) == []
    assert dns.hosts_file_addresses("x", tmp_path / "missing") == []


def test_dns_is_asked_for_the_absolute_name_only(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    asked: list[str] = []

    def fake(host: str, port: int, *args: object) -> list[tuple[object, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("151.101.0.223", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2a04:4e42::223", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("151.101.0.223", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    monkeypatch.setattr(dns, "HOSTS_FILE", tmp_path / "no-hosts")
    assert dns.resolve_absolute("pypi.org", 443) == ["151.101.0.223", "2a04:4e42::223"]
    assert dns.resolve_absolute("pypi.org.", 443) == ["151.101.0.223", "2a04:4e42::223"]
    assert asked == ["pypi.org.", "pypi.org."]


def test_the_proxy_resolves_only_what_the_policy_allowed() -> None:
    pol = EgressPolicy.from_settings(["*.allowed.test"], ["http://mirror.test:3141"], [])
    assert pol.allows_lookup("x.allowed.test", 443, http=False)
    assert not pol.allows_lookup("x.allowed.test.search.example", 443, http=False)
    assert not pol.allows_lookup("x.allowed.test", 8443, http=False)
    assert pol.allows_lookup("mirror.test", 3141, http=True)
    assert not pol.allows_lookup("mirror.test", 80, http=True)

"""The egress proxy, live on 127.0.0.1 against loopback upstreams: a table of attacks.

Upstreams listen on 127.0.0.2 (traps on 127.0.0.3); names resolve through a
stub that records every lookup, so "a denied name is never resolved" is a
checked fact, not a hope.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.egress.ledger import summarize
from bake.egress.proxy import ProxyLimits, RunningProxy, serve_forever, start_proxy
from bake.errors import EgressError
from tests.unit.egress_helpers import (
    PROXY_HOST,
    TRAP_HOST,
    UPSTREAM_HOST,
    StubResolver,
    Upstream,
    ask,
    connect_line,
    decisions,
    log_lines,
    policy,
    read_reply,
    recv_exactly,
    recv_until_closed,
    running,
    tunnels,
    wait_until,
)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "egress.jsonl"


@pytest.fixture
def echo() -> Iterator[Upstream]:
    with Upstream(mode="echo") as upstream:
        yield upstream


def open_tunnel(proxy_addr: tuple[str, int], target: str) -> socket.socket:
    sock = socket.create_connection(proxy_addr, timeout=5)
    sock.sendall(connect_line(target))
    reply = read_reply(sock)
    assert reply.status == 200, reply.head
    return sock


# --- the happy paths -------------------------------------------------------------------------

def test_connect_relays_both_ways_and_logs_one_decision_and_one_tunnel(
        echo: Upstream, log: Path) -> None:
    resolver = StubResolver([UPSTREAM_HOST])
    with running(policy(ports=[echo.port]), log, resolver) as proxy:
        target = f"echo.test:{echo.port}"
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            # Bytes sent right behind the head (an eager ClientHello) are not lost.
            sock.sendall(connect_line(target) + b"early;")
            reply = read_reply(sock)
            assert reply.status == 200
            sock.sendall(b"x" * 100_000)
            # The echo of "early;" may arrive in the same recv as the 200: it is
            # then in reply.body, not lost.
            got = reply.body + recv_exactly(sock, 100_006 - len(reply.body))
            assert got == b"early;" + b"x" * 100_000
        wait_until(lambda: len(tunnels(log)) == 1)
        assert resolver.calls == [("echo.test.", echo.port)]
        stats = proxy.stats()
    [decision] = decisions(log)
    assert decision["decision"] == "allowed"
    assert decision["reason"] == "allowlisted"
    assert decision["address"] == UPSTREAM_HOST
    assert decision["host"] == "echo.test"
    [tunnel] = tunnels(log)
    assert tunnel["bytes_up"] == tunnel["bytes_down"] == 100_006
    assert tunnel["reason"] == "closed"
    assert (stats.allowed, stats.denied, stats.bytes_up) == (1, 0, 100_006)
    assert set(decision) == {"time", "event", "client", "host", "port", "decision", "reason",
                             "address", "bytes_up", "bytes_down", "duration_s"}
    assert decision["time"].endswith("Z")


def test_url_port_and_idempotent_close(log: Path) -> None:
    proxy = start_proxy(policy(), host=PROXY_HOST, log_path=log)
    assert proxy.url == f"http://{PROXY_HOST}:{proxy.port}"
    assert proxy.port > 0
    assert proxy.alive()
    proxy.close()
    proxy.close()
    assert not proxy.alive()
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()


def test_cannot_bind_is_an_egress_error(log: Path) -> None:
    with socket.create_server((PROXY_HOST, 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(EgressError, match="cannot listen"):
            start_proxy(policy(), host=PROXY_HOST, port=port, log_path=log)


def test_close_ends_open_tunnels_and_logs_them(echo: Upstream, log: Path) -> None:
    with running(policy(ports=[echo.port]), log) as proxy:
        sock = open_tunnel((proxy.host, proxy.port), f"echo.test:{echo.port}")
    with sock:
        assert recv_until_closed(sock) == b""
    assert [t["reason"] for t in tunnels(log)] == ["proxy-closed"]


# --- names: decided before any DNS lookup ----------------------------------------------------

@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("evil.test:443", "not-allowlisted"),
        ("echo.test.evil.test:443", "not-allowlisted"),
        ("evilecho.test:443", "not-allowlisted"),
        ("ECHO.test:22", "bad-port"),
        ("echo.test:+443", "bad-authority"),
        ("echo.test:443@evil.test", "bad-authority"),
        ("user@echo.test:443", "bad-authority"),
        ("127.0.0.2:443", "ip-literal"),
        ("2130706434:443", "ip-literal"),
        ("0x7f.2:443", "ip-literal"),
        ("127.2:443", "ip-literal"),
        ("[::1]:443", "ip-literal"),
    ],
)
def test_denied_names_are_never_resolved(target: str, reason: str, log: Path) -> None:
    resolver = StubResolver([UPSTREAM_HOST])
    with running(policy(), log, resolver) as proxy, ask(proxy, connect_line(target)) as reply:
        assert reply.status == 403
        assert reason.encode() in reply.body
    assert resolver.calls == []
    [decision] = decisions(log)
    assert (decision["decision"], decision["reason"]) == ("denied", reason)
    assert tunnels(log) == []


def test_host_and_forwarding_headers_do_not_steer(log: Path) -> None:
    resolver = StubResolver([UPSTREAM_HOST])
    line = connect_line("evil.test:443", "X-Forwarded-Host: echo.test:443",
                        "Forwarded: host=echo.test", "Proxy-Connection: keep-alive")
    line = line.replace(b"Host: evil.test:443", b"Host: echo.test:443")
    with running(policy(), log, resolver) as proxy, ask(proxy, line) as reply:
        assert reply.status == 403
    assert resolver.calls == []


# --- addresses: checked after DNS, dialled exactly -------------------------------------------

@pytest.mark.parametrize(
    ("answer", "detail", "cidrs"),
    [
        ("127.0.0.5", "loopback", []),
        ("10.0.0.1", "private", []),
        ("192.168.0.10", "private", []),
        ("169.254.169.254", "link-local", []),
        ("100.64.0.1", "cgnat", []),
        ("0.0.0.0", "unspecified", ["0.0.0.0/8"]),  # never, whatever allow_cidrs says
        ("::1", "loopback", []),
        ("::ffff:127.0.0.2", "ipv4-mapped", ["127.0.0.0/8"]),
        ("64:ff9b::a00:1", "nat64-embedded-private", []),
        ("64:ff9b::7f00:1", "nat64-embedded-own-address", ["127.0.0.0/8"]),
        ("2002:a00:1::1", "6to4-embedded-private", []),
        ("fe80::1", "link-local", []),
        ("fd00::1", "unique-local", []),
        # The proxy itself (it listens on 127.0.0.1), even with all of loopback allowed.
        ("127.0.0.1", "own-address", ["127.0.0.0/8"]),
    ],
)
def test_allowed_name_resolving_to_non_public_address_is_denied(
        answer: str, detail: str, cidrs: list[str], log: Path) -> None:
    resolver = StubResolver([answer])
    with running(policy(allow_cidrs=cidrs), log, resolver) as proxy, \
            ask(proxy, connect_line("echo.test:443")) as reply:
        assert reply.status == 403
        assert b"non-public-address" in reply.body
    [decision] = decisions(log)
    assert decision["decision"] == "denied"
    assert decision["reason"] == f"non-public-address:{detail}"
    assert resolver.calls == [("echo.test.", 443)]
    assert tunnels(log) == []  # nothing was dialled


def test_one_bad_answer_denies_the_name(echo: Upstream, log: Path) -> None:
    resolver = StubResolver([UPSTREAM_HOST, "10.0.0.1"])
    with running(policy(ports=[echo.port]), log, resolver) as proxy, \
            ask(proxy, connect_line(f"echo.test:{echo.port}")) as reply:
        assert reply.status == 403
    assert echo.accepted == 0
    assert decisions(log)[0]["address"] == "10.0.0.1"


def test_dns_rebinding_cannot_move_the_tunnel(log: Path) -> None:
    # First answer: the allowed upstream.  Every later answer: a trap on another
    # address that allow_cidrs does not cover.  The proxy must dial what it
    # checked and look the name up only once per request.
    resolver = StubResolver([UPSTREAM_HOST], [TRAP_HOST])
    with Upstream(UPSTREAM_HOST, mode="echo") as good, \
            Upstream(TRAP_HOST, port=good.port, mode="echo") as trap:
        with running(policy(ports=[good.port]), log, resolver) as proxy:
            addr = (proxy.host, proxy.port)
            with open_tunnel(addr, f"echo.test:{good.port}") as sock:
                sock.sendall(b"ping")
                assert recv_exactly(sock, 4) == b"ping"
            assert len(resolver.calls) == 1
            assert (good.accepted, trap.accepted) == (1, 0)
            # The rebound answer is itself refused when it is what gets checked.
            with ask(proxy, connect_line(f"echo.test:{good.port}")) as reply:
                assert reply.status == 403
            assert len(resolver.calls) == 2
        assert trap.accepted == 0
    assert [d["address"] for d in decisions(log)] == [UPSTREAM_HOST, TRAP_HOST]


def test_checked_addresses_are_tried_in_order(echo: Upstream, log: Path) -> None:
    # 127.0.0.4 refuses the connection; the proxy moves on to the next checked address.
    resolver = StubResolver(["127.0.0.4", UPSTREAM_HOST])
    pol = policy(allow_cidrs=["127.0.0.0/8"], ports=[echo.port])
    with running(pol, log, resolver) as proxy:
        with open_tunnel((proxy.host, proxy.port), f"echo.test:{echo.port}") as sock:
            sock.sendall(b"ok")
            assert recv_exactly(sock, 2) == b"ok"
        wait_until(lambda: len(tunnels(log)) == 1)
    assert tunnels(log)[0]["address"] == UPSTREAM_HOST
    assert len(resolver.calls) == 1


def test_resolution_failure_and_timeout(log: Path) -> None:
    slow = StubResolver([UPSTREAM_HOST], delay=2.0)
    with running(policy(), log, slow, resolve_timeout=0.2) as proxy, \
            ask(proxy, connect_line("echo.test:443")) as reply:
        assert reply.status == 504
    broken = StubResolver(error=socket.gaierror(-2, "Name or service not known"))
    with running(policy(), log, broken) as proxy, \
            ask(proxy, connect_line("echo.test:443")) as reply:
        assert reply.status == 502
    assert [d["reason"] for d in decisions(log)] == ["resolve-timeout", "resolve-failed"]


def test_upstream_refused_is_502(log: Path) -> None:
    with socket.create_server((UPSTREAM_HOST, 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with running(policy(ports=[port]), log) as proxy, \
            ask(proxy, connect_line(f"echo.test:{port}")) as reply:
        assert reply.status == 502
        wait_until(lambda: len(tunnels(log)) == 1)
    assert tunnels(log)[0]["reason"] == "connect-failed"


def test_upstream_connect_timeout_is_504(log: Path) -> None:
    # A listener whose accept queue is full drops further SYNs: connect hangs.
    with socket.socket() as listener:
        listener.bind((UPSTREAM_HOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection((UPSTREAM_HOST, port), timeout=2):
            started = time.monotonic()
            with running(policy(ports=[port]), log, connect_timeout=0.4) as proxy, \
                    ask(proxy, connect_line(f"echo.test:{port}")) as reply:
                assert reply.status == 504
                elapsed = time.monotonic() - started
                wait_until(lambda: len(tunnels(log)) == 1)
    assert 0.3 < elapsed < 3
    assert tunnels(log)[0]["reason"] == "connect-timeout"


# --- plain HTTP: only allow_http origins -----------------------------------------------------

def test_plain_http_forwarding_rewrites_the_request(log: Path) -> None:
    with Upstream(mode="http") as origin:
        origin_url = f"http://{UPSTREAM_HOST}:{origin.port}"
        pol = policy(allow=[], allow_http=[origin_url], allow_cidrs=[])
        request = (
            f"GET {origin_url}/simple/six/?x=1 HTTP/1.1\r\n"
            "Host: evil.test\r\n"
            "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: evil.test\r\n"
            "Forwarded: for=1.2.3.4\r\nProxy-Authorization: Basic eDp5\r\n"
            "Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Secret\r\n"
            "X-Secret: hop\r\nUser-Agent: pip/24\r\n\r\n"
        ).encode()
        resolver = StubResolver()
        with running(pol, log, resolver) as proxy, ask(proxy, request) as reply:
            assert reply.status == 200
            assert reply.body == b"hello from origin\n"
        assert resolver.calls == []  # the origin names its address: nothing to resolve
        [head] = origin.heads
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /simple/six/?x=1 HTTP/1.1"
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
               for line in lines[1:] if line}
    assert headers["host"] == f"{UPSTREAM_HOST}:{origin.port}"
    assert headers["connection"] == "close"
    assert headers["user-agent"] == "pip/24"
    for gone in ("x-forwarded-for", "x-forwarded-host", "forwarded", "proxy-authorization",
                 "proxy-connection", "x-secret"):
        assert gone not in headers
    assert [d["decision"] for d in decisions(log)] == ["allowed"]
    assert len(tunnels(log)) == 1


def test_plain_http_with_a_body_relays_exactly_content_length(log: Path) -> None:
    with Upstream(mode="http") as origin:
        origin_url = f"http://{UPSTREAM_HOST}:{origin.port}"
        pol = policy(allow=[], allow_http=[origin_url], allow_cidrs=[])
        request = (f"POST {origin_url}/upload HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
                   "hello" "GET http://evil.test/ HTTP/1.1\r\n\r\n").encode()
        with running(pol, log) as proxy, ask(proxy, request) as reply:
            assert reply.status == 200
        wait_until(lambda: len(tunnels(log)) == 1)
    assert tunnels(log)[0]["bytes_up"] == 5  # the smuggled second request never left


@pytest.mark.parametrize(
    ("request_line", "status", "reason"),
    [
        ("GET http://{up}:{other}/ HTTP/1.1", 403, "not-allowlisted"),  # same host, other port
        ("GET http://127.0.0.9:{port}/ HTTP/1.1", 403, "not-allowlisted"),
        ("GET http://2130706434:{port}/ HTTP/1.1", 403, "ip-literal"),
        ("GET http://echo.test/ HTTP/1.1", 403, "not-allowlisted"),  # CONNECT-only name
        ("GET https://{up}:{port}/ HTTP/1.1", 403, "bad-url"),
        ("GET http://x@{up}:{port}/ HTTP/1.1", 403, "bad-authority"),
        ("GET / HTTP/1.1", 400, "not-a-proxy-request"),
        ("TRACE http://{up}:{port}/ HTTP/1.1", 405, "bad-method"),
        ("GET http://{up}:{port}/  HTTP/1.1", 400, "bad-request"),
        ("GET http://{up}:{port}/ HTTP/2.0", 400, "bad-request"),
    ],
)
def test_plain_http_refusals(request_line: str, status: int, reason: str, log: Path) -> None:
    with Upstream(mode="http") as origin:
        pol = policy(allow_http=[f"http://{UPSTREAM_HOST}:{origin.port}"])
        line = request_line.format(up=UPSTREAM_HOST, port=origin.port, other=origin.port + 1)
        resolver = StubResolver()
        with running(pol, log, resolver) as proxy, \
                ask(proxy, f"{line}\r\nHost: {UPSTREAM_HOST}:{origin.port}\r\n\r\n".encode()) as r:
            assert r.status == status
        assert origin.accepted == 0
        assert resolver.calls == []
    [decision] = decisions(log)
    assert (decision["decision"], decision["reason"]) == ("denied", reason)


def test_chunked_request_body_is_refused(log: Path) -> None:
    with Upstream(mode="http") as origin:
        url = f"http://{UPSTREAM_HOST}:{origin.port}"
        request = f"POST {url}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode()
        with running(policy(allow_http=[url]), log) as proxy, ask(proxy, request) as reply:
            assert reply.status == 411
        assert origin.accepted == 0


# --- the request head: deadline and size cap --------------------------------------------------

def test_slow_head_is_cut_off(log: Path) -> None:
    with running(policy(), log, head_timeout=0.3) as proxy, \
            socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        started = time.monotonic()
        # Slowloris: a byte at a time, never finishing.  The deadline is for the
        # whole head, so trickling does not extend it.
        for byte in b"CONNECT echo.test:443 HTTP/1.1\r\nX: " + b"y" * 200:
            if select.select([sock], [], [], 0)[0]:
                break  # the proxy answered
            sock.send(bytes([byte]))
            time.sleep(0.02)
        reply = read_reply(sock)
        assert reply.status == 408
        assert time.monotonic() - started < 1.5
        assert recv_until_closed(sock) == b""
    assert [d["reason"] for d in decisions(log)] == ["head-timeout"]


def test_oversized_head_is_431(log: Path) -> None:
    with running(policy(), log, max_head_bytes=1024) as proxy:
        with ask(proxy, b"CONNECT echo.test:443 HTTP/1.1\r\nX-Pad: " + b"a" * 4000) as reply:
            assert reply.status == 431
        complete = b"CONNECT echo.test:443 HTTP/1.1\r\nX-Pad: " + b"a" * 1100 + b"\r\n\r\n"
        with ask(proxy, complete) as reply:
            assert reply.status == 431
        with ask(proxy, connect_line("evil.test:443", "X-Pad: " + "a" * 500)) as reply:
            assert reply.status == 403  # under the cap: judged normally
    assert [d["reason"] for d in decisions(log)] == ["head-too-large", "head-too-large",
                                                     "not-allowlisted"]


@pytest.mark.parametrize(
    "head",
    [b"CONNECT echo.test:443 HTTP/1.1\r\n X: folded\r\n\r\n",
     b"CONNECT echo.test:443 HTTP/1.1\r\nX : y\r\n\r\n",
     b"CONNECT echo.test:443 HTTP/1.1\nX: y\r\n\r\n",
     b"\r\nCONNECT echo.test:443 HTTP/1.1\r\n\r\n",
     b"CONNECT  echo.test:443 HTTP/1.1\r\n\r\n",
     "CONNECT \u00e9cho.test:443 HTTP/1.1\r\n\r\n".encode()],
)
def test_malformed_heads_are_400(head: bytes, log: Path) -> None:
    resolver = StubResolver()
    with running(policy(), log, resolver) as proxy, ask(proxy, head) as reply:
        assert reply.status == 400
    assert resolver.calls == []
    assert [d["reason"] for d in decisions(log)] == ["bad-request"]


# --- tunnel limits ---------------------------------------------------------------------------

def test_tunnel_cap_is_429_and_frees_up(echo: Upstream, log: Path) -> None:
    target = f"echo.test:{echo.port}"
    with running(policy(ports=[echo.port]), log, max_tunnels=2) as proxy:
        addr = (proxy.host, proxy.port)
        first, second = open_tunnel(addr, target), open_tunnel(addr, target)
        with ask(proxy, connect_line(target)) as reply:
            assert reply.status == 429
        first.close()
        wait_until(lambda: len(tunnels(log)) == 1)
        with open_tunnel(addr, target) as third:
            third.sendall(b"still works")
            assert recv_exactly(third, 11) == b"still works"
        second.close()
    assert [d["reason"] for d in decisions(log)].count("tunnel-cap") == 1


def test_idle_tunnel_is_closed(echo: Upstream, log: Path) -> None:
    with running(policy(ports=[echo.port]), log, idle_timeout=0.3) as proxy, \
            open_tunnel((proxy.host, proxy.port), f"echo.test:{echo.port}") as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        started = time.monotonic()
        assert recv_until_closed(sock) == b""
        assert 0.2 < time.monotonic() - started < 2
    assert [t["reason"] for t in tunnels(log)] == ["idle-timeout"]


def test_tunnel_duration_is_capped_even_when_busy(echo: Upstream, log: Path) -> None:
    with running(policy(ports=[echo.port]), log, max_tunnel_seconds=0.5) as proxy, \
            open_tunnel((proxy.host, proxy.port), f"echo.test:{echo.port}") as sock:
        started = time.monotonic()
        with pytest.raises(OSError):
            while time.monotonic() - started < 5:
                sock.sendall(b"busy")
                if not sock.recv(64):
                    raise ConnectionResetError("closed")
                time.sleep(0.02)
        assert time.monotonic() - started < 2
    assert [t["reason"] for t in tunnels(log)] == ["max-duration"]


def test_byte_budget_closes_tunnels_and_refuses_new_ones(log: Path) -> None:
    with Upstream(mode="blast", blast_bytes=1_000_000) as blaster:
        target = f"echo.test:{blaster.port}"
        with running(policy(ports=[blaster.port]), log, byte_budget=100_000) as proxy:
            with open_tunnel((proxy.host, proxy.port), target) as sock:
                received = recv_until_closed(sock)
            assert len(received) <= 100_000
            with ask(proxy, connect_line(target)) as reply:
                assert reply.status == 403
                assert b"byte-budget" in reply.body
            assert proxy.stats().bytes_down <= 100_000
    assert [t["reason"] for t in tunnels(log)] == ["byte-budget"]
    assert decisions(log)[-1]["reason"] == "byte-budget"


def test_many_concurrent_tunnels(echo: Upstream, log: Path) -> None:
    count = 64
    results: list[bool] = []
    lock = threading.Lock()
    with running(policy(ports=[echo.port]), log) as proxy:
        addr = (proxy.host, proxy.port)

        def one(i: int) -> None:
            payload = f"tunnel {i}".encode()
            with open_tunnel(addr, f"echo.test:{echo.port}") as sock:
                sock.sendall(payload)
                ok = recv_exactly(sock, len(payload)) == payload
            with lock:
                results.append(ok)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until(lambda: len(tunnels(log)) == count)
    assert results == [True] * count


# --- the log: each decision exactly once ------------------------------------------------------

def test_each_request_is_logged_exactly_once(echo: Upstream, log: Path) -> None:
    resolver = StubResolver([UPSTREAM_HOST])
    target = f"echo.test:{echo.port}"
    requests = [
        connect_line(target),  # allowed
        connect_line("evil.test:443"),  # name
        connect_line("echo.test:22"),  # port
        connect_line("127.0.0.2:443"),  # literal
        b"GET / HTTP/1.1\r\n\r\n",  # not a proxy request
        b"BREW coffee\r\n\r\n",  # garbage
        connect_line(target),  # allowed again
    ]
    with running(policy(ports=[echo.port]), log, resolver) as proxy:
        for raw in requests:
            with ask(proxy, raw):
                pass
        wait_until(lambda: len(tunnels(log)) == 2)
        stats = proxy.stats()
    lines = log_lines(log)
    assert [line["decision"] for line in lines if line["event"] == "decision"] == [
        "allowed", "denied", "denied", "denied", "denied", "denied", "allowed"]
    assert len(tunnels(log)) == 2
    assert len({d["client"] for d in decisions(log)}) == len(requests)  # one line per client
    assert (stats.allowed, stats.denied) == (2, 5)
    assert (summarize(log).allowed, summarize(log).denied) == (2, 5)


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="max_tunnels"):
        ProxyLimits(max_tunnels=0)
    with pytest.raises(ValueError, match="head_timeout"):
        ProxyLimits(head_timeout=0)


# --- the rest of the surface -----------------------------------------------------------------

def test_system_resolver_is_used_when_none_is_given(log: Path) -> None:
    # "localhost" resolves from the hosts file (no network) to loopback, which
    # the policy refuses: the default resolver ran and its answer was checked.
    pol = policy(allow=["localhost"], allow_cidrs=[])
    with start_proxy(pol, host=PROXY_HOST, log_path=log) as proxy, \
            ask(proxy, connect_line("localhost:443")) as reply:
        assert reply.status == 403
    [decision] = decisions(log)
    assert decision["reason"].startswith("non-public-address:")
    assert decision["address"] in ("127.0.0.1", "::1")


def test_named_http_origin_is_resolved_and_checked(log: Path) -> None:
    with Upstream(mode="http") as origin:
        url = f"http://mirror.test:{origin.port}"
        resolver = StubResolver([UPSTREAM_HOST])
        with running(policy(allow=[], allow_http=[url]), log, resolver) as proxy, \
                ask(proxy, f"GET {url}/simple/ HTTP/1.1\r\n\r\n".encode()) as reply:
            assert reply.status == 200
        assert resolver.calls == [("mirror.test.", origin.port)]
        assert origin.heads[0].startswith(b"GET /simple/ HTTP/1.1\r\n")
        # Without allow_cidrs, the same name resolving to loopback is refused.
        with running(policy(allow=[], allow_http=[url], allow_cidrs=[]), log, resolver) as proxy, \
                ask(proxy, f"GET {url}/simple/ HTTP/1.1\r\n\r\n".encode()) as reply:
            assert reply.status == 403
        assert origin.accepted == 1


def test_client_leaving_mid_head_is_logged(log: Path) -> None:
    with running(policy(), log) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            sock.sendall(b"CONNECT echo.te")
        wait_until(lambda: len(decisions(log)) == 1)
        with socket.create_connection((proxy.host, proxy.port), timeout=5):
            pass  # connected and said nothing: not a request, not logged
        time.sleep(0.1)
    assert [d["reason"] for d in decisions(log)] == ["incomplete-head"]


def test_serve_forever_returns_when_closed(log: Path) -> None:
    ready: list[RunningProxy] = []
    thread = threading.Thread(
        target=serve_forever, args=(policy(),),
        kwargs={"host": PROXY_HOST, "port": 0, "log_path": log, "on_ready": ready.append},
    )
    thread.start()
    wait_until(lambda: bool(ready))
    with ask(ready[0], connect_line("evil.test:443")) as reply:
        assert reply.status == 403
    ready[0].close()
    thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_listens_on_ipv6_loopback(log: Path) -> None:
    try:
        proxy = start_proxy(policy(), host="::1", log_path=log)
    except EgressError:
        pytest.skip("no IPv6 loopback here")
    with proxy:
        assert proxy.url == f"http://[::1]:{proxy.port}"
        with socket.create_connection(("::1", proxy.port), timeout=5) as sock:
            sock.sendall(connect_line("evil.test:443"))
            assert read_reply(sock).status == 403


def test_idle_connections_are_capped(log: Path) -> None:
    # max_tunnels=1 allows 2 * 1 + 16 = 18 connections at once.
    with running(policy(), log, max_tunnels=1) as proxy:
        idle = [socket.create_connection((proxy.host, proxy.port), timeout=5) for _ in range(18)]
        try:
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as extra:
                reply = read_reply(extra)
                assert reply.status == 429
                assert b"connection-cap" in reply.body
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: not proxy._proxy.clients)  # the proxy saw them leave
        with ask(proxy, connect_line("evil.test:443")) as reply:
            assert reply.status == 403  # room again
    assert [d["reason"] for d in decisions(log)] == ["connection-cap", "not-allowlisted"]


def test_plain_http_reply_says_connection_close_whatever_the_origin_said(log: Path) -> None:
    # The proxy serves one request per connection; an origin's keep-alive would make
    # the client pool a connection the proxy then closes under it.
    server = socket.socket()
    server.bind((UPSTREAM_HOST, 0))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
                         b"Keep-Alive: timeout=5, max=100\r\n\r\nok")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    origin_url = f"http://{UPSTREAM_HOST}:{server.getsockname()[1]}"
    try:
        pol = policy(allow=[], allow_http=[origin_url], allow_cidrs=[])
        request = f"GET {origin_url}/x HTTP/1.1\r\nConnection: keep-alive\r\n\r\n".encode()
        with running(pol, log) as proxy, ask(proxy, request) as reply:
            assert reply.status == 200 and reply.body == b"ok"
            head = reply.head.decode().lower()
    finally:
        thread.join(timeout=5)
        server.close()
    assert "connection: close" in head
    assert "keep-alive" not in head


# --- issue 13, item 1: what the proxy looks up, and whom an address origin vouches for --------


def test_the_absolute_name_is_looked_up_exactly_as_allowed(echo: Upstream, log: Path) -> None:
    # A relative name lets the resolver try "<name>.<search domain>": a name nobody
    # allowed.  The absolute one (a trailing dot) never gets a search domain.
    resolver = StubResolver([UPSTREAM_HOST])
    with running(policy(allow=["*.allowed.test"], ports=[echo.port]), log, resolver) as proxy:
        for target in (f"x.allowed.test:{echo.port}", f"X.Allowed.TEST.:{echo.port}"):
            open_tunnel((proxy.host, proxy.port), target).close()
    assert resolver.calls == [("x.allowed.test.", echo.port)] * 2


def test_an_address_origin_vouches_for_its_own_pair_only(log: Path) -> None:
    with Upstream(mode="http") as named, Upstream(mode="http") as listed:
        listed_url = f"http://{UPSTREAM_HOST}:{listed.port}"
        named_url = f"http://named.test:{named.port}"
        # named.test resolves to the address the seller listed for another origin.
        resolver = StubResolver([UPSTREAM_HOST])
        pol = policy(allow=[], allow_http=[listed_url, named_url], allow_cidrs=[])
        with running(pol, log, resolver) as proxy:
            with ask(proxy, f"GET {listed_url}/ HTTP/1.1\r\n\r\n".encode()) as reply:
                assert reply.status == 200
            with ask(proxy, f"GET {named_url}/ HTTP/1.1\r\n\r\n".encode()) as reply:
                assert reply.status == 403
                assert b"non-public-address" in reply.body
            other_port = f"GET http://{UPSTREAM_HOST}:{named.port}/ HTTP/1.1\r\n\r\n"
            with ask(proxy, other_port.encode()) as reply:
                assert reply.status == 403
        assert (listed.accepted, named.accepted) == (1, 0)
    assert [d["reason"] for d in decisions(log)] == [
        "allowlisted", "non-public-address:loopback", "not-allowlisted"]

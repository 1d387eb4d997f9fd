"""The index relay: the seller's index through bake's proxy, credentials added by the proxy.

The pure parts (mapping, rewriting, heads) as tables; then a live proxy on
127.0.0.1 relaying to a loopback "mirror" on 127.0.0.2 that demands basic auth,
over plain HTTP and over TLS with a CA made here.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bake.egress.policy import EgressPolicy
from bake.egress.proxy import ProxyLimits, RunningProxy, start_proxy
from bake.egress.relay import INDEX_PATH, ORIGIN_PATH, IndexRelay
from bake.errors import ConfigError, EgressError
from tests.unit.egress_helpers import (
    PROXY_HOST,
    UPSTREAM_HOST,
    StubResolver,
    log_lines,
    recv_until_closed,
)

PASSWORD = "S3CRET-MIRROR-PASSWORD"
RELAY = IndexRelay.from_url(f"https://mirroruser:{PASSWORD}@Mirror.test/pypi/simple/")
PAGE = "https://mirror.test/pypi/simple/six/"


# --- parsing the seller's URL ----------------------------------------------------------------


def test_from_url_keeps_the_password_out_of_repr_and_sends_it_as_basic_auth() -> None:
    assert (RELAY.scheme, RELAY.host, RELAY.port, RELAY.base_path) == (
        "https", "mirror.test", 443, "/pypi/simple/")
    expected = base64.b64encode(f"mirroruser:{PASSWORD}".encode()).decode()
    assert RELAY.authorization == f"Basic {expected}"
    assert PASSWORD not in repr(RELAY) and expected not in repr(RELAY)


@pytest.mark.parametrize(
    ("url", "userinfo"),
    [
        ("https://tok3n@m.test/simple", "tok3n:"),  # a token as user name, as pip sends it
        ("https://a%40b:p%3Aw@m.test/simple/", "a@b:p:w"),  # percent-encoded userinfo
        ("http://m.test:3141/root/pypi/+simple/", None),
    ],
)
def test_from_url_userinfo(url: str, userinfo: str | None) -> None:
    relay = IndexRelay.from_url(url)
    if userinfo is None:
        assert relay.authorization == ""
    else:
        assert base64.b64decode(relay.authorization.removeprefix("Basic ")).decode() == userinfo
    assert relay.base_path.endswith("/")


@pytest.mark.parametrize("url", [
    f"ftp://u:{PASSWORD}@m.test/simple/",
    f"https://u:{PASSWORD}@m.test/simple/?token=1",
    f"https://u:{PASSWORD}@m.test:99999/simple/",
    f"https://u:{PASSWORD}@/simple/",
])
def test_bad_index_urls_are_config_errors_that_never_echo_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        IndexRelay.from_url(url)
    assert info.value.field == "build.pip_index_url"
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value)


# --- mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relay_path", "upstream"),
    [
        (INDEX_PATH, "/pypi/simple/"),
        (INDEX_PATH + "six/", "/pypi/simple/six/"),
        (ORIGIN_PATH + "packages/six.whl", "/packages/six.whl"),
        (ORIGIN_PATH + "p/x.whl?sig=1", "/p/x.whl?sig=1"),
        ("/bake-index/", None),  # neither namespace
        ("/bake-index/other/x", None),
        (INDEX_PATH + "../../etc/x", None),  # dot segments
        (ORIGIN_PATH + "./x", None),
        (ORIGIN_PATH + "/evil.test/x", None),  # "//evil.test/x" upstream
    ],
)
def test_upstream_path(relay_path: str, upstream: str | None) -> None:
    assert RELAY.upstream_path(relay_path) == upstream


@pytest.mark.parametrize(
    ("url", "relayed"),
    [
        ("https://mirror.test/pypi/simple/six/", INDEX_PATH + "six/"),
        ("https://MIRROR.test:443/packages/six.whl#sha256=ab",
         ORIGIN_PATH + "packages/six.whl#sha256=ab"),
        ("https://u:p@mirror.test/packages/x", ORIGIN_PATH + "packages/x"),  # userinfo dropped
        ("https://mirror.test/p?q=1", ORIGIN_PATH + "p?q=1"),
        ("http://mirror.test/packages/x", None),  # another origin: scheme
        ("https://mirror.test:8443/packages/x", None),  # port
        ("https://files.cdn.test/packages/x", None),  # host
        ("https://mirror.test.evil.test/x", None),
    ],
)
def test_relay_path(url: str, relayed: str | None) -> None:
    assert RELAY.relay_path(url) == relayed


def _hrefs(page: str) -> list[str]:
    import re

    return re.findall(r'href="([^"]*)"', page)


def test_html_links_to_the_index_origin_come_through_the_relay() -> None:
    page = (
        '<a href="https://mirror.test/packages/a.whl#sha256=aa">a</a>\n'  # absolute
        '<a href="../../../packages/b.whl#sha256=bb" data-requires-python="&gt;=3.8">b</a>\n'
        "<a href='/packages/c.whl'>c</a>\n"  # root-relative, single quotes
        "<a href=d-1.0.tar.gz>d</a>\n"  # relative, bare
        '<a href="https://files.cdn.test/e.whl">e</a>\n'  # another host: left absolute
        '<a href="//files.cdn.test/f.whl">f</a>\n'  # scheme-relative: made absolute
        '<a href="/packages/g.whl?a=1&amp;b=2">g</a>\n'  # entities
    )
    out = RELAY.rewrite_html(page, PAGE)
    assert _hrefs(out) == [
        ORIGIN_PATH + "packages/a.whl#sha256=aa",
        ORIGIN_PATH + "packages/b.whl#sha256=bb",
        ORIGIN_PATH + "packages/c.whl",
        INDEX_PATH + "six/d-1.0.tar.gz",
        "https://files.cdn.test/e.whl",
        "https://files.cdn.test/f.whl",
        ORIGIN_PATH + "packages/g.whl?a=1&amp;b=2",
    ]
    assert 'data-requires-python="&gt;=3.8"' in out  # the rest of the page is untouched
    assert "mirror.test" not in out


def test_html_base_href_is_honoured() -> None:
    page = '<base href="https://mirror.test/files/"><a href="x.whl">x</a>'
    out = RELAY.rewrite_html(page, PAGE)
    assert _hrefs(out) == [ORIGIN_PATH + "files/", ORIGIN_PATH + "files/x.whl"]


def test_a_page_that_echoes_the_credentials_is_scrubbed() -> None:
    token = RELAY.authorization.removeprefix("Basic ")
    page = f"<p>index https://mirroruser:{PASSWORD}@mirror.test/ {token}</p>"
    out = RELAY.rewrite_html(page, PAGE)
    assert PASSWORD not in out and token not in out


def test_json_file_urls_come_through_the_relay() -> None:
    page = {
        "meta": {"api-version": "1.1"},
        "name": "six",
        "files": [
            {"filename": "a.whl", "url": "https://mirror.test/packages/a.whl", "hashes": {}},
            {"filename": "b.whl", "url": "../../../packages/b.whl", "hashes": {}},
            {"filename": "c.whl", "url": "https://files.cdn.test/c.whl", "hashes": {}},
        ],
    }
    out = json.loads(RELAY.rewrite_json(json.dumps(page).encode(), PAGE))
    assert [f["url"] for f in out["files"]] == [
        ORIGIN_PATH + "packages/a.whl", ORIGIN_PATH + "packages/b.whl",
        "https://files.cdn.test/c.whl"]
    assert out["meta"] == page["meta"]
    assert RELAY.rewrite_json(b"not json", PAGE) == b"not json"


def test_request_head_passes_negotiation_only_and_adds_the_credentials() -> None:
    head = RELAY.request_head("GET", "/pypi/simple/six/", [
        ("Accept", "application/vnd.pypi.simple.v1+json"), ("User-Agent", "pip/25"),
        ("Authorization", "Basic bm9ib2R5Og=="), ("Cookie", "s=1"),
        ("Proxy-Authorization", "x"), ("Host", "evil.test"), ("X-Forwarded-For", "1.2.3.4"),
    ]).decode()
    lines = head.split("\r\n")
    assert lines[0] == "GET /pypi/simple/six/ HTTP/1.1"
    assert lines[1] == "Host: mirror.test"
    assert f"Authorization: {RELAY.authorization}" in lines
    assert "Basic bm9ib2R5Og==" not in head and "Cookie" not in head
    assert "evil.test" not in head and "Proxy-" not in head and "X-Forwarded" not in head
    assert "Accept: application/vnd.pypi.simple.v1+json" in lines
    assert "Accept-Encoding: identity" in lines and "Connection: close" in lines


# --- live: a proxy relaying to a loopback mirror ---------------------------------------------


class Mirror:
    """A loopback index that demands basic auth and records what it was asked."""

    def __init__(self, expected_auth: str, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.routes: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                mirror.requests.append((self.requestline, dict(self.headers.items())))
                if self.headers.get("Authorization") != expected_auth:
                    status, headers, body = 401, [("WWW-Authenticate", "Basic")], b"who?\n"
                else:
                    status, headers, body = mirror.routes.get(
                        self.path, (404, [("Content-Type", "text/plain")], b"no\n"))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _answer

        self.server = ThreadingHTTPServer((UPSTREAM_HOST, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "egress.jsonl"


def _relay_proxy(relay: IndexRelay, log: Path, *, allow: list[str] | None = None,
                 allow_http: list[str] | None = None, ports: tuple[int, ...] = (),
                 resolver: StubResolver | None = None) -> RunningProxy:
    pol = EgressPolicy.from_settings(allow or [], allow_http or [], [f"{UPSTREAM_HOST}/32"])
    if ports:
        pol = dataclasses.replace(pol, connect_ports=frozenset({443, *ports}))
    return start_proxy(pol, host=PROXY_HOST, log_path=log, relay=relay,
                       resolver=resolver or StubResolver(), limits=ProxyLimits(idle_timeout=5))


def _get(proxy: RunningProxy, target: str, method: str = "GET", extra: str = "") -> bytes:
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        return recv_until_closed(sock)


@pytest.fixture
def http_mirror() -> Iterator[tuple[Mirror, IndexRelay]]:
    relay_probe = IndexRelay.from_url(f"http://mirroruser:{PASSWORD}@{UPSTREAM_HOST}:1/simple/")
    mirror = Mirror(relay_probe.authorization)
    relay = dataclasses.replace(relay_probe, port=mirror.port)
    origin = f"http://{UPSTREAM_HOST}:{mirror.port}"
    mirror.routes["/simple/six/"] = (200, [("Content-Type", "text/html"),
                                           ("Set-Cookie", "session=seller")], (
        f'<a href="{origin}/files/six-1.16.0-py2.py3-none-any.whl#sha256=ab">w</a>\n'
        '<a href="../../files/six-1.16.0.tar.gz">s</a>\n'
        '<a href="https://files.cdn.test/x.whl">cdn</a>\n').encode())
    mirror.routes["/files/big.whl"] = (200, [("Content-Type", "application/octet-stream")],
                                       bytes(range(256)) * 20000)
    mirror.routes["/simple/Six/"] = (301, [("Location", f"{origin}/simple/six/")], b"")
    yield mirror, relay
    mirror.close()


def test_relay_serves_the_index_with_the_credentials_added_by_the_proxy(
        http_mirror: tuple[Mirror, IndexRelay], log: Path) -> None:
    mirror, relay = http_mirror
    with _relay_proxy(relay, log, allow_http=[relay.origin]) as proxy:
        # pip sends http:// requests to its HTTP_PROXY in absolute form: to the proxy itself.
        reply = _get(proxy, f"{proxy.url}{INDEX_PATH}six/", extra="User-Agent: pip/25\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Set-Cookie" not in head and b"Connection: close" in head
        assert _hrefs(body.decode()) == [
            ORIGIN_PATH + "files/six-1.16.0-py2.py3-none-any.whl#sha256=ab",
            ORIGIN_PATH + "files/six-1.16.0.tar.gz",
            "https://files.cdn.test/x.whl",
        ]
        # Origin-form works too (a client that does not use the proxy for it).
        big = _get(proxy, ORIGIN_PATH + "files/big.whl")
        assert big.partition(b"\r\n\r\n")[2] == bytes(range(256)) * 20000
        redirect = _get(proxy, INDEX_PATH + "Six/")
        assert f"Location: {INDEX_PATH}six/".encode() in redirect
    line, headers = mirror.requests[0]
    assert line == "GET /simple/six/ HTTP/1.1"
    assert headers["Authorization"] == relay.authorization
    assert headers["Host"] == f"{UPSTREAM_HOST}:{mirror.port}"
    assert headers["User-Agent"] == "pip/25"
    entries = log_lines(log)
    relayed = [e for e in entries if e["event"] == "decision"]
    assert [(e["decision"], e["reason"], e["host"], e["port"]) for e in relayed] == [
        ("allowed", "index-relay", UPSTREAM_HOST, mirror.port)] * 3
    closed = [e for e in entries if e["event"] == "tunnel"]
    assert len(closed) == 3 and all(e["reason"] == "closed" for e in closed)
    assert closed[1]["bytes_down"] > 5_000_000
    text = log.read_text()
    assert PASSWORD not in text and relay.authorization.split()[1] not in text


def test_relay_reaches_only_its_origin_and_only_with_get_and_head(
        http_mirror: tuple[Mirror, IndexRelay], log: Path) -> None:
    mirror, relay = http_mirror
    with _relay_proxy(relay, log, allow_http=[relay.origin]) as proxy:
        assert _get(proxy, INDEX_PATH + "six/", method="HEAD").startswith(b"HTTP/1.1 200")
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            assert _get(proxy, INDEX_PATH + "six/", method=method).startswith(b"HTTP/1.1 405")
        for path in (ORIGIN_PATH + "/evil.test/x", INDEX_PATH + "../x", "/bake-index/x"):
            assert _get(proxy, path).startswith(b"HTTP/1.1 404"), path
        # A Host header or an absolute-form target elsewhere never steers the relay.
        assert _get(proxy, INDEX_PATH + "six/", extra="Host: evil.test\r\n").startswith(
            b"HTTP/1.1 200")
        assert _get(proxy, f"http://evil.test{INDEX_PATH}six/").startswith(b"HTTP/1.1 403")
    assert [line for line, _ in mirror.requests] == ["HEAD /simple/six/ HTTP/1.1",
                                                     "GET /simple/six/ HTTP/1.1"]
    denied = [e for e in log_lines(log) if e["decision"] == "denied"]
    assert [e["reason"] for e in denied] == ["bad-method"] * 4 + ["not-in-relay"] * 3 + [
        "not-allowlisted"]
    assert PASSWORD not in log.read_text()


def test_relay_obeys_the_egress_policy(http_mirror: tuple[Mirror, IndexRelay], log: Path) -> None:
    mirror, relay = http_mirror
    with _relay_proxy(relay, log, allow_http=[]) as proxy:  # the seller did not allow it
        assert _get(proxy, INDEX_PATH + "six/").startswith(b"HTTP/1.1 403")
    assert mirror.requests == []
    [entry] = log_lines(log)
    assert (entry["decision"], entry["reason"]) == ("denied", "not-allowlisted")


def test_without_a_relay_the_prefix_is_nothing_special(log: Path) -> None:
    pol = EgressPolicy.from_settings([], [], [])
    with start_proxy(pol, host=PROXY_HOST, log_path=log, resolver=StubResolver()) as proxy:
        assert _get(proxy, INDEX_PATH + "six/").startswith(b"HTTP/1.1 400")


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=mirror.test", "-addext", "subjectAltName=DNS:mirror.test",
         "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_relay_speaks_tls_to_an_https_index_with_the_sellers_ca(
        certificate: tuple[Path, Path], log: Path) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    probe = IndexRelay.from_url(f"https://mirroruser:{PASSWORD}@mirror.test/simple/")
    mirror = Mirror(probe.authorization, tls=server_tls)
    mirror.routes["/simple/six/"] = (200, [("Content-Type", "application/vnd.pypi.simple.v1+json")],
                                     json.dumps({"files": [{"url": "/files/six.whl"}]}).encode())
    try:
        relay = dataclasses.replace(probe, port=mirror.port, ca_bundle=str(cert))
        resolver = StubResolver([UPSTREAM_HOST])
        with _relay_proxy(relay, log, allow=["mirror.test"], ports=(mirror.port,),
                          resolver=resolver) as proxy:
            reply = _get(proxy, INDEX_PATH + "six/")
        assert reply.startswith(b"HTTP/1.1 200")
        page = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert page["files"][0]["url"] == ORIGIN_PATH + "files/six.whl"
        assert mirror.requests[0][1]["Authorization"] == relay.authorization
        assert resolver.calls == [("mirror.test.", mirror.port)]

        # Without the seller's CA the index's certificate is not trusted: nothing is sent.
        mirror.requests.clear()
        untrusted = dataclasses.replace(relay, ca_bundle="")
        with _relay_proxy(untrusted, log, allow=["mirror.test"], ports=(mirror.port,),
                          resolver=StubResolver([UPSTREAM_HOST])) as proxy:
            reply = _get(proxy, INDEX_PATH + "six/")
        assert reply.startswith(b"HTTP/1.1 502") and b"tls-verify-failed" in reply
        assert mirror.requests == []
    finally:
        mirror.close()
    assert PASSWORD not in log.read_text()


def test_an_unreadable_ca_bundle_is_an_egress_error(tmp_path: Path, log: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    relay = IndexRelay.from_url("https://u:p@mirror.test/simple/", ca_bundle=str(bad))
    with pytest.raises(EgressError, match="CA bundle"):
        _relay_proxy(relay, log, allow=["mirror.test"])


# --- what the steps get, and a disallowed index refused up front ------------------------------


def test_the_steps_pip_config_names_the_relay_and_no_secret() -> None:
    from bake.pipeline import step_pip_config

    assert step_pip_config("http://172.17.0.1:39100/bake-index/simple/", ca_bundle=True) == (
        "[global]\n"
        "index-url = http://172.17.0.1:39100/bake-index/simple/\n"
        "trusted-host = 172.17.0.1:39100\n"
        "cert = /run/secrets/bake_ca\n")
    assert step_pip_config(None, ca_bundle=False) == "[global]\n"


@pytest.mark.parametrize(
    ("url", "allow", "allow_http", "ok"),
    [
        ("https://u:p@mirror.test/simple/", ["mirror.test"], [], True),
        ("https://u:p@mirror.test/simple/", ["pypi.org"], [], False),
        ("https://u:p@mirror.test:8443/simple/", ["mirror.test"], [], False),  # CONNECT: 443 only
        ("http://u:p@10.0.0.5:3141/simple/", [], ["http://10.0.0.5:3141"], True),
        ("http://u:p@10.0.0.5:3141/simple/", [], ["http://10.0.0.5:3142"], False),
        ("http://u:p@mirror.test/simple/", ["mirror.test"], [], False),  # plain HTTP: allow_http
    ],
)
def test_an_index_the_policy_refuses_is_a_config_error_before_the_build(
        url: str, allow: list[str], allow_http: list[str], ok: bool) -> None:
    relay = IndexRelay.from_url(url)
    pol = EgressPolicy.from_settings(allow, allow_http, [])
    if ok:
        relay.check_allowed(pol)
        return
    with pytest.raises(ConfigError) as info:
        relay.check_allowed(pol)
    assert info.value.field == "build.pip_index_url" and "u:p" not in str(info.value)


def test_a_distribution_served_as_html_passes_unchanged(
        http_mirror: tuple[Mirror, IndexRelay], log: Path) -> None:
    mirror, relay = http_mirror
    body = b'<a href="http://%s:%d/x">not a page</a>' % (UPSTREAM_HOST.encode(), mirror.port)
    mirror.routes["/files/odd-1.0.tar.gz"] = (200, [("Content-Type", "text/html")], body)
    with _relay_proxy(relay, log, allow_http=[relay.origin]) as proxy:
        reply = _get(proxy, ORIGIN_PATH + "files/odd-1.0.tar.gz")
    assert reply.partition(b"\r\n\r\n")[2] == body

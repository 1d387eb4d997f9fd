"""The index relay: the seller's package index, with the seller's credentials, through the proxy.

Build steps run buyer code (sdist builds, build backends, ``.pth`` files), so no
step may hold a seller secret (DESIGN.md).  When ``build.pip_index_url`` carries
credentials (``https://user:token@mirror/simple/``), the steps' pip config names
an index on bake's egress proxy instead, with no userinfo and no trace of the
upstream URL::

    http://<proxy>/bake-index/simple/<rest>   ->  <index URL><rest>
    http://<proxy>/bake-index/origin/<path>   ->  <index origin>/<path>

The proxy forwards GET and HEAD requests under that prefix to the index's origin
and nowhere else, adds ``Authorization: Basic`` from the URL's userinfo itself,
speaks TLS to an https index (with the seller's CA bundle) or plain HTTP to an
http one, and rewrites the links in index pages (PEP 503 HTML, PEP 691 JSON) and
redirects that lead back to that origin so that they come through the relay
too.  Links to other hosts (a CDN holding the files) are left absolute and go
through CONNECT, as before.  The egress policy still has to allow the index.

This module holds the pure parts (the mapping, the rewriting, the heads) and
:func:`exchange`, one request and its answer over a connection the proxy dialled
and checked.  It never logs: the proxy writes the egress log lines, which carry
the index's host and port only.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

from bake.errors import ConfigError

if TYPE_CHECKING:
    from bake.egress.policy import EgressPolicy

__all__ = [
    "INDEX_PATH",
    "ORIGIN_PATH",
    "RELAY_PREFIX",
    "IndexRelay",
    "RelayFailure",
    "exchange",
]

RELAY_PREFIX = "/bake-index/"
INDEX_PATH = RELAY_PREFIX + "simple/"  # the seller's index URL
ORIGIN_PATH = RELAY_PREFIX + "origin/"  # the rest of the index's origin (file links)

#: Most bytes of one index page held for rewriting (PyPI's largest are a few MB).
MAX_PAGE_BYTES = 64 * 2**20
_MAX_HEAD_BYTES = 64 * 1024

# Request headers a client may pass on: content negotiation, caching, ranges.
# Never the client's own Authorization, Cookie or anything proxy-related.
_PASS_REQUEST = frozenset({
    "accept", "accept-language", "user-agent", "cache-control", "pragma", "range",
    "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
})
# Response headers that describe the upstream hop, or that a build step could
# replay against the index without the relay (a session cookie is a credential).
_DROP_RESPONSE = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "set-cookie",
    "set-cookie2", "alt-svc", "upgrade", "trailer",
})
_HTML_TYPES = frozenset({
    "text/html", "application/vnd.pypi.simple.v1+html", "application/vnd.pypi.simple.latest+html",
})
_JSON_TYPES = frozenset({
    "application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.latest+json",
})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# An href attribute and its value, quoted either way or bare (HTML5).
_HREF = re.compile(r"""(\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.IGNORECASE)
_BASE = re.compile(r"""<base\s[^>]*?href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""",
                   re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class RelayFailure(Exception):
    """The relay could not answer; ``reason`` is the word for the egress log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class IndexRelay:
    """Where the seller's index is and how to authenticate to it.

    ``authorization`` is the only secret; it is kept out of ``repr`` and of every
    message, and sent upstream only.
    """

    scheme: str  # "https" or "http"
    host: str  # as in the URL, lower case (an IPv6 address without brackets)
    port: int
    base_path: str  # the index's path, ending in "/"
    authorization: str = field(default="", repr=False)
    ca_bundle: str = ""

    @classmethod
    def from_url(cls, url: str, *, ca_bundle: str = "") -> IndexRelay:
        """Parse ``build.pip_index_url``; raise :class:`ConfigError` (never echoing a password)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{_masked(url)!r} is not a URL ({exc})",
                              field="build.pip_index_url") from None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(f"{_masked(url)!r} is not an http:// or https:// URL with a host",
                              field="build.pip_index_url")
        if parts.query or parts.fragment:
            raise ConfigError(
                f"{_masked(url)!r} has a query or fragment; an index URL is a path",
                field="build.pip_index_url",
                hint="write the index URL pip would be given, e.g. https://mirror/simple/",
            )
        authorization = ""
        if parts.username is not None or parts.password is not None:
            # pip sends "user:" for a token given as the user name alone.
            userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
        path = parts.path or "/"
        if not path.endswith("/"):
            path += "/"  # pip joins project names onto it as onto a folder
        return cls(parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme],
                   path, authorization, ca_bundle)

    def check_allowed(self, policy: EgressPolicy) -> None:
        """Refuse, before the build starts, an index the egress settings do not allow.

        The relay obeys the policy like any request; without this the refusal
        would surface minutes later as pip's "403 Forbidden".
        """
        if self.scheme == "https":
            host = f"[{self.host}]" if ":" in self.host else self.host
            decision = policy.check_connect(f"{host}:{self.port}")
            where = f'egress.allow (as "{self.host}"; only port 443)'
        else:
            decision = policy.check_http(f"http://{self.authority}/")
            where = f'egress.allow_http (as "http://{self.authority}")'
        if not decision.allowed:
            raise ConfigError(
                f"the index in build.pip_index_url ({self.origin}) is not allowed by the egress "
                f"settings ({decision.reason})",
                field="build.pip_index_url",
                hint=f"add it to {where}",
            )

    # -- where things are ----------------------------------------------------------------

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"

    def upstream_path(self, relay_path: str) -> str | None:
        """``/bake-index/simple/six/`` -> ``/simple/six/``; None when not a relay path."""
        path, sep, query = relay_path.partition("?")
        if path.startswith(INDEX_PATH):
            upstream = self.base_path + path[len(INDEX_PATH):]
        elif path.startswith(ORIGIN_PATH):
            upstream = "/" + path[len(ORIGIN_PATH):]
        else:
            return None
        segments = upstream.split("/")
        if upstream.startswith("//") or ".." in segments or "." in segments:
            return None  # the upstream path must be a plain path on the index's origin
        return upstream + sep + query

    def relay_path(self, url: str) -> str | None:
        """An absolute URL on the index's origin as a relay path (query and fragment kept)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        if (parts.scheme.lower() != self.scheme or (parts.hostname or "") != self.host
                or (port or _DEFAULT_PORTS.get(self.scheme)) != self.port):
            return None
        path = parts.path or "/"
        if path.startswith(self.base_path):
            out = INDEX_PATH + path[len(self.base_path):]
        else:
            out = ORIGIN_PATH + path.lstrip("/")
        if parts.query:
            out += "?" + parts.query
        if parts.fragment:
            out += "#" + parts.fragment
        return out

    def _map(self, link: str, base: str) -> str:
        absolute = urljoin(base, link.strip())
        return self.relay_path(absolute) or absolute

    # -- rewriting -----------------------------------------------------------------------

    def rewrite_html(self, page: str, page_url: str) -> str:
        """Every href as a relay path (the index's origin) or an absolute URL (elsewhere)."""
        base = page_url
        found = _BASE.search(page)
        if found is not None:
            value = next(g for g in found.groups() if g is not None)
            base = urljoin(page_url, html.unescape(value))

        def one(match: re.Match[str]) -> str:
            raw = next(g for g in match.groups()[1:] if g is not None)
            link = html.unescape(raw)
            mapped = self._map(link, base)
            if mapped == link:
                return match.group(0)
            return f'{match.group(1)}"{html.escape(mapped, quote=True)}"'

        return self._scrub(_HREF.sub(one, page))

    def rewrite_json(self, page: bytes, page_url: str) -> bytes:
        """PEP 691: each ``files[].url``; anything that is not such a page passes unchanged."""
        try:
            data = json.loads(page)
        except ValueError:
            return page
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, list):
            for entry in files:
                if isinstance(entry, dict) and isinstance(entry.get("url"), str):
                    entry["url"] = self._map(entry["url"], page_url)
        return self._scrub(json.dumps(data)).encode("utf-8")

    def rewrite_location(self, location: str, request_url: str) -> str:
        return self._map(location, request_url)

    def _scrub(self, text: str) -> str:
        # A page that echoes the credentials (an index that prints its own URL)
        # must not hand them to the build step.
        if self.authorization:
            token = self.authorization.removeprefix("Basic ")
            password = base64.b64decode(token).decode().partition(":")[2]
            for secret in (token, password):
                if len(secret) >= 6:  # a shorter one would mangle the page, not hide much
                    text = text.replace(secret, "****")
        return text

    # -- heads ---------------------------------------------------------------------------

    def request_head(self, method: str, upstream_path: str,
                     headers: Iterable[tuple[str, str]]) -> bytes:
        """The request to send upstream: the client's negotiation headers and our credentials."""
        lines = [f"{method} {upstream_path} HTTP/1.1", f"Host: {self.authority}"]
        for name, value in headers:
            if name.lower() in _PASS_REQUEST:
                lines.append(f"{name}: {value}")
        if self.authorization:
            lines.append(f"Authorization: {self.authorization}")
        # Pages are rewritten here, so ask for them as they are.
        lines += ["Accept-Encoding: identity", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _masked(url: str) -> str:
    """``url`` with any password replaced, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:****@{hostport}{slash}{path}"


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def media_type(self) -> str:
        return (self.get("content-type") or "").split(";", 1)[0].strip().lower()


def _parse_response_head(head: bytes) -> _Response:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise RelayFailure(502, "bad-upstream-response")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise RelayFailure(502, "bad-upstream-response")
        headers.append((name, value.strip()))
    return _Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


def _head_bytes(response: _Response, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {response.reason}".rstrip()]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Send = Callable[[bytes], Awaitable[None]]


async def exchange(
    relay: IndexRelay,
    method: str,
    upstream_path: str,
    client_headers: Iterable[tuple[str, str]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    send: Send,
    *,
    idle_timeout: float,
    on_upstream_bytes: Callable[[int], None] = lambda n: None,
) -> None:
    """One request to the index over a dialled connection, and its answer sent with ``send``.

    Pages are read whole (at most :data:`MAX_PAGE_BYTES`), rewritten and sent
    with their new length; everything else (the files) streams through.  Raises
    :class:`RelayFailure` before anything was sent when the answer is unusable.
    """

    async def read(size: int) -> bytes:
        try:
            data = await asyncio.wait_for(reader.read(size), idle_timeout)
        except TimeoutError:
            raise RelayFailure(504, "idle-timeout") from None
        on_upstream_bytes(len(data))
        return data

    writer.write(relay.request_head(method, upstream_path, client_headers))
    await writer.drain()
    buffer = b""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > _MAX_HEAD_BYTES:
            raise RelayFailure(502, "bad-upstream-response")
        chunk = await read(65536)
        if not chunk:
            raise RelayFailure(502, "upstream-closed")
        buffer += chunk
    response = _parse_response_head(buffer[:end])
    rest = buffer[end + 4:]
    request_url = relay.origin + upstream_path
    headers = [(n, v) for n, v in response.headers if n.lower() not in _DROP_RESPONSE]
    if response.status in _REDIRECTS:
        headers = [(n, relay.rewrite_location(v, request_url) if n.lower() == "location" else v)
                   for n, v in headers]
    no_body = (method == "HEAD" or response.status in (204, 304)
               or 100 <= response.status < 200)
    media = response.media_type()
    page_type = (media in _HTML_TYPES or media in _JSON_TYPES) and not _is_file(upstream_path)
    if not no_body and response.status == 200 and page_type:
        body = await _read_body(response, rest, read)
        if media in _JSON_TYPES:
            page = relay.rewrite_json(body, request_url)
        else:
            page = relay.rewrite_html(body.decode("utf-8", "surrogateescape"),
                                      request_url).encode("utf-8", "surrogateescape")
        headers = [(n, v) for n, v in headers if n.lower() not in
                   ("content-length", "transfer-encoding", "content-encoding", "content-md5",
                    "digest", "etag")]
        headers.append(("Content-Length", str(len(page))))
        await send(_head_bytes(response, headers) + page)
        return
    if method == "HEAD" and page_type:
        # The page would be rewritten: its upstream length is not the length we send.
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    await send(_head_bytes(response, headers))
    if no_body:
        return
    length = response.get("content-length")
    left = int(length) if length is not None and length.isdigit() and not response.get(
        "transfer-encoding") else None
    # Chunked or close-delimited bodies pass through as framed until upstream closes.
    while True:
        data = rest if rest else await read(1 << 20)
        rest = b""
        if not data:
            return
        if left is not None:
            data = data[:left]
            left -= len(data)
        await send(data)
        if left == 0:
            return


# A distribution or its metadata is never rewritten, whatever type a server gives
# it: changing its bytes would only break its hash.
_FILE_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz", ".egg", ".exe", ".metadata")


def _is_file(upstream_path: str) -> bool:
    return upstream_path.partition("?")[0].lower().endswith(_FILE_SUFFIXES)


async def _read_body(response: _Response, rest: bytes,
                     read: Callable[[int], Awaitable[bytes]]) -> bytes:
    """A whole page body, de-chunked and decoded, within :data:`MAX_PAGE_BYTES`."""
    raw = bytearray(rest)
    length = response.get("content-length")
    chunked = "chunked" in (response.get("transfer-encoding") or "").lower()
    want = int(length) if length is not None and length.isdigit() and not chunked else None
    while want is None or len(raw) < want:
        if len(raw) > MAX_PAGE_BYTES:
            raise RelayFailure(502, "page-too-large")
        data = await read(1 << 20)
        if not data:
            break
        raw += data
    body = _dechunk(bytes(raw)) if chunked else bytes(raw[:want] if want is not None else raw)
    encoding = (response.get("content-encoding") or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        # gzip; "deflate" is zlib-wrapped by the RFC and raw by some servers.
        for wbits in ((31,) if encoding != "deflate" else (15, -15)):
            try:
                body = zlib.decompressobj(wbits).decompress(body, MAX_PAGE_BYTES + 1)
                break
            except zlib.error:
                continue
        else:
            raise RelayFailure(502, "bad-upstream-response")
        if len(body) > MAX_PAGE_BYTES:
            raise RelayFailure(502, "page-too-large")
    elif encoding != "identity":
        raise RelayFailure(502, "page-encoding")
    return body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    at = 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            raise RelayFailure(502, "bad-upstream-response")
        size_text = data[at:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise RelayFailure(502, "bad-upstream-response") from None
        if size == 0:
            return bytes(out)
        start = end + 2
        out += data[start:start + size]
        if len(data) < start + size:
            raise RelayFailure(502, "bad-upstream-response")
        at = start + size + 2

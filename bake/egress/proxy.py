"""bake's egress proxy: an allowlisting HTTP CONNECT proxy on asyncio.

One request per client connection, handled in this order:

1. read the request head under a deadline and a size cap (slowloris -> 408 and
   closed, oversized -> 431);
2. judge the request *target* with :class:`~bake.egress.policy.EgressPolicy`
   before any DNS lookup (Host, Forwarded, X-Forwarded-* and Proxy-* headers
   never steer anything);
3. resolve the name once, with a timeout, and check every address;
4. dial exactly the addresses that were checked, in order -- never a second
   lookup, so DNS rebinding between check and dial cannot move the tunnel;
5. relay bytes both ways until either side closes, the tunnel idles, it runs
   too long, or the proxy's byte budget is spent.

Every request gets exactly one ``decision`` line in the egress log, and every
allowed one a ``tunnel`` line when it ends (see :mod:`bake.egress.ledger`).

Given an :class:`~bake.egress.relay.IndexRelay`, the proxy also serves the
seller's package index under ``/bake-index/`` (origin-form, or absolute-form
naming the proxy itself): it checks the index's origin against the policy like
any other target, dials it, and adds the seller's credentials itself, so that
no build step ever holds them (see :mod:`bake.egress.relay`).

The relay uses asyncio Protocols rather than streams: the transport hands each
1 MiB ``recv`` straight to the peer's ``write`` (usually sent at once, with no
further copy), and back-pressure is the transports' own pause/resume signals.
bench/bench_proxy.py measures it: about 0.45 CPU seconds per GiB relayed, a
quarter of tinyproxy's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from bake.egress.dns import resolve_absolute
from bake.egress.ledger import EgressLedger, EgressStats
from bake.egress.policy import Decision, EgressPolicy, Resolver, parse_http_target
from bake.egress.relay import RELAY_PREFIX, IndexRelay, RelayFailure, exchange
from bake.errors import EgressError

__all__ = ["EgressStats", "ProxyLimits", "Resolver", "RunningProxy", "serve_forever", "start_proxy"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyLimits:
    """Time and size limits; the defaults suit a package install and model downloads."""

    head_timeout: float = 10.0  # seconds to send the whole request head
    max_head_bytes: int = 16384
    connect_timeout: float = 10.0  # seconds to reach upstream, over all its addresses
    idle_timeout: float = 120.0  # a tunnel with no bytes either way for this long is closed
    max_tunnel_seconds: float = 3600.0
    byte_budget: int = 64 * 2**30  # bytes both ways over the proxy's life
    max_tunnels: int = 256  # concurrent tunnels (and forwarded requests)
    resolve_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("head_timeout", "connect_timeout", "idle_timeout", "max_tunnel_seconds",
                     "resolve_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ProxyLimits.{name} must be positive")
        for name in ("max_head_bytes", "byte_budget", "max_tunnels"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProxyLimits.{name} must be at least 1")


# Bytes per recv on a tunnel.  CPython's selector transports read 256 KiB at a
# time; 1 MiB cut the proxy's CPU per byte by a fifth in bench/bench_proxy.py
# (fewer loop iterations and pause/resume round trips).
_READ_SIZE = 1024 * 1024
# Above this many bytes waiting in a transport, the peer stops reading: room for
# two full reads (the asyncio default of 64 KiB would pause on every read).
# Worst case per tunnel and direction: about _HIGH_WATER + _READ_SIZE held here.
_HIGH_WATER = 2 * _READ_SIZE
_LOW_WATER = _READ_SIZE // 2
# After an error answer, keep reading (and dropping) what the client still
# sends for this long, so that closing does not reset the connection before the
# client has read the answer.
_LINGER_SECONDS = 1.0

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}
_FORWARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}", re.ASCII)
# Headers that describe one hop, or that would let the client talk to (or about)
# proxies: never passed upstream.  Host is rebuilt from the request target.
_DROP_HEADERS = frozenset({
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "host", "forwarded", "via",
})


class _Reject(Exception):
    """Answer the client with ``status`` and log a denied decision with ``reason``."""

    def __init__(self, status: int, reason: str, host: str = "", port: int = 0,
                 address: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.host = host
        self.port = port
        self.address = address


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]


def _parse_head(head: bytes) -> _Request:
    # latin-1 maps every byte, so odd bytes in header values survive; the
    # request line itself must be ASCII.
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    if any("\r" in line or "\n" in line or "\0" in line for line in lines):
        raise _Reject(400, "bad-request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not lines[0].isascii():
        raise _Reject(400, "bad-request")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or version not in ("HTTP/1.1", "HTTP/1.0") or not target:
        raise _Reject(400, "bad-request")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # Obsolete line folding and spaces before the colon are refused: they
        # are where two HTTP parsers disagree.
        if not sep or not _TOKEN.fullmatch(name):
            raise _Reject(400, "bad-request")
        headers.append((name, value.strip(" \t")))
    return _Request(method, target, version, tuple(headers))


def _forward_head(request: _Request, host: str, port: int, path: str) -> tuple[bytes, int]:
    """The head to send to an ``allow_http`` origin, and the body length to relay."""
    lowered = [(name.lower(), value) for name, value in request.headers]
    if any(name == "transfer-encoding" for name, _ in lowered):
        # Framing a chunked body would mean parsing it; pip never sends one.
        raise _Reject(411, "chunked-body")
    lengths = {value for name, value in lowered if name == "content-length"}
    if len(lengths) > 1 or not all(_CONTENT_LENGTH.fullmatch(v) for v in lengths):
        raise _Reject(400, "bad-content-length")
    body = int(lengths.pop()) if lengths else 0
    listed = {
        token.strip().lower()
        for name, value in lowered
        if name == "connection"
        for token in value.split(",")
    }
    authority = f"[{host}]" if ":" in host else host
    if port != 80:
        authority = f"{authority}:{port}"
    out = [f"{request.method} {path} {request.version}", f"Host: {authority}"]
    for (name, value), (low, _) in zip(request.headers, lowered, strict=True):
        if (low in _DROP_HEADERS or low in listed or low.startswith("proxy-")
                or low.startswith("x-forwarded-")):
            continue
        out.append(f"{name}: {value}")
    # One request per connection: the client cannot pipeline a second request
    # whose target nobody checked.
    out.append("Connection: close")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1"), body


def _max_connections(limits: ProxyLimits) -> int:
    """Client connections held at once: every tunnel, plus as many again making requests."""
    return 2 * limits.max_tunnels + 16


def _response(status: int, body: str) -> bytes:
    payload = body.encode("utf-8")
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + payload


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "")


class _Proxy:
    """State shared by every connection of one proxy; lives in the loop thread."""

    def __init__(self, policy: EgressPolicy, limits: ProxyLimits, ledger: EgressLedger,
                 resolver: Resolver | None, loop: asyncio.AbstractEventLoop,
                 relay: IndexRelay | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self.limits = limits
        self.ledger = ledger
        self.loop = loop
        self.relay = relay
        self.tls = tls  # for an https index relay
        #: (address, port) pairs this proxy listens on: an absolute-form request
        #: to one of them is a request to the relay, not to be forwarded.
        self.own_targets: frozenset[tuple[str, int]] = frozenset()
        self.clients: set[_Client] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.active = 0  # requests holding a tunnel slot: resolving, dialing or relaying
        self.bytes_up = 0
        self.bytes_down = 0
        self.over_budget = False
        self.closing = False
        # getaddrinfo blocks; it gets its own threads so that shutdown need not
        # wait for a lookup stuck on a dead DNS server.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.resolver: Resolver = resolver or self._system_resolve

    async def _system_resolve(self, host: str, port: int) -> list[str]:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=8, thread_name_prefix="bake-egress-dns")
        # The hosts file, else the absolute name: never a search domain (bake/egress/dns.py).
        return await self.loop.run_in_executor(self._executor, resolve_absolute, host, port)

    def count(self, nbytes: int) -> bool:
        """Charge ``nbytes`` to the budget; False (and every tunnel closed) when spent."""
        if self.bytes_up + self.bytes_down + nbytes > self.limits.byte_budget:
            if not self.over_budget:
                self.over_budget = True
                for client in list(self.clients):
                    if client.tunnel is not None:
                        client.tunnel.close("byte-budget")
            return False
        return True

    def spawn(self, client: _Client, head: bytes, rest: bytes) -> None:
        task = self.loop.create_task(self.handle(client, head, rest))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def handle(self, client: _Client, head: bytes, rest: bytes) -> None:
        """Decide one request (one decision line), then dial and relay through a tunnel."""
        slot = False
        decided = False
        try:
            request = _parse_head(head)
            relayed = self._relay_target(request)
            if relayed is not None:
                decision, forward = self._decide_relay(request), None
            else:
                decision, forward = self._decide_target(request)
            if self.over_budget:
                raise _Reject(403, "byte-budget", decision.host, decision.port)
            if self.active >= self.limits.max_tunnels:
                raise _Reject(429, "tunnel-cap", decision.host, decision.port)
            self.active += 1
            slot = True
            plain_http = forward is not None or (
                relayed is not None and self.relay is not None and self.relay.scheme == "http")
            addresses = await self._resolve_and_check(decision, http=plain_http)
            self.ledger.decision(client=client.name, allowed=True, reason=decision.reason,
                                 host=decision.host, port=decision.port, address=addresses[0])
            decided = True
            if relayed is not None:
                await self._relay(client, request, relayed, decision, addresses)
                return  # the finally clause gives the slot back
            tunnel = _Tunnel(self, client, decision.host, decision.port)
            slot = False  # the tunnel owns the slot now and gives it back when it ends
            try:
                await tunnel.dial(addresses, forward, rest)
            except asyncio.CancelledError:
                tunnel.close("proxy-closed", abort=True)
                raise
            except Exception:
                tunnel.close("proxy-error", abort=True)
                raise
        except _Reject as exc:
            self.ledger.decision(client=client.name, allowed=False, reason=exc.reason,
                                 host=exc.host, port=exc.port, address=exc.address)
            client.reject(exc.status, exc.reason, exc.host, exc.port)
        except asyncio.CancelledError:
            if not decided:
                self.ledger.decision(client=client.name, allowed=False, reason="proxy-closed")
            client.abort()
            raise
        except Exception:  # noqa: BLE001 -- logged, and the client gets an answer
            # A bug, not a policy answer: say so in the log and to the client
            # rather than leaving the connection hanging.
            _log.exception("egress proxy failed on a request from %s", client.name)
            if not decided:
                self.ledger.decision(client=client.name, allowed=False, reason="proxy-error")
            client.reject(502, "proxy-error")
        finally:
            if slot:
                self.active -= 1

    def _relay_target(self, request: _Request) -> str | None:
        """The upstream path of a request to the index relay; None for any other request."""
        relay = self.relay
        if relay is None or request.method == "CONNECT":
            return None
        if request.target.startswith("/"):
            path = request.target
        else:
            try:
                target = parse_http_target(request.target)
            except ValueError:
                return None
            if (target.host, target.port) not in self.own_targets:
                return None
            path = target.path
        if not path.startswith(RELAY_PREFIX):
            return None
        upstream = relay.upstream_path(path)
        if upstream is None:
            raise _Reject(404, "not-in-relay", relay.host, relay.port)
        return upstream

    def _decide_relay(self, request: _Request) -> Decision:
        """The index's origin, judged as a request to it would be: allow or allow_http."""
        relay = self.relay
        assert relay is not None
        if request.method not in ("GET", "HEAD"):
            raise _Reject(405, "bad-method", relay.host, relay.port)
        if relay.scheme == "https":
            decision = self.policy.check_connect(f"{relay.host}:{relay.port}")
        else:
            decision = self.policy.check_http(f"http://{relay.authority}/")
        if not decision.allowed:
            raise _Reject(403, decision.reason, decision.host or relay.host,
                          decision.port or relay.port)
        return dataclasses.replace(decision, reason="index-relay")

    async def _relay(self, client: _Client, request: _Request, upstream_path: str,
                     decision: Decision, addresses: list[str]) -> None:
        """Serve one relay request from the index; log its ``tunnel`` line when it ends."""
        relay = self.relay
        assert relay is not None and client.transport is not None
        started = self.loop.time()
        flow = _Flow(client)
        client.flow = flow
        client.state = "relaying"
        client.transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
        address = addresses[0]
        reason = "closed"
        writer: asyncio.StreamWriter | None = None

        def downstream(nbytes: int) -> None:
            if not self.count(nbytes):
                raise RelayFailure(403, "byte-budget")
            flow.bytes_down += nbytes
            self.bytes_down += nbytes

        try:
            reader, writer, address = await self._open_upstream(addresses, decision.port)
            async with asyncio.timeout(self.limits.max_tunnel_seconds):
                await exchange(relay, request.method, upstream_path, request.headers,
                               reader, writer, flow.send, idle_timeout=self.limits.idle_timeout,
                               on_upstream_bytes=downstream)
        except RelayFailure as exc:
            reason = exc.reason
            if flow.sent:
                client.abort()  # mid-answer: the client must not take a cut body as whole
            else:
                client.reject(exc.status, exc.reason, decision.host, decision.port)
        except TimeoutError:
            reason = "max-duration"
            client.abort()
        except ConnectionError:
            reason = "client-gone" if flow.gone else "upstream-error"
            client.abort()
        except OSError:
            reason = "upstream-error"
            client.abort()
        except asyncio.CancelledError:
            reason = "proxy-closed"
            client.abort()
            raise
        except Exception:
            reason = "proxy-error"  # a bug: handle() logs it
            client.abort()
            raise
        finally:
            if writer is not None:
                writer.transport.abort()
            client.flow = None
            if reason == "closed" and client.transport is not None:
                client.transport.close()
                self.loop.call_later(self.limits.idle_timeout, _abort_all, [client.transport])
            self.ledger.tunnel(
                client=client.name, host=decision.host, port=decision.port, address=address,
                reason=reason, bytes_up=0, bytes_down=flow.bytes_down,
                duration_s=self.loop.time() - started)

    async def _open_upstream(self, addresses: list[str], port: int
                             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Dial the checked addresses in order (TLS for an https index); the first that answers."""
        relay = self.relay
        assert relay is not None
        deadline = self.loop.time() + self.limits.connect_timeout
        timed_out = False
        for index, address in enumerate(addresses):
            share = (deadline - self.loop.time()) / (len(addresses) - index)
            if share <= 0:
                timed_out = True
                break
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                                 socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(self.loop.sock_connect(sock, (address, port)), share)
            except TimeoutError:
                sock.close()
                timed_out = True
                continue
            except OSError:
                sock.close()
                continue
            tls = self.tls if relay.scheme == "https" else None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    sock=sock, ssl=tls, server_hostname=relay.host if tls else None,
                    limit=_READ_SIZE), max(deadline - self.loop.time(), 0.001))
            except ssl.SSLCertVerificationError:
                sock.close()
                raise RelayFailure(502, "tls-verify-failed") from None
            except (OSError, TimeoutError):
                sock.close()
                raise RelayFailure(502, "tls-failed" if tls else "connect-failed") from None
            return reader, writer, address
        if timed_out:
            raise RelayFailure(504, "connect-timeout")
        raise RelayFailure(502, "connect-failed")

    def _decide_target(self, request: _Request) -> tuple[Decision, tuple[bytes, int] | None]:
        """Judge the request target; for plain HTTP also build the head to forward."""
        if request.method == "CONNECT":
            decision = self.policy.check_connect(request.target)
            if not decision.allowed:
                raise _Reject(403, decision.reason, decision.host, decision.port)
            return decision, None
        if request.method not in _FORWARD_METHODS:
            raise _Reject(405, "bad-method")
        if request.target.startswith("/"):
            raise _Reject(400, "not-a-proxy-request")  # origin-form: someone took us for a server
        decision = self.policy.check_http(request.target)
        if not decision.allowed:
            raise _Reject(403, decision.reason, decision.host, decision.port)
        target = parse_http_target(request.target)
        return decision, _forward_head(request, decision.host, decision.port, target.path)

    async def _resolve_and_check(self, decision: Decision, *, http: bool) -> list[str]:
        """Every address the name has, each checked; the request is refused otherwise."""
        if decision.address:
            answers = [decision.address]  # an allow_http origin that names its address
        else:
            # The absolute name (a trailing dot): the resolver's search domains never
            # apply, so the name looked up is exactly the name the policy allowed,
            # not "<name>.<search domain>", which nobody allowed.
            if not self.policy.allows_lookup(decision.host, decision.port, http=http):
                raise _Reject(403, "not-allowlisted", decision.host, decision.port)
            try:
                answers = await asyncio.wait_for(
                    self.resolver(decision.host + ".", decision.port),
                    self.limits.resolve_timeout)
            except TimeoutError:
                raise _Reject(504, "resolve-timeout", decision.host, decision.port) from None
            except (OSError, UnicodeError, ValueError):
                raise _Reject(502, "resolve-failed", decision.host, decision.port) from None
        if not answers:
            raise _Reject(502, "resolve-failed", decision.host, decision.port)
        # One denied answer denies the name: a mixed answer is what a rebinding
        # attack looks like, and dialing "only the good ones" would hide it.
        origin = (decision.host, decision.port) if http else None
        for answer in answers:
            verdict = self.policy.check_address(answer, origin=origin)
            if not verdict.allowed:
                reason = f"{verdict.reason}:{verdict.detail}" if verdict.detail else verdict.reason
                raise _Reject(403, reason, decision.host, decision.port, verdict.address)
        return [str(ipaddress.ip_address(a)) for a in answers]

    def shutdown(self) -> None:
        self.closing = True
        for task in list(self.tasks):
            task.cancel()
        for client in list(self.clients):
            client.abort()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class _Client(asyncio.Protocol):
    """The connection from a build step: the request head, then one side of a tunnel."""

    def __init__(self, proxy: _Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.name = ""
        self.head = bytearray()
        self.state = "head"  # head -> deciding -> relaying | closing
        self.tunnel: _Tunnel | None = None
        self.flow: _Flow | None = None  # an index relay answer being sent
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.name = _peer(transport)
        self.proxy.clients.add(self)
        if self.proxy.closing:
            self.transport.abort()
            return
        if len(self.proxy.clients) > _max_connections(self.proxy.limits):
            # Connections still sending their head hold a socket each until the
            # head deadline; without a cap a step could exhaust our descriptors.
            self._log_denied("connection-cap")
            self.state = "closing"
            self.transport.write(_response(429, "bake egress: denied: connection-cap\n"))
            self.transport.close()
            return
        # An absolute deadline for the whole head, not reset by each byte:
        # a client trickling one byte a second is still cut off.
        self.timer = self.proxy.loop.call_later(self.proxy.limits.head_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.state != "head":
            return  # closing: drained and dropped
        start = max(0, len(self.head) - 3)
        self.head += data
        end = self.head.find(b"\r\n\r\n", start)
        limit = self.proxy.limits.max_head_bytes
        if end == -1 or end + 4 > limit:
            if len(self.head) > limit or end != -1:
                self._early_reject(431, "head-too-large")
            return
        head, rest = bytes(self.head[:end]), bytes(self.head[end + 4:])
        self.head = bytearray()
        self._cancel_timer()
        self.state = "deciding"
        # Nothing more is read until upstream answers; what already came after
        # the head (an eager TLS ClientHello) is handed to the tunnel.
        assert self.transport is not None
        self.transport.pause_reading()
        self.proxy.spawn(self, head, rest)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return self.tunnel.client_eof()
        if self.state == "head" and self.head:
            self._log_denied("incomplete-head")
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.proxy.clients.discard(self)
        if self.tunnel is not None:
            self.tunnel.close("client-error" if exc else "closed")
        if self.flow is not None:
            self.flow.lost()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_upstream()
        if self.flow is not None:
            self.flow.writable.clear()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resume_upstream()
        if self.flow is not None:
            self.flow.writable.set()

    def _too_slow(self) -> None:
        self.timer = None
        self._early_reject(408, "head-timeout")

    def _early_reject(self, status: int, reason: str) -> None:
        self._log_denied(reason)
        self.reject(status, reason)

    def _log_denied(self, reason: str) -> None:
        self.proxy.ledger.decision(client=self.name, allowed=False, reason=reason)

    def reject(self, status: int, reason: str, host: str = "", port: int = 0) -> None:
        """Answer with an error, then close once the client has had time to read it."""
        self._cancel_timer()
        self.state = "closing"
        self.head = bytearray()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        target = f" {host}:{port}" if host else ""
        transport.write(_response(status, f"bake egress: denied{target}: {reason}\n"))
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                # The client already left (ENOTCONN from shutdown): nobody to answer.
                transport.abort()
                return
        transport.resume_reading()
        self.timer = self.proxy.loop.call_later(_LINGER_SECONDS, transport.close)

    def abort(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close("proxy-closed", abort=True)
        elif self.transport is not None:
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Flow:
    """Sending an index relay's answer to the client, at the pace the client reads it."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.writable = asyncio.Event()
        self.writable.set()
        self.gone = False
        self.sent = 0
        self.bytes_down = 0

    def lost(self) -> None:
        self.gone = True
        self.writable.set()

    async def send(self, data: bytes) -> None:
        transport = self.client.transport
        if self.gone or transport is None or transport.is_closing():
            self.gone = True
            raise ConnectionResetError("the client left")
        transport.write(data)
        self.sent += len(data)
        await self.writable.wait()
        if self.gone:
            raise ConnectionResetError("the client left")


class _Upstream(asyncio.Protocol):
    """The connection to the allowed host: the other side of a tunnel."""

    def __init__(self, tunnel: _Tunnel) -> None:
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Quiet until the tunnel is open, so that nothing upstream says can
        # overtake the "200 Connection established" to the client.
        cast(asyncio.Transport, transport).pause_reading()

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_upstream(data)

    def eof_received(self) -> bool | None:
        return self.tunnel.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close("upstream-error" if exc else "closed")

    def pause_writing(self) -> None:
        self.tunnel.pause_client()

    def resume_writing(self) -> None:
        self.tunnel.resume_client()


_REPLY_HEAD_MAX = 64 * 1024
_REPLY_HOP_HEADERS = (b"connection", b"keep-alive", b"proxy-connection")


class _Tunnel:
    """One allowed request: dials upstream, relays, and logs itself once when it ends."""

    def __init__(self, proxy: _Proxy, client: _Client, host: str, port: int) -> None:
        self.proxy = proxy
        self.client = client
        self.host = host
        self.port = port
        self.address = ""
        self.upstream: asyncio.Transport | None = None
        self.started = proxy.loop.time()
        self.last = self.started
        self.bytes_up = 0
        self.bytes_down = 0
        self.body_left: int | None = None  # plain HTTP: request body bytes still to relay
        self.reply_head: bytearray | None = None  # plain HTTP: the reply head, until complete
        self.eof_from_client = False
        self.eof_from_upstream = False
        self.closed = False
        self.client_pauses: set[str] = set()
        self.timers: list[asyncio.TimerHandle] = []

    async def dial(self, addresses: list[str], forward: tuple[bytes, int] | None,
                   rest: bytes) -> None:
        loop = self.proxy.loop
        limits = self.proxy.limits
        deadline = loop.time() + limits.connect_timeout
        timed_out = False
        for index, address in enumerate(addresses):
            self.address = address
            # Each remaining address gets an equal share of what is left, so one
            # black-holed address does not use up the time of the others.
            share = (deadline - loop.time()) / (len(addresses) - index)
            if share <= 0:
                timed_out = True
                break
            try:
                transport = await asyncio.wait_for(self._connect(address), share)
            except TimeoutError:
                timed_out = True
                continue
            except OSError:
                continue
            if self.client.transport is None or self.client.transport.is_closing():
                transport.abort()  # the client left while we dialed
                self._finish("client-gone")
                return
            self._open(transport, forward, rest)
            return
        if timed_out:
            self.fail(504, "connect-timeout")
        else:
            self.fail(502, "connect-failed")

    async def _connect(self, address: str) -> asyncio.Transport:
        # Our own socket and sock_connect: the address is dialed as given, with
        # no resolver in the path (create_connection(host=...) may call one).
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await self.proxy.loop.sock_connect(sock, (address, self.port))
            transport, _ = await self.proxy.loop.create_connection(
                lambda: _Upstream(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        return transport

    def _open(self, upstream: asyncio.Transport, forward: tuple[bytes, int] | None,
              rest: bytes) -> None:
        loop = self.proxy.loop
        client = self.client
        assert client.transport is not None
        self.upstream = upstream
        client.tunnel = self
        client.state = "relaying"
        for transport in (upstream, client.transport):
            transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
            # ``max_size`` is the selector transport's recv size, an implementation
            # detail: other transports simply ignore the attribute.
            cast(Any, transport).max_size = _READ_SIZE
        limits = self.proxy.limits
        self.timers.append(loop.call_later(limits.idle_timeout, self._check_idle))
        self.timers.append(loop.call_later(limits.max_tunnel_seconds, self.close, "max-duration"))
        if forward is None:
            client.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            head, body = forward
            upstream.write(head)
            self.body_left = body
            self.reply_head = bytearray()
            if body == 0:
                self.client_pauses.add("body-done")
        if rest:
            self.from_client(rest)
        if not self.closed:
            upstream.resume_reading()
            if not self.client_pauses:
                client.transport.resume_reading()

    def fail(self, status: int, reason: str) -> None:
        """The tunnel never opened: answer the client and log why."""
        self.client.reject(status, reason, self.host, self.port)
        self._finish(reason)

    def from_client(self, data: bytes) -> None:
        if self.closed or self.upstream is None:
            return
        if self.body_left is not None:
            # Plain HTTP: relay exactly the declared body, nothing after it.
            if len(data) > self.body_left:
                data = data[: self.body_left]
            self.body_left -= len(data)
            if self.body_left == 0:
                self.pause_client("body-done")
            if not data:
                return
        if not self.proxy.count(len(data)):
            return
        self.bytes_up += len(data)
        self.proxy.bytes_up += len(data)
        self.last = self.proxy.loop.time()
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        transport = self.client.transport
        if self.closed or transport is None:
            return
        if not self.proxy.count(len(data)):
            return
        self.bytes_down += len(data)
        self.proxy.bytes_down += len(data)
        self.last = self.proxy.loop.time()
        if self.reply_head is not None:
            data = self._reply_head(data)
            if not data:
                return
        transport.write(data)

    def _reply_head(self, data: bytes) -> bytes:
        """Plain HTTP: say ``Connection: close`` in the origin's reply head too.

        The proxy serves one request per connection.  An origin that answers
        keep-alive would make the client pool this connection and send its next
        request into a socket the proxy is about to close (a reset mid-download).
        """
        assert self.reply_head is not None
        self.reply_head += data
        end = self.reply_head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.reply_head) <= _REPLY_HEAD_MAX:
                return b""
            out, self.reply_head = bytes(self.reply_head), None  # not HTTP: pass it on
            return out
        head, rest = bytes(self.reply_head[:end]), bytes(self.reply_head[end + 4:])
        self.reply_head = None
        lines = [line for line in head.split(b"\r\n")
                 if line.split(b":", 1)[0].strip().lower() not in _REPLY_HOP_HEADERS]
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + rest

    def client_eof(self) -> bool:
        self.eof_from_client = True
        if self.body_left is None and self.upstream is not None and self.upstream.can_write_eof():
            self.upstream.write_eof()  # pass the half-close on; the reply may still come
        if self.eof_from_upstream:
            self.close("closed")
        return True

    def upstream_eof(self) -> bool:
        self.eof_from_upstream = True
        transport = self.client.transport
        if self.body_left is not None or self.eof_from_client:
            # Plain HTTP sent "Connection: close": the response is complete.
            self.close("closed")
        elif transport is not None and transport.can_write_eof():
            transport.write_eof()
        return True

    def pause_client(self, why: str = "back-pressure") -> None:
        self.client_pauses.add(why)
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_client(self, why: str = "back-pressure") -> None:
        self.client_pauses.discard(why)
        if not self.client_pauses and self.client.transport is not None and not self.closed:
            self.client.transport.resume_reading()

    def pause_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_upstream(self) -> None:
        if self.upstream is not None and not self.closed:
            self.upstream.resume_reading()

    def _check_idle(self) -> None:
        idle = self.proxy.limits.idle_timeout
        quiet_for = self.proxy.loop.time() - self.last
        if quiet_for >= idle:
            self.close("idle-timeout")
        else:
            self.timers.append(self.proxy.loop.call_later(idle - quiet_for, self._check_idle))

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close both sides and log once.

        An orderly end flushes what is queued; a limit (idle, duration, budget)
        or shutdown aborts, because a peer that stopped reading would keep a
        flushing close open for ever.
        """
        if self.closed:
            return
        abort = abort or reason not in ("closed", "client-error", "upstream-error")
        transports = [t for t in (self.client.transport, self.upstream) if t is not None]
        for transport in transports:
            if abort:
                transport.abort()
            else:
                transport.close()
        if not abort:
            self.proxy.loop.call_later(
                self.proxy.limits.idle_timeout, _abort_all, transports)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for timer in self.timers:
            timer.cancel()
        self.proxy.active -= 1
        self.proxy.ledger.tunnel(
            client=self.client.name, host=self.host, port=self.port, address=self.address,
            reason=reason, bytes_up=self.bytes_up, bytes_down=self.bytes_down,
            duration_s=self.proxy.loop.time() - self.started,
        )


def _abort_all(transports: list[asyncio.Transport]) -> None:
    # The last resort after an orderly close: a peer still not reading by now
    # would hold the connection (and its buffer) for ever.
    for transport in transports:
        transport.abort()  # a no-op on a transport that already closed


class RunningProxy:
    """A proxy serving from a daemon thread; close it (or use ``with``) when done."""

    def __init__(self, host: str, port: int, thread: threading.Thread, proxy: _Proxy,
                 stop: Callable[[], None], ledger: EgressLedger) -> None:
        self.host = host
        self.port = port
        self._thread = thread
        self._proxy = proxy
        self._stop = stop
        self._ledger = ledger
        self._closed = False
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._ledger.path

    def stats(self) -> EgressStats:
        """Decisions so far, and bytes relayed so far (open tunnels included)."""
        counts = self._ledger.stats()
        return EgressStats(counts.allowed, counts.denied,
                           self._proxy.bytes_up, self._proxy.bytes_down)

    def alive(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the proxy stops (or ``timeout``); True if it has stopped."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Stop accepting, close every tunnel, write the last log lines. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop()
        self._thread.join(timeout=30)
        self._ledger.close()

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_proxy(policy: EgressPolicy, *, host: str, port: int = 0, log_path: Path | None = None,
                limits: ProxyLimits = ProxyLimits(), resolver: Resolver | None = None,
                relay: IndexRelay | None = None) -> RunningProxy:
    """Listen on ``host:port`` (0: any free port) and serve from a daemon thread.

    Returns once the socket listens; :attr:`RunningProxy.port` is the real port.
    The listening address is added to the policy's own addresses.  With a
    ``relay``, the proxy also serves the seller's index under ``/bake-index/``.
    Raises :class:`EgressError` when it cannot listen (or read the CA bundle).
    """
    tls = _relay_tls(relay)
    loop = asyncio.new_event_loop()
    ledger = EgressLedger(log_path)
    proxy = _Proxy(policy, limits, ledger, resolver, loop, relay, tls)
    started = threading.Event()
    failure: list[BaseException] = []
    bound: list[tuple[str, int]] = []
    stop_event: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop_event
        stop_event = asyncio.Event()
        try:
            # Not serving yet: the policy must know our own address before the
            # first request is judged.
            server = await loop.create_server(lambda: _Client(proxy), host=host, port=port,
                                              start_serving=False, backlog=1024)
        except (OSError, OverflowError, UnicodeError) as exc:
            failure.append(exc)
            started.set()
            return
        names = [sock.getsockname() for sock in server.sockets]
        own = [str(n[0]) for n in names if not ipaddress.ip_address(n[0]).is_unspecified]
        proxy.policy = policy.with_own_addresses(own)
        proxy.own_targets = frozenset(
            (str(ipaddress.ip_address(n[0])), int(n[1])) for n in names)
        bound.append((str(names[0][0]), int(names[0][1])))
        async with server:
            await server.start_serving()
            started.set()
            await stop_event.wait()
            server.close()
            tasks = list(proxy.tasks)
            proxy.shutdown()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Let aborted transports run their connection_lost callbacks.
            for _ in range(3):
                await asyncio.sleep(0)

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 -- handed to start_proxy to raise
            failure.append(exc)
            started.set()
        finally:
            with contextlib.suppress(RuntimeError):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop() -> None:
        if stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_event.set)

    thread = threading.Thread(target=run, name=f"bake-egress-proxy-{host}:{port}", daemon=True)
    thread.start()
    started.wait()
    if failure or not bound:
        thread.join()
        ledger.close()
        exc = failure[0] if failure else None
        raise EgressError(
            f"the egress proxy cannot listen on {host}:{port}: {exc}",
            hint="pick another --listen address or port, or free this one",
        ) from exc
    return RunningProxy(bound[0][0], bound[0][1], thread, proxy, stop, ledger)


def _relay_tls(relay: IndexRelay | None) -> ssl.SSLContext | None:
    """The TLS context for an https index: the system's CAs plus the seller's bundle."""
    if relay is None or relay.scheme != "https":
        return None
    context = ssl.create_default_context()
    if relay.ca_bundle:
        try:
            context.load_verify_locations(cafile=relay.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise EgressError(f"cannot read the CA bundle {relay.ca_bundle}: {exc}",
                              hint="check build.ca_bundle in the seller config") from exc
    return context


def serve_forever(policy: EgressPolicy, *, host: str, port: int, log_path: Path | None = None,
                  limits: ProxyLimits = ProxyLimits(),
                  on_ready: Callable[[RunningProxy], None] | None = None) -> None:
    """Run the proxy until Ctrl-C (``bake proxy --listen``); ``on_ready`` gets it once listening."""
    with start_proxy(policy, host=host, port=port, log_path=log_path, limits=limits) as proxy:
        if on_ready is not None:
            on_ready(proxy)
        with contextlib.suppress(KeyboardInterrupt):
            while not proxy.wait(0.5):
                pass

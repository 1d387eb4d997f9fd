"""Loopback upstreams, a recording stub resolver and a raw proxy client for the egress tests.

Everything listens on 127.0.0.x only.  The proxy under test listens on
127.0.0.1, which it counts as its own address; upstreams listen on 127.0.0.2
(and traps on 127.0.0.3), so a policy reaches them with ``allow_cidrs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bake.egress.policy import EgressPolicy
from bake.egress.proxy import ProxyLimits, RunningProxy, start_proxy

UPSTREAM_HOST = "127.0.0.2"
TRAP_HOST = "127.0.0.3"
PROXY_HOST = "127.0.0.1"


class Upstream:
    """A threaded TCP server on loopback that counts its connections.

    ``mode``: "echo" sends back what it gets; "blast" sends ``blast_bytes`` and
    closes; "http" answers one HTTP request with ``http_body`` and records the
    request head; "silent" accepts and never answers.
    """

    def __init__(
        self,
        host: str = UPSTREAM_HOST,
        port: int = 0,
        mode: str = "echo",
        blast_bytes: int = 0,
        http_body: bytes = b"hello from origin\n",
    ) -> None:
        self.mode = mode
        self.blast_bytes = blast_bytes
        self.http_body = http_body
        self.heads: list[bytes] = []
        self.accepted = 0
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.mode == "echo":
                while data := conn.recv(65536):
                    conn.sendall(data)
            elif self.mode == "blast":
                conn.sendall(bytes(self.blast_bytes))
            elif self.mode == "http":
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                self.heads.append(head)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(self.http_body)
                    + self.http_body
                )
            elif self.mode == "silent":
                self._stop.wait(10)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._accept_thread.join()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join()
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StubResolver:
    """A :data:`~bake.egress.policy.Resolver` that records each call.

    ``answers`` is either one list returned every time, or a list of lists
    returned in turn (the last one repeats) to play DNS rebinding.
    """

    def __init__(
        self, *answers: Sequence[str], delay: float = 0.0, error: BaseException | None = None
    ) -> None:
        self.answers = [list(a) for a in answers] or [[UPSTREAM_HOST]]
        self.calls: list[tuple[str, int]] = []
        self.delay = delay
        self.error = error

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def policy(
    allow: Sequence[str] = ("echo.test",),
    *,
    allow_http: Sequence[str] = (),
    allow_cidrs: Sequence[str] = (f"{UPSTREAM_HOST}/32",),
    ports: Sequence[int] = (),
) -> EgressPolicy:
    """A policy from settings, optionally letting CONNECT reach unprivileged test ports."""
    base = EgressPolicy.from_settings(list(allow), list(allow_http), list(allow_cidrs))
    if ports:
        base = dataclasses.replace(base, connect_ports=frozenset({443, *ports}))
    return base


@contextlib.contextmanager
def running(
    pol: EgressPolicy, log: Path, resolver: StubResolver | None = None, **limits: Any
) -> Iterator[RunningProxy]:
    with start_proxy(
        pol,
        host=PROXY_HOST,
        log_path=log,
        resolver=resolver or StubResolver(),
        limits=ProxyLimits(**limits),
    ) as proxy:
        yield proxy


@dataclasses.dataclass
class Reply:
    status: int
    head: bytes
    body: bytes
    sock: socket.socket


def read_reply(sock: socket.socket) -> Reply:
    """Read a response head (and a Content-Length body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Reply(status, head, body, sock)


@contextlib.contextmanager
def ask(proxy: RunningProxy, raw: bytes) -> Iterator[Reply]:
    """Send ``raw`` to the proxy and read its answer; the socket closes afterwards."""
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        yield read_reply(sock)


def connect_line(target: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def decisions(path: Path) -> list[dict[str, Any]]:
    return [line for line in log_lines(path) if line["event"] == "decision"]


def tunnels(path: Path) -> list[dict[str, Any]]:
    return [line for line in log_lines(path) if line["event"] == "tunnel"]

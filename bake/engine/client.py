"""The Engine API over the standard library: HTTP/1.0 on a fresh connection per call.

Why our own client and not the docker SDK: a key hit asks the engine two
questions and must answer in about the time Docker's own cached build takes;
importing the SDK (and requests) costs more than that.  HTTP/1.0 keeps the
client small: the engine answers with the whole body and closes, and a stream
(``logs?follow=1``, a pull's progress) is simply read until the engine closes it,
so there is no chunked decoding and no connection reuse to get wrong.

One error translation (:meth:`Engine._fail`, :func:`_unreachable`): a socket
that cannot connect is ``EngineError(unreachable=True)`` with the fix; an API
answer that is not what the call needs is ``EngineError(status=...)`` with the
engine's own message.  Nothing else of the socket or HTTP layers leaks out.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from ..errors import EngineError

if TYPE_CHECKING:  # a type only: the fast path's direct mode must not load the settings
    from ..settings import Settings

__all__ = ["Container", "Engine", "EngineAddress", "Progress", "engine_hint", "registry_auth"]

_API = "/v1.41"  # Engine 20.10; newer engines serve older API versions too
_TIMEOUT = 30.0
_NO_AUTH = base64.urlsafe_b64encode(b"{}").decode("ascii")
DEFAULT_HOST = "unix:///var/run/docker.sock"


def engine_hint() -> str:
    return (
        "start the Docker Engine (as root: `dockerd &`, or `systemctl start docker`) "
        "or point DOCKER_HOST at one; `bake doctor` checks the set-up"
    )


@dataclass(frozen=True)
class EngineAddress:
    """Where the engine listens, as the docker CLI reads it from its environment.

    ``unix:///path``, or ``tcp://host:port`` -- with TLS when ``tls_verify`` is set
    (the server is checked against ``ca.pem`` and ``cert.pem``/``key.pem`` are
    presented, all from ``cert_path``), as ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``
    make the CLI do.
    """

    url: str = ""  # "": the default socket (DEFAULT_HOST)
    tls_verify: bool = False
    cert_path: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineAddress:
        cert_path = env.get("DOCKER_CERT_PATH") or ""
        return cls(
            url=env.get("DOCKER_HOST") or "",
            tls_verify=bool(env.get("DOCKER_TLS_VERIFY")),
            cert_path=cert_path,
        )

    @property
    def where(self) -> str:
        return self.url or DEFAULT_HOST

    @property
    def tls(self) -> bool:
        return self.tls_verify or bool(self.cert_path and self.where.startswith("tcp://"))

    def describe(self) -> str:
        return f"{self.where} (TLS)" if self.tls else self.where

    def cli_env(self) -> dict[str, str]:
        """The variables that point the docker CLI at this engine (and only these)."""
        env = {"DOCKER_HOST": self.where}
        if self.tls_verify:
            env["DOCKER_TLS_VERIFY"] = "1"
        if self.cert_path:
            env["DOCKER_CERT_PATH"] = self.cert_path
        return env

    def connect(self, timeout: float) -> socket.socket:
        parts = urlsplit(self.where)
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = parts.path
        elif parts.scheme in ("tcp", "http", "https") and parts.hostname:
            default = 2376 if self.tls or parts.scheme == "https" else 2375
            target = (parts.hostname, parts.port or default)
            sock = socket.create_connection(target, timeout=timeout)
            sock.settimeout(timeout)
            return self._wrap(sock, parts.hostname) if self.tls or parts.scheme == "https" \
                else sock
        else:
            raise EngineError(
                f"DOCKER_HOST={self.where!r} is not an address bake can use",
                hint="use unix:///path/to/docker.sock or tcp://host:port (with "
                "DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH for TLS)",
            )
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock

    def _wrap(self, sock: socket.socket, hostname: str) -> socket.socket:
        # Only for an engine over TLS: a local socket never pays for it.
        import ssl  # noqa: PLC0415

        folder = Path(self.cert_path or Path.home() / ".docker")
        try:
            if self.tls_verify:
                context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
            else:
                # DOCKER_CERT_PATH without DOCKER_TLS_VERIFY: the CLI's --tls, which
                # encrypts and presents the client certificate but checks no server.
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            cert, key = folder / "cert.pem", folder / "key.pem"
            if cert.is_file() and key.is_file():
                context.load_cert_chain(str(cert), str(key))
            return context.wrap_socket(sock, server_hostname=hostname)
        except OSError as exc:  # ssl.SSLError is an OSError too
            sock.close()
            raise EngineError(
                f"cannot open TLS to the Docker Engine at {self.describe()}: {exc}",
                hint=f"check DOCKER_CERT_PATH ({folder}: ca.pem, cert.pem, key.pem) and "
                "that the engine listens with --tlsverify",
                unreachable=True,
            ) from exc


@dataclass(frozen=True)
class Progress:
    """One line of a pull's or push's progress: ``layer`` is empty for whole-image lines."""

    layer: str
    status: str


@dataclass(frozen=True)
class Container:
    """What :meth:`Engine.inspect_container` tells of a finished or running container."""

    id: str
    running: bool
    exit_code: int
    oom_killed: bool
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Head:
    status: int
    headers: Mapping[str, str]


class Engine:
    """One Docker Engine.  Cheap to make: nothing connects until a call."""

    def __init__(self, address: EngineAddress | None = None) -> None:
        self.address = address or EngineAddress()

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """The engine the seller's environment names (read once, by the settings)."""
        env = settings.env
        return cls(EngineAddress(env.docker_host, env.docker_tls_verify, env.docker_cert_path))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Engine:
        """The engine the docker CLI would use with this environment (tests, scripts)."""
        return cls(EngineAddress.from_env(os.environ if env is None else env))

    def __repr__(self) -> str:
        return f"Engine({self.address.describe()})"

    # -- transport ----------------------------------------------------------------------------

    @contextmanager
    def _open(self, method: str, path: str, *, body: bytes | None = None,
              upload: Path | None = None, headers: Mapping[str, str] | None = None,
              timeout: float | None = _TIMEOUT) -> Iterator[tuple[_Head, Iterator[bytes]]]:
        """Send one request; yield the answer's head and its body, read as it arrives.

        ``timeout`` bounds each wait for the engine (None: wait as long as it takes,
        for a followed log); connecting is always bounded.
        """
        try:
            sock = self.address.connect(timeout or _TIMEOUT)
        except OSError as exc:
            raise self._unreachable(exc) from exc
        try:
            sock.settimeout(timeout)
            lines = [f"{method} {_API}{path} HTTP/1.0", "Host: docker"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            if body is not None:
                lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            elif upload is not None:
                lines += ["Content-Type: application/x-tar",
                          f"Content-Length: {upload.stat().st_size}"]
            try:
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
                if upload is not None:
                    with open(upload, "rb") as fh:
                        sock.sendfile(fh)
                head, rest = _read_head(sock)
            except TimeoutError:
                raise
            except OSError as exc:
                raise self._unreachable(exc) from exc
            yield head, _body(sock, rest, chunked="chunked" in head.headers.get(
                "transfer-encoding", "").lower())
        finally:
            sock.close()

    def _call(self, method: str, path: str, *, body: Any = None,
              timeout: float = _TIMEOUT) -> tuple[int, Any]:
        """One call whose answer is JSON (or empty): (status, parsed body or None)."""
        payload = json.dumps(body).encode() if body is not None else None
        try:
            with self._open(method, path, body=payload, timeout=timeout) as (head, chunks):
                raw = b"".join(chunks)
        except TimeoutError as exc:
            raise self._unreachable(exc) from exc
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return head.status, data

    def _unreachable(self, exc: OSError) -> EngineError:
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = engine_hint()
        if self.address.tls:
            hint = ("check DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem) and that the engine "
                    "trusts this client's certificate; " + hint)
        return EngineError(f"cannot reach the Docker Engine at {self.address.describe()}: "
                           f"{reason}", hint=hint, unreachable=True)

    @staticmethod
    def _fail(what: str, status: int, data: Any) -> EngineError:
        message = data.get("message") if isinstance(data, dict) else None
        reason = str(message or f"HTTP {status}")
        return EngineError(f"the Docker Engine could not {what}: {reason}", status=status,
                           detail=reason)

    # -- the engine -----------------------------------------------------------------------------

    def ping(self, timeout: float = 5.0) -> bool:
        try:
            status, _ = self._call("GET", "/_ping", timeout=timeout)
        except EngineError:
            return False
        return status == 200

    def version(self, timeout: float = 5.0) -> dict[str, Any]:
        status, data = self._call("GET", "/version", timeout=timeout)
        if status != 200 or not isinstance(data, dict):
            raise self._fail("tell its version", status, data)
        return data

    def info(self) -> dict[str, Any]:
        status, data = self._call("GET", "/info")
        if status != 200 or not isinstance(data, dict):
            raise self._fail("describe itself (/info)", status, data)
        return data

    # -- images -------------------------------------------------------------------------------

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        """The image's inspect document, or ``None`` when the engine does not have it."""
        status, data = self._call("GET", f"/images/{quote(ref, safe='')}/json")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise self._fail(f"inspect {ref}", status, data)
        return data

    def image_history(self, ref: str) -> list[dict[str, Any]]:
        """The image's layers and steps, newest first (``docker history``): each with its
        ``CreatedBy`` and ``Size``."""
        status, data = self._call("GET", f"/images/{quote(ref, safe='')}/history")
        if status != 200 or not isinstance(data, list):
            raise self._fail(f"history of {ref}", status, data)
        return data

    def has_image(self, ref: str) -> bool:
        return self.inspect_image(ref) is not None

    def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        query = urlencode({"repo": repository, "tag": tag})
        status, data = self._call("POST", f"/images/{quote(image_id, safe='')}/tag?{query}")
        if status not in (200, 201):
            raise self._fail(f"tag {image_id} as {repository}:{tag}", status, data)

    def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Remove an image (by tag: only that name when it has others); False if absent.

        Unforced, the engine refuses (HTTP 409, ``EngineError.status``) when a
        container uses the image.
        """
        query = urlencode({"force": int(force), "noprune": 0})
        status, data = self._call("DELETE", f"/images/{quote(ref, safe='')}?{query}")
        if status == 404:
            return False
        if status != 200:
            raise self._fail(f"remove {ref}", status, data)
        return True

    def images(self, *, label: str | None = None) -> list[dict[str, Any]]:
        query = "?" + urlencode({"filters": json.dumps({"label": [label]})}) if label else ""
        status, data = self._call("GET", f"/images/json{query}")
        if status != 200 or not isinstance(data, list):
            raise self._fail("list images", status, data)
        return data

    def disk_usage(self) -> dict[str, Any]:
        """``/system/df``: every image with its shared size (slow on a big engine)."""
        status, data = self._call("GET", "/system/df", timeout=300)
        if status != 200 or not isinstance(data, dict):
            raise self._fail("report disk usage", status, data)
        return data

    def pull(self, ref: str, *, auth: str | None = None,
             on_progress: Callable[[Progress], None] = lambda p: None) -> None:
        """``docker pull``, with progress; ``auth`` is an ``X-Registry-Auth`` value."""
        repository, tag = _split_tag(ref)
        query = urlencode({"fromImage": repository, "tag": tag})
        self._progress("POST", f"/images/create?{query}", f"pull {ref}", auth, on_progress)

    def push(self, ref: str, *, auth: str | None = None,
             on_progress: Callable[[Progress], None] = lambda p: None) -> None:
        repository, tag = _split_tag(ref)
        self._progress("POST", f"/images/{quote(repository, safe='')}/push?"
                       f"{urlencode({'tag': tag})}", f"push {ref}", auth, on_progress)

    def import_image(self, tarball: Path, repository: str, tag: str, *,
                     changes: tuple[str, ...] = (), message: str = "") -> None:
        """``docker import``: a root file system tarball as an image."""
        params: list[tuple[str, str]] = [("fromSrc", "-"), ("repo", repository), ("tag", tag)]
        params += [("changes", change) for change in changes]
        if message:
            params.append(("message", message))
        self._progress("POST", f"/images/create?{urlencode(params)}",
                       f"import {repository}:{tag}", None, lambda p: None, upload=tarball)

    def _progress(self, method: str, path: str, what: str, auth: str | None,
                  on_progress: Callable[[Progress], None], *, upload: Path | None = None) -> None:
        """A call whose answer is a stream of JSON progress objects; an ``error`` one fails it.

        The engine refuses a push without an ``X-Registry-Auth`` header even for a registry
        that needs no login: with no credentials it gets an empty one, as the CLI sends.
        """
        headers = {"X-Registry-Auth": auth or _NO_AUTH} if upload is None else {}
        try:
            with self._open(method, path, upload=upload, headers=headers,
                            timeout=600) as (head, chunks):
                if head.status != 200:
                    raw = b"".join(chunks)
                    try:
                        data = json.loads(raw) if raw else None
                    except ValueError:
                        data = None
                    raise self._fail(what, head.status, data)
                for item in _json_stream(chunks):
                    if item.get("error"):
                        reason = str((item.get("errorDetail") or {}).get("message")
                                     or item["error"])
                        raise EngineError(f"the Docker Engine could not {what}: {reason}",
                                          status=head.status, detail=reason)
                    status = str(item.get("status") or "")
                    if status:
                        on_progress(Progress(str(item.get("id") or ""), status))
        except TimeoutError as exc:
            raise self._unreachable(exc) from exc

    # -- networks -------------------------------------------------------------------------------

    def network(self, name: str) -> dict[str, Any] | None:
        status, data = self._call("GET", f"/networks/{quote(name, safe='')}")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise self._fail(f"inspect network {name}", status, data)
        return data

    def bridge_name(self, network: str = "bridge") -> str:
        """The host interface of a bridge network (``docker0`` for the default one)."""
        data = self.network(network) or {}
        name = (data.get("Options") or {}).get("com.docker.network.bridge.name")
        return str(name) if name else "docker0"

    def bridge_gateway(self, network: str = "bridge") -> str:
        """The host's address on a bridge network: where build steps find the proxy."""
        data = self.network(network)
        if data is not None:
            for config in (data.get("IPAM") or {}).get("Config") or []:
                gateway = config.get("Gateway")
                if gateway and ":" not in gateway:
                    return str(gateway)
            # The default bridge often lists no gateway: read the interface's own address.
            name = (data.get("Options") or {}).get("com.docker.network.bridge.name")
            if name:
                address = _interface_address(str(name))
                if address:
                    return address
        raise EngineError(
            f"cannot find the gateway address of the Docker network {network!r}",
            hint="bake's build steps run on the default bridge; is the engine started with "
            "--bridge=none?",
        )

    def networks(self, *, label: str | None = None) -> list[dict[str, Any]]:
        query = "?" + urlencode({"filters": json.dumps({"label": [label]})}) if label else ""
        status, data = self._call("GET", f"/networks{query}")
        if status != 200 or not isinstance(data, list):
            raise self._fail("list networks", status, data)
        return data

    def create_network(self, config: Mapping[str, Any]) -> str:
        """``POST /networks/create``; the engine refuses an overlapping subnet (HTTP 403)."""
        status, data = self._call("POST", "/networks/create", body=dict(config))
        if status != 201 or not isinstance(data, dict):
            raise self._fail(f"create network {config.get('Name')}", status, data)
        return str(data["Id"])

    def remove_network(self, ident: str) -> bool:
        """False when the engine has no such network (yet); refused (HTTP 403) while a
        container is still attached."""
        status, data = self._call("DELETE", f"/networks/{quote(ident, safe='')}")
        if status == 404:
            return False
        if status not in (204, 200):
            raise self._fail(f"remove network {ident[:24]}", status, data)
        return True

    # -- containers -----------------------------------------------------------------------------

    def create_container(self, name: str, config: Mapping[str, Any]) -> str:
        status, data = self._call("POST", f"/containers/create?name={quote(name, safe='')}",
                                  body=dict(config))
        if status != 201 or not isinstance(data, dict):
            raise self._fail(f"create container {name}", status, data)
        return str(data["Id"])

    def start_container(self, ident: str) -> None:
        status, data = self._call("POST", f"/containers/{quote(ident, safe='')}/start")
        if status not in (204, 304):
            raise self._fail(f"start container {ident[:12]}", status, data)

    def wait_container(self, ident: str, timeout: float) -> int:
        """The container's exit code; ``TimeoutError`` when it runs past ``timeout``."""
        with self._open("POST", f"/containers/{quote(ident, safe='')}/wait",
                        timeout=timeout) as (head, chunks):
            raw = b"".join(chunks)
        data = json.loads(raw) if raw else {}
        if head.status != 200:
            raise self._fail(f"wait for container {ident[:12]}", head.status, data)
        return int(data.get("StatusCode", 1))

    def kill_container(self, ident: str) -> None:
        status, data = self._call("POST", f"/containers/{quote(ident, safe='')}/kill")
        if status not in (204, 404, 409):  # 409: not running any more
            raise self._fail(f"stop container {ident[:12]}", status, data)

    def inspect_container(self, ident: str) -> Container | None:
        status, data = self._call("GET", f"/containers/{quote(ident, safe='')}/json")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise self._fail(f"inspect container {ident[:12]}", status, data)
        state = data.get("State") or {}
        return Container(str(data.get("Id", "")), bool(state.get("Running")),
                         int(state.get("ExitCode", 0) or 0), bool(state.get("OOMKilled")),
                         dict((data.get("Config") or {}).get("Labels") or {}))

    def containers(self, *, label: str | None = None, all: bool = True) -> list[dict[str, Any]]:
        params = {"all": int(all)}
        if label:
            params["filters"] = json.dumps({"label": [label]})  # type: ignore[assignment]
        status, data = self._call("GET", f"/containers/json?{urlencode(params)}")
        if status != 200 or not isinstance(data, list):
            raise self._fail("list containers", status, data)
        return data

    def logs(self, ident: str, *, stdout: bool = True, stderr: bool = False,
             follow: bool = False) -> Iterator[tuple[int, bytes]]:
        """The container's output as (stream, bytes): 1 stdout, 2 stderr, as it is written."""
        query = urlencode({"stdout": int(stdout), "stderr": int(stderr), "follow": int(follow)})
        # A followed log stays open as long as the job runs: no read timeout.
        with self._open("GET", f"/containers/{quote(ident, safe='')}/logs?{query}",
                        timeout=None if follow else _TIMEOUT) as (head, chunks):
            if head.status != 200:
                raise self._fail(f"read the output of container {ident[:12]}", head.status, None)
            yield from _frames(chunks)

    def container_output(self, ident: str) -> bytes:
        """What the container wrote to stdout, once it has ended."""
        return b"".join(data for _, data in self.logs(ident, stdout=True, stderr=False))

    def remove_container(self, ident: str) -> bool:
        """Force-remove with its volumes; False when the engine has no such container (yet)."""
        status, data = self._call("DELETE", f"/containers/{quote(ident, safe='')}?force=1&v=1")
        if status == 404:
            return False
        if status not in (204, 200):
            raise self._fail(f"remove container {ident[:12]}", status, data)
        return True

    def discard_container(self, name: str, *, in_flight: bool) -> None:
        """Remove a container of bake's by name, never raising.  ``in_flight``: a signal cut
        its create short, so the engine may still be making it: look again for a moment
        (about a second) before giving up."""
        for attempt in range(10 if in_flight else 1):
            try:
                if self.remove_container(name):
                    return
            except EngineError:
                return
            if in_flight and attempt < 9:
                time.sleep(0.1)


# -- the wire ---------------------------------------------------------------------------------


def _read_head(sock: socket.socket) -> tuple[_Head, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError(f"the engine closed the connection before answering: {buffer[:60]!r}")
        buffer += chunk
        if len(buffer) > 1 << 20:
            raise OSError("the engine's answer has no end of headers")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP answer from the engine: {head[:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Head(int(status_line[1]), headers), rest


def _body(sock: socket.socket, rest: bytes, *, chunked: bool) -> Iterator[bytes]:
    def raw() -> Iterator[bytes]:
        if rest:
            yield rest
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return
            yield chunk

    return _unchunk(raw()) if chunked else raw()


def _unchunk(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Chunked transfer coding, in case an engine uses it even for HTTP/1.0."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while True:
            line, sep, after = buffer.partition(b"\r\n")
            if not sep:
                break
            size = int(line.split(b";")[0] or b"0", 16)
            if size == 0:
                return
            if len(after) < size + 2:
                break
            yield after[:size]
            buffer = after[size + 2:]


def _json_stream(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Newline- or concatenation-separated JSON objects, as the engine streams progress."""
    decoder = json.JSONDecoder()
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode("utf-8", "replace")
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                item, end = decoder.raw_decode(buffer)
            except ValueError:
                break
            buffer = buffer[end:]
            if isinstance(item, dict):
                yield item


def _frames(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """The multiplexed log stream of a container without a TTY: 8-byte headers, then data."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 8:
            size = int.from_bytes(buffer[4:8], "big")
            if len(buffer) < 8 + size:
                break
            yield buffer[0], buffer[8:8 + size]
            buffer = buffer[8 + size:]


def _split_tag(ref: str) -> tuple[str, str]:
    repository, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repository, tag


def registry_auth(username: str = "", password: str = "", identity_token: str = "",
                  server: str = "") -> str:
    """An ``X-Registry-Auth`` header value (base64url JSON, as the CLI sends it)."""
    doc = ({"identitytoken": identity_token} if identity_token
           else {"username": username, "password": password})
    if server:
        doc["serveraddress"] = server
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode("ascii")


def _interface_address(name: str) -> str | None:
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("256s", name.encode()[:15])
            packed = fcntl.ioctl(sock.fileno(), siocgifaddr, request)
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])

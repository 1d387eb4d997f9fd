"""A lean Docker Engine API client for the hot path: inspect an image, ping.

A key hit must feel instant (STYLE.md rule 12), and importing the docker SDK
costs more than Docker's own cached build takes.  So the two questions asked on
every ``bake build`` -- "what is the base image's digest?" and "is the key's
image here?" -- go straight to the Engine API over its socket with the
standard library.  Everything else uses the docker SDK (runner, store, registry).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import EngineError

__all__ = [
    "bridge_gateway",
    "container_output",
    "create_container",
    "docker_host",
    "engine_hint",
    "inspect_image",
    "list_containers",
    "ping",
    "remove_container",
    "start_container",
    "tag_image",
    "wait_container",
]

_API = "/v1.41"  # Engine 20.10; newer engines serve older API versions too
_TIMEOUT = 30.0


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def engine_hint() -> str:
    return (
        "start the Docker Engine (as root: `dockerd &`, or `systemctl start docker`) "
        "or point DOCKER_HOST at one; `bake doctor` checks the set-up"
    )


class _Response:
    """The little of HTTP/1.0 the Engine API needs: a status and a JSON body."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def _address() -> tuple[int, str | tuple[str, int]]:
    host = docker_host()
    parts = urlsplit(host)
    if parts.scheme == "unix":
        return socket.AF_UNIX, parts.path
    if parts.scheme in ("tcp", "http") and parts.hostname:
        return socket.AF_INET, (parts.hostname, parts.port or 2375)
    raise EngineError(
        f"DOCKER_HOST={host!r} is not supported by bake's fast path",
        hint="use a unix:// socket or tcp://host:port without TLS",
    )


def _exchange(method: str, path: str, timeout: float, body: bytes | None = None) -> _Response:
    # HTTP/1.0 on a fresh connection: the Engine answers with the whole body and
    # closes, so no chunked decoding, and no http.client (whose import of the
    # email package alone costs more than Docker's cached build takes).
    family, address = _address()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        request = f"{method} {_API}{path} HTTP/1.0\r\nHost: docker\r\n"
        if body is not None:
            request += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(request.encode() + b"\r\n" + (body or b""))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, sep, payload = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP answer from the engine: {raw[:60]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _unchunk(payload)
    return _Response(int(status_line[1]), payload)


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


def _call(method: str, path: str, timeout: float = _TIMEOUT, body: Any = None, *,
          keep_timeout: bool = False) -> _Response:
    """One API call; a failing socket becomes an EngineError (``keep_timeout``: not a
    timeout, which the caller handles itself)."""
    payload = json.dumps(body).encode() if body is not None else None
    try:
        return _exchange(method, path, timeout, payload)
    except OSError as exc:
        if keep_timeout and isinstance(exc, TimeoutError):
            raise
        reason = exc.strerror or str(exc)
        raise EngineError(
            f"cannot reach the Docker Engine at {docker_host()}: {reason}", hint=engine_hint()
        ) from exc


def _request(method: str, path: str, timeout: float = _TIMEOUT,
             body: Any = None) -> tuple[int, Any]:
    response = _call(method, path, timeout, body)
    try:
        data = json.loads(response.body) if response.body else None
    except ValueError:
        data = None
    return response.status, data


def _get(path: str, timeout: float = _TIMEOUT) -> tuple[int, Any]:
    return _request("GET", path, timeout)


def ping(timeout: float = 5.0) -> bool:
    try:
        status, _ = _get("/_ping", timeout)
    except EngineError:
        return False
    return status == 200


def inspect_image(ref: str) -> dict[str, Any] | None:
    """The image's inspect document, or ``None`` when the Engine does not have it."""
    status, data = _get(f"/images/{quote(ref, safe='')}/json")
    if status == 404:
        return None
    if status != 200 or not isinstance(data, dict):
        message = data.get("message") if isinstance(data, dict) else None
        raise EngineError(f"the Docker Engine failed to inspect {ref}: {message or status}")
    return data


def _post(path: str, timeout: float = _TIMEOUT) -> tuple[int, Any]:
    return _request("POST", path, timeout)


def tag_image(image_id: str, repository: str, tag: str) -> None:
    status, data = _post(
        f"/images/{quote(image_id, safe='')}/tag?repo={quote(repository, safe='')}"
        f"&tag={quote(tag, safe='')}"
    )
    if status not in (200, 201):
        message = data.get("message") if isinstance(data, dict) else status
        raise EngineError(f"the Docker Engine could not tag {image_id} as {repository}:{tag}: "
                          f"{message}")


def bridge_gateway(network: str = "bridge") -> str:
    """The host's address on the default bridge, where build steps find the proxy."""
    status, data = _get(f"/networks/{quote(network, safe='')}")
    if status == 200 and isinstance(data, dict):
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


def _interface_address(name: str) -> str | None:
    import fcntl
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("256s", name.encode()[:15])
            packed = fcntl.ioctl(sock.fileno(), siocgifaddr, request)
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


# -- short-lived helper containers (the egress canary) ----------------------------------------
# The docker SDK takes longer to import than these four calls take to run, and
# the canary runs on every build that reaches the network.


def _fail(what: str, status: int, data: Any) -> EngineError:
    message = data.get("message") if isinstance(data, dict) else None
    return EngineError(f"the Docker Engine could not {what}: {message or f'HTTP {status}'}")


def list_containers() -> list[dict[str, Any]]:
    """Every container on the engine, running or not (``GET /containers/json?all=1``)."""
    status, data = _get("/containers/json?all=1")
    if status != 200 or not isinstance(data, list):
        raise _fail("list containers", status, data)
    return [c for c in data if isinstance(c, dict)]


def create_container(name: str, config: dict[str, Any]) -> str:
    status, data = _request("POST", f"/containers/create?name={quote(name, safe='')}",
                            body=config)
    if status != 201 or not isinstance(data, dict):
        raise _fail(f"create container {name}", status, data)
    return str(data["Id"])


def start_container(ident: str) -> None:
    status, data = _request("POST", f"/containers/{quote(ident, safe='')}/start")
    if status not in (204, 304):
        raise _fail(f"start container {ident[:12]}", status, data)


def wait_container(ident: str, timeout: float) -> int:
    """The container's exit code; ``TimeoutError`` when it runs past ``timeout``."""
    response = _call("POST", f"/containers/{quote(ident, safe='')}/wait", timeout,
                     keep_timeout=True)
    data = json.loads(response.body) if response.body else {}
    return int(data.get("StatusCode", 1))


def container_output(ident: str) -> bytes:
    """What the container wrote to stdout (the log's multiplexed frames, unpacked)."""
    response = _call("GET", f"/containers/{quote(ident, safe='')}/logs?stdout=1&stderr=0")
    raw, out = response.body, bytearray()
    while len(raw) >= 8:
        size = int.from_bytes(raw[4:8], "big")
        if raw[0] == 1:
            out += raw[8:8 + size]
        raw = raw[8 + size:]
    return bytes(out)


def remove_container(ident: str) -> bool:
    """Force-remove; False when the Engine has no such container (yet)."""
    response = _call("DELETE", f"/containers/{quote(ident, safe='')}?force=1&v=1")
    return response.status != 404

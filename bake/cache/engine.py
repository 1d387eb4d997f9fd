"""A lean Docker Engine API client for the hot path: inspect an image, ping.

A key hit must feel instant (STYLE.md rule 12), and importing the docker SDK
costs more than Docker's own cached build takes.  So the two questions asked on
every ``bake build`` -- "what is the base image's digest?" and "is the key's
image here?" -- go straight to the Engine API over its socket with the
standard library.  Everything else uses the docker SDK (runner, store, registry).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import EngineError

__all__ = [
    "bridge_gateway",
    "docker_host",
    "engine_hint",
    "inspect_image",
    "ping",
    "tag_image",
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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(timeout: float) -> http.client.HTTPConnection:
    host = docker_host()
    parts = urlsplit(host)
    if parts.scheme == "unix":
        return _UnixConnection(parts.path, timeout)
    if parts.scheme in ("tcp", "http") and parts.hostname:
        return http.client.HTTPConnection(parts.hostname, parts.port or 2375, timeout=timeout)
    raise EngineError(
        f"DOCKER_HOST={host!r} is not supported by bake's fast path",
        hint="use a unix:// socket or tcp://host:port without TLS",
    )


def _request(method: str, path: str, timeout: float = _TIMEOUT) -> tuple[int, Any]:
    conn = _connection(timeout)
    try:
        conn.request(method, _API + path)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EngineError(
            f"cannot reach the Docker Engine at {docker_host()}: {reason}", hint=engine_hint()
        ) from exc
    finally:
        conn.close()
    try:
        data = json.loads(body) if body else None
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

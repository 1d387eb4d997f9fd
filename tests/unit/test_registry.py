"""The registry operations against a loopback server that speaks the Registry API's token flow.

The ``Registry`` seam of STYLE.md rule 7; the real registry (Distribution) is in
tests/integration/test_registry.py.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bake.cache.distribution import MANIFEST_TYPES
from bake.cache.registry import Registry
from bake.engine import Engine
from bake.errors import RegistryError
from bake.settings import HostEnv, RegistrySettings, Settings

KEY = "a" * 64


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the manifest request against a loopback token-auth registry ---------------------------------


@dataclass
class FakeRegistry:
    """Speaks the Registry API token flow: 401 + Bearer challenge, /token, then the manifest."""

    port: int = 0
    user: str = "alice"
    password: str = "s3cret"
    present: set[str] = field(default_factory=lambda: {"present"})
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    docker_config: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                fake.requests.append(("HEAD", self.path, self.headers.get("Accept", "")))
                if self.headers.get("Authorization") != "Bearer tok-1":
                    challenge = (f'Bearer realm="http://127.0.0.1:{fake.port}/token?x=1",'
                                 'service="fake",scope="repository:team/bake:pull"')
                    self._send(401, {"WWW-Authenticate": challenge})
                    return
                tag = self.path.rsplit("/", 1)[1]
                self._send(200 if tag in fake.present else 404, {})

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, self.headers.get("Authorization", "")))
                query = parse_qs(urlsplit(self.path).query)
                good = "Basic " + _auth(fake.user, fake.password)
                if (self.headers.get("Authorization") == good
                        and query.get("scope") == ["repository:team/bake:pull"]
                        and query.get("service") == ["fake"]):
                    self._send(200, {"Content-Type": "application/json"},
                               json.dumps({"token": "tok-1"}).encode())
                else:
                    self._send(401, {"Content-Type": "application/json"}, json.dumps(
                        {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
                    ).encode())

        return Handler


@pytest.fixture
def fake_registry(tmp_path: Path) -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps(
        {"auths": {f"127.0.0.1:{fake.port}": {"auth": _auth("alice", "s3cret")}}}))
    fake.docker_config = str(config)
    yield fake
    server.shutdown()
    server.server_close()


def _registry(port: int, docker_config: str = "") -> Registry:
    # No engine answers at this address: a loopback registry never needs one to be asked.
    engine = Engine.from_env({"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    settings = Settings(registry=RegistrySettings(repository=f"127.0.0.1:{port}/team/bake"),
                        env=HostEnv(docker_config=docker_config))
    return Registry(settings, engine)


def test_exists_answers_the_token_challenge_with_docker_credentials(
        fake_registry: FakeRegistry) -> None:
    registry = _registry(fake_registry.port, fake_registry.docker_config)
    assert registry.exists(f"127.0.0.1:{fake_registry.port}/team/bake:present") is True
    assert [r[0] for r in fake_registry.requests] == ["HEAD", "GET", "HEAD"]
    assert all(t in fake_registry.requests[0][2] for t in MANIFEST_TYPES)
    fake_registry.requests.clear()
    # The token is kept: the next question is one request.
    assert registry.exists(f"127.0.0.1:{fake_registry.port}/team/bake:absent") is False
    assert [r[0] for r in fake_registry.requests] == ["HEAD"]


def test_exists_with_wrong_credentials_says_to_log_in(fake_registry: FakeRegistry,
                                                      tmp_path: Path) -> None:
    fake_registry.password = "changed"
    registry = _registry(fake_registry.port, fake_registry.docker_config)
    with pytest.raises(RegistryError, match="refused access") as info:
        registry.exists(f"127.0.0.1:{fake_registry.port}/team/bake:present")
    assert "bad credentials" in info.value.message
    assert info.value.hint is not None and "docker login" in info.value.hint


@dataclass
class Recorder:
    warnings: list[str] = field(default_factory=list)

    def stage(self, text: str) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def test_unreachable_registry_is_a_warning_and_no_push() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = _registry(port)
    recorder = Recorder()
    assert registry.pull(f"127.0.0.1:{port}/team/bake:{KEY}", recorder) is False
    assert registry.push(f"127.0.0.1:{port}/team/bake:{KEY}", recorder) is False
    assert "cannot reach the registry" in recorder.warnings[0]
    assert "building locally" in recorder.warnings[0]
    assert recorder.warnings[1].startswith("not pushed:")

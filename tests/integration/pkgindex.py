"""A local package index (PEP 503 simple pages over plain HTTP) for setup-time attacks.

It serves real sdists that we make here -- packages whose ``setup.py`` runs
during ``pip install`` -- plus the ``setuptools`` and ``wheel`` wheels that pip's
build isolation needs, fetched once from the package index by the host's pip.
The build reaches it through bake's proxy as an ``egress.allow_http`` origin,
so the test also shows plain-HTTP forwarding for an allowed origin.

``serve_index(..., auth=(user, password))`` makes it a private mirror: every
request without that HTTP basic auth gets 401, and each request is recorded
with whether it was authorised and its User-Agent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BUILD_DEPS = ("setuptools==75.6.0", "wheel==0.45.1")


def sdist(folder: Path, name: str, version: str, setup_py: str,
          extra: dict[str, str] | None = None) -> Path:
    """Write ``name-version.tar.gz`` with the given setup.py into ``folder``."""
    base = f"{name}-{version}"
    members = {
        "setup.py": setup_py,
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name.replace('-', '_')}.py": "",
        **(extra or {}),
    }
    target = folder / f"{base}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for member, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """Write a pure-Python ``name-version-py3-none-any.whl`` holding ``files``."""
    dist = f"{name.replace('-', '_')}-{version}"
    members = {
        **files,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: bake-tests\n"
                                   "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for member, text in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{member},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    members[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    target = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as zf:
        for member, text in members.items():
            zf.writestr(member, text)
    return target


def fetch_build_deps(folder: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(folder), *BUILD_DEPS],
        check=True, capture_output=True,
    )


def write_simple_index(files: Path, root: Path, origin: str = "") -> None:
    """PEP 503: /simple/<normalised name>/ listing that project's files.

    Links are root-relative (``/files/x``); given the index's ``origin`` they take
    turns being absolute (``http://host:port/files/x``), relative (``../../files/x``)
    and root-relative, as mirrors write them.
    """
    projects: dict[str, list[str]] = {}
    for path in sorted(files.iterdir()):
        if path.name.endswith(".whl"):
            raw = path.name.split("-")[0]
        else:
            raw = path.name.removesuffix(".tar.gz").rsplit("-", 1)[0]
        name = raw.replace("_", "-").replace(".", "-").lower()
        projects.setdefault(name, []).append(path.name)
    simple = root / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    for name, names in projects.items():
        page = simple / name
        page.mkdir(exist_ok=True)
        links = "".join(f'<a href="{_link(n, origin, i)}">{n}</a>\n'
                        for i, n in enumerate(names))
        (page / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


def _link(name: str, origin: str, turn: int) -> str:
    if not origin:
        return f"/files/{name}"
    return (f"{origin}/files/{name}", f"../../files/{name}", f"/files/{name}")[turn % 3]


@dataclass
class Seen:
    """One request as the index saw it."""

    line: str
    authorized: bool
    user_agent: str
    authorization: str  # the header as sent, "" when absent


@dataclass
class RunningIndex:
    url: str  # http://HOST:PORT/simple
    origin: str  # http://HOST:PORT
    requests: list[str]
    seen: list[Seen] = field(default_factory=list)


class _Handler(SimpleHTTPRequestHandler):
    log: list[str]
    seen: list[Seen]
    expected: str | None  # the Authorization header every request must carry

    def log_message(self, format: str, *args: object) -> None:
        self.log.append(self.requestline)

    def _authorized(self) -> bool:
        sent = self.headers.get("Authorization", "")
        ok = self.expected is None or sent == self.expected
        self.seen.append(Seen(self.requestline, ok, self.headers.get("User-Agent", ""), sent))
        if not ok:
            body = b"authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="bake-test-mirror"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        return ok

    def do_GET(self) -> None:
        if self._authorized():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._authorized():
            super().do_HEAD()


@contextmanager
def serve_index(root: Path, host: str,
                auth: tuple[str, str] | None = None) -> Iterator[RunningIndex]:
    log: list[str] = []
    seen: list[Seen] = []
    expected = None
    if auth is not None:
        expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    handler = type("Handler", (_Handler,), {"log": log, "seen": seen, "expected": expected})
    server = ThreadingHTTPServer((host, 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://{host}:{server.server_address[1]}"
    try:
        yield RunningIndex(f"{origin}/simple", origin, log, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

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


def wheel(folder: Path, name: str, version: str, modules: dict[str, str],
          requires: tuple[str, ...] = ()) -> Path:
    """Write a pure-Python ``name-version-py3-none-any.whl`` holding ``modules`` into ``folder``."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {path: text.encode() for path, text in modules.items()}
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: bake-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    target = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as zf:
        for path, data in files.items():
            # A fixed date: the same wheel is the same bytes, run after run.
            zf.writestr(zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return target


def fetch_tool(folder: Path) -> None:
    """bake's pinned tool (uv) for this machine, as bake's tool stage installs it from an index."""
    pin = Path(__file__).resolve().parents[2] / "bake" / "templates" / "_base"
    line = next(line for line in (pin / "tool-requirements.txt").read_text().splitlines()
                if line.startswith("uv=="))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(folder), line.split()[0]],
        check=True, capture_output=True,
    )


def fetch_hub_client(folder: Path) -> None:
    """The fetch stages' pinned Hub client and its dependencies, for this machine's Python (the
    base image's), as the fetcher stage installs them from the seller's index."""
    pin = Path(__file__).resolve().parents[2] / "bake" / "templates" / "_base" / "hub-client.txt"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(folder), "-r", str(pin)],
        check=True, capture_output=True,
    )


def fetch_build_deps(folder: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(folder), *BUILD_DEPS],
        check=True, capture_output=True,
    )


def write_simple_index(files: Path, root: Path, origin: str = "") -> None:
    """PEP 503: /simple/<normalised name>/ listing that project's files, each link with its
    ``#sha256=`` (as real indexes give it; resolvers put it in their locks).

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
        links = "".join(
            f'<a href="{_link(n, origin, i)}#sha256='
            f'{hashlib.sha256((files / n).read_bytes()).hexdigest()}">{n}</a>\n'
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
def serve_index(root: Path, host: str, auth: tuple[str, str] | None = None,
                port: int = 0) -> Iterator[RunningIndex]:
    """Serve ``root`` (``simple/`` and ``files/``) on ``host``; ``port`` 0 picks a free one, a
    port of an earlier run starts the index again where a stopped one was."""
    log: list[str] = []
    seen: list[Seen] = []
    expected = None
    if auth is not None:
        expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    handler = type("Handler", (_Handler,), {"log": log, "seen": seen, "expected": expected})
    server = ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://{host}:{server.server_address[1]}"
    try:
        yield RunningIndex(f"{origin}/simple", origin, log, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""A local package index (PEP 503 simple pages over plain HTTP) for setup-time attacks.

It serves real sdists that we make here -- packages whose ``setup.py`` runs
during ``pip install`` -- plus the ``setuptools`` and ``wheel`` wheels that pip's
build isolation needs, fetched once from the package index by the host's pip.
The build reaches it through bake's proxy as an ``egress.allow_http`` origin,
so the test also shows plain-HTTP forwarding for an allowed origin.
"""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


def fetch_build_deps(folder: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(folder), *BUILD_DEPS],
        check=True, capture_output=True,
    )


def write_simple_index(files: Path, root: Path) -> None:
    """PEP 503: /simple/<normalised name>/ listing that project's files."""
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
        links = "".join(f'<a href="/files/{n}">{n}</a>\n' for n in names)
        (page / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


@dataclass
class RunningIndex:
    url: str  # http://HOST:PORT/simple
    origin: str  # http://HOST:PORT
    requests: list[str]


class _Handler(SimpleHTTPRequestHandler):
    log: list[str]

    def log_message(self, format: str, *args: object) -> None:
        self.log.append(self.requestline)


@contextmanager
def serve_index(root: Path, host: str) -> Iterator[RunningIndex]:
    log: list[str] = []
    handler = type("Handler", (_Handler,), {"log": log})
    server = ThreadingHTTPServer((host, 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://{host}:{server.server_address[1]}"
    try:
        yield RunningIndex(f"{origin}/simple", origin, log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

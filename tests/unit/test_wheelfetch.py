"""wheelfetch.py, the locked install step's fetcher: exactly the locked files, each checked.

Run as the build step runs it (a script, standard library only) against a local HTTP server
on loopback; the proxy variables are cleared, so it fetches directly."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bake" / "templates" / "_base" / "wheelfetch.py"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(files: list[dict[str, str]], out: Path,
         tmp_path: Path) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "files.json"
    spec.write_text(json.dumps(files))
    return subprocess.run([sys.executable, str(SCRIPT), str(spec), str(out)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def test_the_locked_files_are_fetched_checked_and_logged(served: tuple[Path, str],
                                                         tmp_path: Path) -> None:
    root, origin = served
    (root / "a-1.0-py3-none-any.whl").write_bytes(b"wheel a")
    digest = hashlib.sha256(b"wheel a").hexdigest()
    proc = _run([{"file": "a-1.0-py3-none-any.whl", "url": f"{origin}/a-1.0-py3-none-any.whl",
                  "sha256": digest}], tmp_path / "out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "a-1.0-py3-none-any.whl").read_bytes() == b"wheel a"
    assert f"bake-install: fetched a-1.0-py3-none-any.whl sha256:{digest} 7 bytes" in proc.stdout


def test_other_bytes_fail_naming_the_file_and_both_digests_and_are_not_kept(
        served: tuple[Path, str], tmp_path: Path) -> None:
    root, origin = served
    (root / "a-1.0-py3-none-any.whl").write_bytes(b"evil")
    locked = hashlib.sha256(b"wheel a").hexdigest()
    proc = _run([{"file": "a-1.0-py3-none-any.whl", "url": f"{origin}/a-1.0-py3-none-any.whl",
                  "sha256": locked}], tmp_path / "out", tmp_path)
    assert proc.returncode == 1
    assert (f"bake-install: error: a-1.0-py3-none-any.whl does not match bake.lock: expected "
            f"sha256:{locked}, received sha256:{hashlib.sha256(b'evil').hexdigest()}"
            ) in proc.stdout
    assert not (tmp_path / "out" / "a-1.0-py3-none-any.whl").exists()


@pytest.mark.parametrize("entry", [
    {"file": "../x.whl", "url": "http://h/../x.whl", "sha256": "0" * 64},
    {"file": "x.whl", "url": "http://h/y.whl", "sha256": "0" * 64},
    {"file": "x.whl", "url": "file:///etc/x.whl", "sha256": "0" * 64},
    {"file": "x.whl", "url": "http://h/x.whl", "sha256": "zz"},
    {"file": "x.whl", "url": "http://h/x.whl", "sha256": "0" * 64, "extra": "1"},
])
def test_a_bad_entry_is_refused_before_any_fetch(entry: dict[str, str], tmp_path: Path) -> None:
    proc = _run([entry], tmp_path / "out", tmp_path)
    assert proc.returncode == 2, proc.stdout

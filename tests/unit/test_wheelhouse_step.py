"""bake's wheelhouse download step (``_base/wheelhouse.py``) against a loopback index.

What it promises: only the listed wheels, each checked against its sha256 before it is
linked into ``<wheelhouse>/<sha256>/<file>``; other bytes are never kept; a wheel already
there costs no request; a dead lock URL falls back to the index's project page.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from bake.stacks.choice import Wheel
from bake.stacks.wheelhouse import fetch_list
from bake.templates import BUILTIN_DIR

SCRIPT = BUILTIN_DIR / "_base" / "wheelhouse.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bake_wheelhouse_step", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Index:
    root: Path
    origin: str
    requests: list[str]

    def put(self, name: str, data: bytes) -> Wheel:
        (self.root / "files").mkdir(exist_ok=True)
        (self.root / "files" / name).write_bytes(data)
        project = name.split("-")[0]
        return Wheel(project, name.split("-")[1], name, hashlib.sha256(data).hexdigest(),
                     f"{self.origin}/files/{name}")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    root = tmp_path / "index"
    root.mkdir()
    log: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            log.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Index(root, f"http://127.0.0.1:{server.server_address[1]}", log)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as a module, its /run/secrets a folder of the test's."""
    module = _load()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    monkeypatch.setattr(module, "SECRETS", str(secrets))
    monkeypatch.setattr(module, "ATTEMPTS", 1)
    return module


def _run(step: ModuleType, tmp_path: Path, *wheels: Wheel) -> tuple[int, Path, Path]:
    spec = tmp_path / "wheels.json"
    spec.write_bytes(fetch_list(wheels))
    house, out = tmp_path / "wheelhouse", tmp_path / "stage" / "bake" / "wheelhouse.txt"
    house.mkdir(exist_ok=True)
    code = step.main(["fetch", str(spec), str(house), str(out)])
    return code, house, out


def test_fetches_only_whats_missing_checks_it_and_links_it_by_hash(
        step: ModuleType, index: Index, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a = index.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    b = index.put("beta-2.0-py3-none-any.whl", b"beta bytes")
    code, house, out = _run(step, tmp_path, a, b)
    assert code == 0
    assert (house / a.sha256 / a.file).read_bytes() == b"alpha bytes"
    assert (house / b.sha256 / b.file).read_bytes() == b"beta bytes"
    assert out.read_text().splitlines() == sorted(f"{w.sha256} {w.file}" for w in (a, b))
    assert list((house / ".incoming").iterdir()) == []
    assert "2 downloaded" in capsys.readouterr().out
    index.requests.clear()
    code, _, again = _run(step, tmp_path, a, b)
    assert code == 0 and index.requests == []  # all there: no request at all
    assert again.read_text() == out.read_text()  # the same output: the install step stays cached


def test_other_bytes_under_a_locked_name_are_never_kept(
        step: ModuleType, index: Index, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    locked = index.put("alpha-1.0-py3-none-any.whl", b"the locked bytes")
    (index.root / "files" / locked.file).write_bytes(b"tampered bytes")
    code, house, out = _run(step, tmp_path, locked)
    assert code == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    received = hashlib.sha256(b"tampered bytes").hexdigest()
    assert line == (f"bake-wheels: error: {locked.file} from 127.0.0.1 does not match its "
                    f"locked hash: expected sha256:{locked.sha256}, received sha256:{received}")
    assert not (house / locked.sha256).exists()
    assert list((house / ".incoming").iterdir()) == []
    assert not out.exists()


def test_a_dead_lock_url_falls_back_to_the_indexs_page(
        step: ModuleType, index: Index, tmp_path: Path) -> None:
    a = index.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    b = index.put("beta-2.0-py3-none-any.whl", b"beta bytes")
    simple = index.root / "simple"
    # PEP 503 HTML, with a relative link ...
    (simple / "alpha").mkdir(parents=True)
    (simple / "alpha" / "index.html").write_text(
        f'<html><body><a href="../../files/{a.file}#sha256={a.sha256}">{a.file}</a>'
        "</body></html>")
    # ... and PEP 691 JSON (served as a file: the content type decides).
    (simple / "beta").mkdir()
    (simple / "beta" / "index.json").write_text(json.dumps(
        {"files": [{"filename": b.file, "url": f"/files/{b.file}",
                    "hashes": {"sha256": b.sha256}}]}))
    (Path(step.SECRETS) / "bake_index").write_text(f"{index.origin}/simple\n")
    moved = [Wheel(w.name, w.version, w.file, w.sha256, f"{index.origin}/gone/{w.file}")
             for w in (a, b)]

    real_open = step._open

    def serve_json(url: str, context: object, accept: str | None = None) -> object:
        if url.endswith("/simple/beta/"):
            url += "index.json"
        return real_open(url, context, accept)

    step._open = serve_json
    code, house, _ = _run(step, tmp_path, *moved)
    assert code == 0
    assert (house / a.sha256 / a.file).read_bytes() == b"alpha bytes"
    assert (house / b.sha256 / b.file).read_bytes() == b"beta bytes"
    assert "/simple/alpha/" in index.requests


def test_a_list_bake_did_not_write_is_refused(step: ModuleType, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "wheels.json"
    spec.write_text(json.dumps({"format": 1, "wheels": [
        {"name": "x", "file": "../../x-1.0-py3-none-any.whl", "sha256": "a" * 64,
         "url": "http://127.0.0.1:9/x"}]}))
    house = tmp_path / "wheelhouse"
    house.mkdir()
    assert step.main(["fetch", str(spec), str(house), str(tmp_path / "out")]) == 1
    assert "not a locked wheel" in capsys.readouterr().out
    assert list(house.iterdir()) == []


def test_downloads_a_dead_build_left_are_swept(step: ModuleType, index: Index,
                                                tmp_path: Path) -> None:
    incoming = tmp_path / "wheelhouse" / ".incoming"
    incoming.mkdir(parents=True)
    old, fresh = incoming / "x.part", incoming / "y.part"
    old.write_bytes(b"half")
    fresh.write_bytes(b"in flight")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    code, _, _ = _run(step, tmp_path, index.put("alpha-1.0-py3-none-any.whl", b"a"))
    assert code == 0 and not old.exists() and fresh.exists()


def test_it_runs_isolated_with_no_site_as_the_step_runs_it(index: Index, tmp_path: Path) -> None:
    """``python3 -I -S``: the standard library only, no .pth of any installed package."""
    a = index.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    spec = tmp_path / "wheels.json"
    spec.write_bytes(fetch_list([a]))
    house = tmp_path / "wheelhouse"
    house.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin")}
    proc = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), "fetch", str(spec),
                           str(house), str(tmp_path / "out.txt")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (house / a.sha256 / a.file).read_bytes() == b"alpha bytes"

"""bake's fetch step (``_base/wheelfetch.py``) against a loopback server.

What it promises: only the listed files, each checked against its sha256 before it is
linked into ``<folder>/<sha256>/<file>``; other bytes are never kept; a file in place is
replaced only when asked to fetch again (``refetch``), by bytes just checked; a file already
there costs no request (unless ``refetch``); a relay path is fetched from the relay named
in the ``bake_index`` secret; one line per fetched file.
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
from bake.stacks.wheelhouse import INSTALL_LAYERS, fetch_list, install_parts, install_requirements
from bake.templates import BUILTIN_DIR

SCRIPT = BUILTIN_DIR / "_base" / "wheelfetch.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bake_wheelfetch", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Server:
    root: Path
    origin: str
    requests: list[str]

    def put(self, name: str, data: bytes) -> Wheel:
        (self.root / "files").mkdir(exist_ok=True)
        (self.root / "files" / name).write_bytes(data)
        project, version = name.split("-")[:2]
        return Wheel(project, version, name, hashlib.sha256(data).hexdigest(),
                     f"{self.origin}/files/{name}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    log: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            log.append(self.path)

        def log_message(self, format: str, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{http.server_address[1]}", log)
    finally:
        http.shutdown()
        http.server_close()


@pytest.fixture
def step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as a module, its /run/secrets a folder of the test's."""
    module = _load()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    monkeypatch.setattr(module, "SECRETS", str(secrets))
    monkeypatch.setattr(module, "TRIES", 1)
    return module


def _run(step: ModuleType, tmp_path: Path, *files: Wheel,
         refetch: bool = False) -> tuple[Path, Path]:
    spec = tmp_path / "files.json"
    spec.write_bytes(fetch_list(files, refetch=refetch))
    folder, out = tmp_path / "wheelhouse", tmp_path / "stage" / "bake" / "wheelhouse.txt"
    folder.mkdir(exist_ok=True)
    step.main([str(spec), str(folder), str(out)])
    return folder, out


def test_fetches_only_whats_missing_checks_it_and_links_it_by_hash(
        step: ModuleType, server: Server, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a = server.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    b = server.put("beta-2.0-py3-none-any.whl", b"beta bytes")
    folder, out = _run(step, tmp_path, a, b)
    assert (folder / a.sha256 / a.file).read_bytes() == b"alpha bytes"
    assert (folder / b.sha256 / b.file).read_bytes() == b"beta bytes"
    assert out.read_text().splitlines() == sorted(f"{w.sha256} {w.file}" for w in (a, b))
    assert list((folder / ".incoming").iterdir()) == []
    logged = capsys.readouterr().out
    # One line per file, as the build's log keeps it (reconciled with the lock).
    assert f"bake-install: fetched {a.file} sha256:{a.sha256} 11 bytes from 127.0.0.1" in logged
    assert "2 fetched" in logged
    server.requests.clear()
    _, again = _run(step, tmp_path, a, b)
    assert server.requests == []  # all there: no request at all
    assert again.read_text() == out.read_text()  # the same output: the install step stays cached


def test_refetch_checks_every_file_again_and_mends_a_changed_copy(
        step: ModuleType, server: Server, tmp_path: Path) -> None:
    a = server.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    folder, _ = _run(step, tmp_path, a)
    kept = folder / a.sha256 / a.file
    kept.write_bytes(b"rotted on disk")  # what no step of bake's writes, but a disk may
    server.requests.clear()
    _run(step, tmp_path, a)
    assert server.requests == [] and kept.read_bytes() == b"rotted on disk"  # not looked at
    _run(step, tmp_path, a, refetch=True)  # bake build --no-cache
    assert server.requests == [f"/files/{a.file}"]
    assert kept.read_bytes() == b"alpha bytes"
    # ... and other bytes under the name fail, leaving the good ones in place.
    (server.root / "files" / a.file).write_bytes(b"tampered")
    with pytest.raises(step.Failed, match=r"does not match bake\.lock"):
        _run(step, tmp_path, a, refetch=True)
    assert kept.read_bytes() == b"alpha bytes"


def test_other_bytes_under_a_locked_name_are_never_kept(
        step: ModuleType, server: Server, tmp_path: Path) -> None:
    locked = server.put("alpha-1.0-py3-none-any.whl", b"the locked bytes")
    (server.root / "files" / locked.file).write_bytes(b"tampered bytes")
    with pytest.raises(step.Failed) as failed:
        _run(step, tmp_path, locked)
    received = hashlib.sha256(b"tampered bytes").hexdigest()
    assert str(failed.value) == (
        f"error: {locked.file} does not match bake.lock: expected sha256:{locked.sha256}, "
        f"received sha256:{received} (14 bytes from 127.0.0.1:"
        f"{server.origin.rsplit(':', 1)[1]})")
    folder = tmp_path / "wheelhouse"
    assert not (folder / locked.sha256).exists()
    assert list((folder / ".incoming").iterdir()) == []


def test_a_relay_path_is_fetched_from_the_relay_in_the_secret(
        step: ModuleType, server: Server, tmp_path: Path) -> None:
    a = server.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    (Path(step.SECRETS) / "bake_index").write_text(f"{server.origin}/bake-index/simple/\n")
    relayed = Wheel(a.name, a.version, a.file, a.sha256, f"/files/{a.file}")
    folder, _ = _run(step, tmp_path, relayed)
    assert (folder / a.sha256 / a.file).read_bytes() == b"alpha bytes"
    assert server.requests == [f"/files/{a.file}"]


def test_a_missing_file_is_one_line_and_no_retry(step: ModuleType, server: Server,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step, "TRIES", 3)
    gone = Wheel("alpha", "1.0", "alpha-1.0-py3-none-any.whl", "a" * 64,
                 f"{server.origin}/files/alpha-1.0-py3-none-any.whl")
    with pytest.raises(step.Failed, match="answered HTTP 404"):
        _run(step, tmp_path, gone)
    assert len(server.requests) == 1


def test_a_list_bake_did_not_write_is_refused(step: ModuleType, tmp_path: Path) -> None:
    spec = tmp_path / "files.json"
    spec.write_text(json.dumps({"format": 1, "refetch": False, "files": [
        {"file": "../../x-1.0-py3-none-any.whl", "sha256": "a" * 64,
         "url": "http://127.0.0.1:9/x"}]}))
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    with pytest.raises(step.Usage, match="bad entry"):
        step.main([str(spec), str(folder), str(tmp_path / "out")])
    assert list(folder.iterdir()) == []


def test_downloads_a_dead_build_left_are_swept(step: ModuleType, server: Server,
                                               tmp_path: Path) -> None:
    incoming = tmp_path / "wheelhouse" / ".incoming"
    incoming.mkdir(parents=True)
    old, fresh = incoming / "x.part", incoming / "y.part"
    old.write_bytes(b"half")
    fresh.write_bytes(b"in flight")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    _run(step, tmp_path, server.put("alpha-1.0-py3-none-any.whl", b"a"))
    assert not old.exists() and fresh.exists()


def test_it_runs_isolated_with_no_site_as_the_step_runs_it(server: Server,
                                                           tmp_path: Path) -> None:
    """``python3 -I -S``: the standard library only, no .pth of any installed package."""
    a = server.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    spec = tmp_path / "files.json"
    spec.write_bytes(fetch_list([a]))
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin")}
    proc = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), str(spec), str(folder),
                           str(tmp_path / "out.txt")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (folder / a.sha256 / a.file).read_bytes() == b"alpha bytes"
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    proc = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), str(bad), str(folder),
                           str(tmp_path / "out.txt")],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout.startswith("bake-install: error:")


@pytest.mark.parametrize("entry", [
    {"file": "../x.whl", "url": "http://h/../x.whl", "sha256": "0" * 64},
    {"file": "x.whl", "url": "http://h/y.whl", "sha256": "0" * 64},
    {"file": "x.whl", "url": "file:///etc/x.whl", "sha256": "0" * 64},
    {"file": "x.whl", "url": "http://h/x.whl", "sha256": "zz"},
    {"file": "x.whl", "url": "http://h/x.whl", "sha256": "0" * 64, "extra": "1"},
])
def test_a_bad_entry_is_refused_before_any_fetch(entry: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "files.json"
    spec.write_text(json.dumps({"format": 1, "refetch": False, "files": [entry]}))
    folder = tmp_path / "folder"
    folder.mkdir()
    proc = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), str(spec), str(folder),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 2, proc.stdout
    assert list(folder.iterdir()) == []


# -- the install layers ---------------------------------------------------------------------------


def test_wheels_are_dealt_out_largest_first_to_the_lightest_layer(step: ModuleType) -> None:
    sizes = {"a" * 64: 100, "b" * 64: 60, "c" * 64: 50, "d" * 64: 10, "e" * 64: 10}
    assert step.layers(sizes, 2) == {"a" * 64: 0, "b" * 64: 1, "c" * 64: 1, "d" * 64: 0,
                                     "e" * 64: 0}
    assert step.layers(sizes, 1) == dict.fromkeys(sizes, 0)
    # A tie goes to the lower layer, and among equal sizes the lower sha256 goes first.
    assert step.layers({"f" * 64: 5, "e" * 64: 5}, 2) == {"e" * 64: 0, "f" * 64: 1}


def test_the_install_list_is_split_by_the_checked_files_sizes(
        step: ModuleType, server: Server, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    big = server.put("big-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", b"B" * 3000)
    mid = server.put("mid-1.0-py3-none-any.whl", b"M" * 2000)
    low = server.put("low-1.0-py3-none-any.whl", b"L" * 1500)
    tiny = server.put("tiny-1.0-py3-none-any.whl", b"T" * 10)
    wheels = (big, mid, low, tiny)
    spec = tmp_path / "files.json"
    spec.write_bytes(fetch_list(wheels))
    requirements = tmp_path / "wheels.txt"
    requirements.write_bytes(install_requirements(wheels))
    folder, out = tmp_path / "wheelhouse", tmp_path / "stage" / "bake" / "wheelhouse.txt"
    folder.mkdir()
    step.main([str(spec), str(folder), str(out), str(requirements), "2"])
    parts = [(out.parent / f"install-{i}.txt").read_text() for i in range(2)]
    # big alone (3000) against mid + low (3500); tiny to the lighter: big's layer.
    assert parts[0] == install_requirements((big, tiny)).decode()
    assert parts[1] == install_requirements((mid, low)).decode()
    assert "installed in 2 layers: 0.0 MB, 0.0 MB" in capsys.readouterr().out
    # Every line of the list in exactly one layer, both lines of a wheel in the same one.
    assert sorted("".join(parts).splitlines()) == sorted(requirements.read_text().splitlines())
    # The same wheels, the same layers (the install steps stay cached), with no request.
    server.requests.clear()
    step.main([str(spec), str(folder), str(out), str(requirements), "2"])
    assert [(out.parent / f"install-{i}.txt").read_text() for i in range(2)] == parts
    assert server.requests == []
    # What the steps mount is what install_parts names.
    assert [f"/bake/install-{i}.txt" for i in range(2)] == list(install_parts(len(wheels)))


@pytest.mark.parametrize("line", ["requests==2.0\n", f"x==1 --hash=sha256:{'0' * 64}\n"])
def test_an_install_line_for_no_listed_file_is_refused(
        step: ModuleType, server: Server, tmp_path: Path, line: str) -> None:
    wheel = server.put("alpha-1.0-py3-none-any.whl", b"alpha bytes")
    spec = tmp_path / "files.json"
    spec.write_bytes(fetch_list((wheel,)))
    requirements = tmp_path / "wheels.txt"
    requirements.write_bytes(install_requirements((wheel,)) + line.encode())
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    with pytest.raises(step.Usage, match="names no one listed file"):
        step.main([str(spec), str(folder), str(tmp_path / "out.txt"), str(requirements), "2"])


def test_install_parts_are_one_per_wheel_up_to_the_layers() -> None:
    assert install_parts(1) == ("/bake/install-0.txt",)
    assert len(install_parts(2)) == len(install_parts(40)) == INSTALL_LAYERS == 2

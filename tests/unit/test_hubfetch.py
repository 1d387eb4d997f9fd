"""The Hub fetch step (templates/_base/hubfetch.py) as setup runs it: the real client, our Hub."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import Generated, HubRepo, RunningHub, start_hub

HUBFETCH = Path(__file__).resolve().parents[2] / "bake" / "templates" / "_base" / "hubfetch.py"
TOKEN = "hf_fetch_test_token_5a4b3c2d1e0f"

MODEL_FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "model.safetensors": Generated(3 * 1024 * 1024 + 17, seed=7),
    "tokenizer.json": b"{}\n",
    "extra/notes.txt": b"notes\n",
}
DATA_FILES = {
    "README.md": b"# data\n",
    "data/train.csv": b"text,label\nok,1\n",
    "data/validation.csv": b"text,label\nbad,0\n",
}


@pytest.fixture(scope="module")
def hub() -> Iterator[RunningHub]:
    repos = [
        HubRepo("model", "org/model", branches={"main": MODEL_FILES}, tags={"v1.0": "main"}),
        HubRepo("dataset", "org/data", branches={"main": DATA_FILES}),
        HubRepo("model", "org/gated", branches={"main": MODEL_FILES}, gated=True),
    ]
    with start_hub(repos, tokens=[TOKEN]) as running:
        yield running


def _spec(
    tmp_path: Path,
    hub: RunningHub,
    repo: str = "org/model",
    *,
    kind: str = "model",
    revision: str = "main",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> Path:
    doc = {
        "kind": kind,
        "repo": repo,
        "revision": revision,
        "commit": hub.head(repo, revision, kind=kind),  # type: ignore[arg-type]
        "include": include or [],
        "exclude": exclude or [],
    }
    path = tmp_path / f"spec-{hashlib.sha1(json.dumps(doc).encode()).hexdigest()[:8]}.json"
    path.write_text(json.dumps(doc))
    return path


def _env(
    tmp_path: Path, hf_home: Path, *, endpoint: str | None, token: str | None
) -> dict[str, str]:
    # Built from nothing: no HF_*, proxy or token variable leaks in from the outside.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "HF_HOME": str(hf_home),
        "BAKE_FETCH_TOKEN_FILE": str(tmp_path / "no-token-file"),
    }
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if token:
        token_file = tmp_path / "hf_token"
        token_file.write_text(token + "\n")
        env["BAKE_FETCH_TOKEN_FILE"] = str(token_file)
    return env


def _run(
    args: list[str], env: dict[str, str], *, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", code] if code else [sys.executable, str(HUBFETCH), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def fetch(
    tmp_path: Path, hub: RunningHub, spec: Path, hf_home: Path, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    return _run(["fetch", str(spec)], _env(tmp_path, hf_home, endpoint=hub.endpoint, token=token))


def check(tmp_path: Path, hf_home: Path, *specs: Path) -> subprocess.CompletedProcess[str]:
    # No endpoint at all: the check runs in the finished image, offline.
    return _run(["check", *map(str, specs)], _env(tmp_path, hf_home, endpoint=None, token=None))


def _snapshot(hf_home: Path, folder: str, commit: str) -> Path:
    return hf_home / "hub" / folder / "snapshots" / commit


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a layer tar records about a tree: type, mode, mtime, size, bytes, link target."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", st.st_mtime_ns, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size, digest)
    return out


def test_fetch_then_check(tmp_path: Path, hub: RunningHub) -> None:
    spec = _spec(tmp_path, hub, include=["config.json", "*.safetensors"])
    hf_home = tmp_path / "hf"
    done = fetch(tmp_path, hub, spec, hf_home)
    assert done.returncode == 0, done.stderr
    commit = hub.head("org/model")
    label = f"bake-fetch: model org/model@{commit[:7]}"
    assert f"{label}: 2 files, 3.1 MB to fetch" in done.stdout
    assert f"{label}: 2/2 files, 3.1 MB of 3.1 MB" in done.stdout
    assert f"{label}: done, 2 files" in done.stdout
    # Include patterns honoured: nothing else was downloaded.
    snapshot = _snapshot(hf_home, "models--org--model", commit)
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert (snapshot / "config.json").read_bytes() == MODEL_FILES["config.json"]
    assert (hf_home / "hub" / "models--org--model" / "refs" / "main").read_text() == commit
    assert not (hf_home / "hub" / ".locks").exists()
    ok = check(tmp_path, hf_home, spec)
    assert ok.returncode == 0, ok.stderr
    assert "2 files ok (loads offline with huggingface_hub" in ok.stdout


def test_a_dataset_with_include_and_exclude(tmp_path: Path, hub: RunningHub) -> None:
    spec = _spec(tmp_path, hub, "org/data", kind="dataset", include=["data/*"], exclude=["*train*"])
    hf_home = tmp_path / "hf"
    assert fetch(tmp_path, hub, spec, hf_home).returncode == 0
    snapshot = _snapshot(hf_home, "datasets--org--data", hub.head("org/data", kind="dataset"))
    assert [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.*")] == [
        "data/validation.csv"
    ]
    assert check(tmp_path, hf_home, spec).returncode == 0


def test_two_fetches_give_byte_identical_trees(tmp_path: Path, hub: RunningHub) -> None:
    spec = _spec(tmp_path, hub, revision="v1.0")
    first, second = tmp_path / "hf-a", tmp_path / "hf-b"
    assert fetch(tmp_path, hub, spec, first).returncode == 0
    assert fetch(tmp_path, hub, spec, second).returncode == 0
    tree = _tree(first)
    assert tree == _tree(second)
    assert {entry[1] if entry[0] == "link" else entry[2] for entry in tree.values()} == {
        1_000_000_000
    }
    assert {entry[1] for entry in tree.values() if entry[0] == "file"} == {0o644}
    assert {entry[1] for entry in tree.values() if entry[0] == "dir"} == {0o755}
    assert not [name for name in tree if name.endswith((".incomplete", ".lock", ".tmp"))]
    # Only the tag the job named is a ref: refs/main would claim a branch position never seen.
    refs = first / "hub" / "models--org--model" / "refs"
    assert [p.name for p in refs.iterdir()] == ["v1.0"]


def test_the_token_file_opens_a_gated_repo_and_goes_nowhere(
    tmp_path: Path, hub: RunningHub
) -> None:
    spec = _spec(tmp_path, hub, "org/gated")
    refused = fetch(tmp_path, hub, spec, tmp_path / "hf-none")
    assert refused.returncode == 1
    assert "the repo is gated; set HF_TOKEN in the seller's environment" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1  # one line, no traceback

    wrong = fetch(tmp_path, hub, spec, tmp_path / "hf-wrong", token="hf_wrong_token_000")
    assert wrong.returncode == 1 and "rejected the token" in wrong.stderr
    assert "hf_wrong_token_000" not in wrong.stdout + wrong.stderr

    hub.clear_requests()
    hf_home = tmp_path / "hf"
    done = fetch(tmp_path, hub, spec, hf_home, token=TOKEN)
    assert done.returncode == 0, done.stderr
    assert hub.requests and all(r.authorized for r in hub.requests)
    assert "(with token)" in done.stdout
    assert TOKEN not in done.stdout + done.stderr
    for path in hf_home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert check(tmp_path, hf_home, spec).returncode == 0


def test_check_names_a_missing_file(tmp_path: Path, hub: RunningHub) -> None:
    spec = _spec(tmp_path, hub)
    hf_home = tmp_path / "hf"
    assert fetch(tmp_path, hub, spec, hf_home).returncode == 0
    snapshot = _snapshot(hf_home, "models--org--model", hub.head("org/model"))
    (snapshot / "extra" / "notes.txt").resolve().unlink()  # the blob: the link now dangles
    failed = check(tmp_path, hf_home, spec)
    assert failed.returncode == 1
    assert "missing file 'extra/notes.txt'" in failed.stderr
    (snapshot / "extra" / "notes.txt").unlink()
    (snapshot / "tokenizer.json").unlink()
    failed = check(tmp_path, hf_home, spec)
    assert "missing file 'extra/notes.txt'" in failed.stderr  # the first, in order
    other = _spec(tmp_path, hub, include=["*.json"])
    failed = check(tmp_path, hf_home, other)
    assert failed.returncode == 1 and "no fetch with these patterns" in failed.stderr


def test_the_cache_loads_offline_as_from_pretrained_does(tmp_path: Path, hub: RunningHub) -> None:
    hf_home = tmp_path / "hf"
    spec = _spec(tmp_path, hub, include=["*.json", "*.safetensors"])
    assert fetch(tmp_path, hub, spec, hf_home).returncode == 0
    data_spec = _spec(tmp_path, hub, "org/data", kind="dataset")
    assert fetch(tmp_path, hub, data_spec, hf_home).returncode == 0
    # The calls transformers and datasets make: no revision, no cache_dir, offline.  Only some
    # of the model's files were baked, and the snapshot still counts as complete.
    code = (
        "import os\n"
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        "folder = snapshot_download('org/model')\n"
        "config = hf_hub_download('org/model', 'config.json')\n"
        "data = snapshot_download('org/data', repo_type='dataset')\n"
        "assert config.startswith(os.environ['HF_HOME'])\n"
        "print(sorted(os.listdir(folder)), open(config).read().strip(), sorted(os.listdir(data)))\n"
    )
    env = _env(tmp_path, hf_home, endpoint=f"http://127.0.0.1:{_closed_port()}", token=None)
    env["HF_HUB_OFFLINE"] = "1"
    loaded = _run([], env, code=code)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == (
        "['config.json', 'model.safetensors', 'tokenizer.json'] "
        '{"model_type": "bert"} '
        "['README.md', 'data']"
    )


def test_an_include_pattern_that_matches_nothing_fails(tmp_path: Path, hub: RunningHub) -> None:
    spec = _spec(tmp_path, hub, include=["*.json", "*.bin"])
    failed = fetch(tmp_path, hub, spec, tmp_path / "hf")
    assert failed.returncode == 1
    assert failed.stderr.strip() == (
        f"bake-fetch: error: model org/model@{hub.head('org/model')[:7]}: "
        "include pattern '*.bin' matches no file"
    )


def test_the_proxy_variables_are_honoured(tmp_path: Path, hub: RunningHub) -> None:
    env = _env(tmp_path, tmp_path / "hf", endpoint=hub.endpoint, token=None)
    env["HTTP_PROXY"] = env["HTTPS_PROXY"] = f"http://127.0.0.1:{_closed_port()}"
    hub.clear_requests()
    failed = _run(["fetch", str(_spec(tmp_path, hub))], env)
    assert failed.returncode == 1 and "cannot reach the Hub at" in failed.stderr
    assert hub.requests == []  # nothing went around the (dead) proxy


def test_bad_arguments_and_specs_exit_2(tmp_path: Path, hub: RunningHub) -> None:
    env = _env(tmp_path, tmp_path / "hf", endpoint=hub.endpoint, token=None)
    assert _run([], env).returncode == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "model", "repo": "org/model", "commit": "a" * 40, "x": 1}))
    failed = _run(["fetch", str(bad)], env)
    assert failed.returncode == 2 and "unknown keys ['x']" in failed.stderr
    bad.write_text(
        json.dumps(
            {"kind": "model", "repo": "org/model", "commit": "a" * 40, "revision": "../../etc"}
        )
    )
    assert _run(["fetch", str(bad)], env).returncode == 2
    del env["HF_HOME"]
    failed = _run(["fetch", str(_spec(tmp_path, hub))], env)
    assert failed.returncode == 2 and "set HF_HOME" in failed.stderr


def test_the_server_streams_a_large_generated_file() -> None:
    # The benchmark's model: 200 MB made on the fly, with the Hub's LFS headers and ranges.
    big = Generated(200 * 1024 * 1024 + 5, seed=3)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with start_hub([HubRepo("model", "org/big", branches={"main": {"weights.bin": big}})]) as hub:
        url = f"{hub.endpoint}/org/big/resolve/main/weights.bin"
        with opener.open(urllib.request.Request(url, method="HEAD")) as head:
            assert head.headers["Content-Length"] == head.headers["X-Linked-Size"] == str(big.size)
            assert len(head.headers["X-Linked-Etag"].strip('"')) == 64
            assert head.headers["X-Repo-Commit"] == hub.head("org/big")
        edge = 1024 * 1024
        ranged = urllib.request.Request(url, headers={"Range": f"bytes={edge - 6}-{edge + 9}"})
        with opener.open(ranged) as part:
            assert part.status == 206
            assert part.headers["Content-Range"] == f"bytes {edge - 6}-{edge + 9}/{big.size}"
            assert part.read() == big.chunk(0)[-6:] + big.chunk(1)[:10]
        tail = urllib.request.Request(url, headers={"Range": "bytes=-5"})
        with opener.open(tail) as part:
            assert part.read() == big.chunk(200)
        # bake's egress proxy asks for one request per connection; the answer must say so too.
        closing = urllib.request.Request(url, method="HEAD", headers={"Connection": "close"})
        with opener.open(closing) as head:
            assert head.headers["Connection"] == "close"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port

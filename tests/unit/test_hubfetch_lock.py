"""A locked fetch (hubfetch.py with ``files`` from bake.lock): exactly the locked files, each
checked against its digest before the step ends; other bytes fail the step naming both digests."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.hub import lock_repo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import Generated, HubRepo, RunningHub, start_hub

from .test_hubfetch import MODEL_FILES, check, fetch


@pytest.fixture
def hub() -> Iterator[RunningHub]:
    with start_hub([HubRepo("model", "org/model", branches={"main": MODEL_FILES})]) as running:
        yield running


def _locked_spec(tmp_path: Path, hub: RunningHub, include: list[str]) -> tuple[Path, dict]:
    snap = lock_repo("model", "org/model", "main", include, [], endpoint=hub.endpoint, token=None)
    doc = {
        "kind": "model", "repo": "org/model", "revision": "main", "commit": snap.commit,
        "include": include, "exclude": [],
        "files": [{"path": f.path, "size": f.size,
                   **({"sha256": f.sha256} if f.sha256 else {"blob": f.blob_id})}
                  for f in snap.files],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_a_locked_fetch_gets_exactly_the_locked_files_without_listing(
    tmp_path: Path, hub: RunningHub
) -> None:
    spec, doc = _locked_spec(tmp_path, hub, ["*.json", "*.safetensors"])
    hub.clear_requests()
    done = fetch(tmp_path, hub, spec, tmp_path / "hf")
    assert done.returncode == 0, done.stderr
    assert "checked against bake.lock" in done.stdout
    paths = [r.path for r in hub.requests]
    assert not any("/api/" in p for p in paths), paths  # no repo info, no tree listing
    assert {p.split("/resolve/")[1].split("/", 1)[1] for p in paths} == {
        f["path"] for f in doc["files"]}
    checked = check(tmp_path, tmp_path / "hf", spec)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(("path", "kind"), [("model.safetensors", "sha256"),
                                            ("config.json", "git-blob")])
def test_other_bytes_under_a_locked_name_fail_the_fetch_naming_both_digests(
    tmp_path: Path, hub: RunningHub, path: str, kind: str
) -> None:
    spec, doc = _locked_spec(tmp_path, hub, ["*.json", "*.safetensors"])
    expected = next(f for f in doc["files"] if f["path"] == path)
    original = MODEL_FILES[path]
    tampered: bytes | Generated = (
        Generated(original.size, seed=8) if isinstance(original, Generated)
        else original.replace(b"bert", b"evil"))
    hub.tamper("org/model", path, tampered)
    done = fetch(tmp_path, hub, spec, tmp_path / "hf")
    assert done.returncode == 1
    line = done.stderr.strip()
    digest = expected.get("sha256") or expected["blob"]
    assert f"'{path}' does not match bake.lock: expected {kind}:{digest}" in line
    assert "received " + kind + ":" in line and line.count(kind + ":") == 2


def test_a_locked_path_outside_the_repo_is_refused(tmp_path: Path, hub: RunningHub) -> None:
    spec, doc = _locked_spec(tmp_path, hub, ["*.json"])
    for bad in ("../etc/passwd", "/abs.json", "a//b.json"):
        doc["files"] = [{"path": bad, "size": 1, "blob": "0" * 40}]
        spec.write_text(json.dumps(doc))
        done = fetch(tmp_path, hub, spec, tmp_path / "hf")
        assert done.returncode == 2 and "inside the repo" in done.stderr, (bad, done.stderr)

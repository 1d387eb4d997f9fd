"""Hub locking (bake.hub.lock_repo) and the metadata endpoints of tests/hubserver.py, with the real
huggingface_hub client: the answers have the shapes the client parses from the real Hub."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.errors import HubError, UnreachableError
from bake.hub import lock_repo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import HubRepo, RunningHub, start_hub

from .test_hub import DATA_FILES, MODEL_FILES, TOKEN, _closed_port, clean_hf_env  # noqa: F401


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[RunningHub]:
    repos = [
        HubRepo("model", "org/model", branches={"main": MODEL_FILES}, tags={"v1.0": "main"}),
        HubRepo("dataset", "org/data", branches={"main": DATA_FILES}),
        HubRepo("model", "org/gated", branches={"main": MODEL_FILES}, gated=True),
    ]
    with start_hub(repos, tokens=[TOKEN]) as running:
        yield running


def test_lock_repo_gives_commit_and_every_selected_files_digest_in_one_request(
    hub: RunningHub,
) -> None:
    hub.clear_requests()
    snap = lock_repo("model", "org/model", "main", ["*.json", "*.safetensors"], [],
                     endpoint=hub.endpoint, token=None)
    assert len(hub.requests) == 1 and "blobs=" in hub.requests[0].path
    assert snap.commit == hub.head("org/model")
    by_path = {f.path: f for f in snap.files}
    assert list(by_path) == ["config.json", "model.safetensors", "tokenizer.json"]
    weights = by_path["model.safetensors"]  # Git LFS: sha256 of the bytes
    assert weights.sha256 == _sha(MODEL_FILES["model.safetensors"])
    assert weights.size == len(MODEL_FILES["model.safetensors"])
    config = by_path["config.json"]  # plain git: the blob id is the digest
    assert config.sha256 is None and config.blob_id == _blob(MODEL_FILES["config.json"])
    assert config.size == len(MODEL_FILES["config.json"])


def test_lock_repo_follows_the_branch_and_a_commit_stays(hub: RunningHub) -> None:
    before = lock_repo("model", "org/model", "main", [], [], endpoint=hub.endpoint, token=None)
    changed = {**MODEL_FILES, "config.json": b'{"v": 2}\n'}
    moved = hub.commit("org/model", "main", changed)
    after = lock_repo("model", "org/model", "main", [], [], endpoint=hub.endpoint, token=None)
    pinned = lock_repo("model", "org/model", before.commit, [], [], endpoint=hub.endpoint,
                       token=None)
    assert after.commit == moved != before.commit
    assert pinned == before
    digest = {f.path: f.blob_id for f in after.files}["config.json"]
    assert digest == _blob(changed["config.json"])


def test_lock_repo_pattern_errors_are_spec_errors(hub: RunningHub) -> None:
    with pytest.raises(HubError, match=r"include pattern '\*\.bin' matches no file"):
        lock_repo("model", "org/model", "main", ["*.bin"], [], endpoint=hub.endpoint, token=None)
    with pytest.raises(HubError, match="gated"):
        lock_repo("model", "org/gated", "main", [], [], endpoint=hub.endpoint, token=None)
    snap = lock_repo("model", "org/gated", "main", [], [], endpoint=hub.endpoint, token=TOKEN)
    assert snap.commit == hub.head("org/gated")


def test_an_unreachable_hub_is_an_unreachable_error_naming_it() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(UnreachableError) as caught:
        lock_repo("model", "org/model", "main", [], [], endpoint=endpoint, token=None, timeout=2)
    assert caught.value.what == endpoint
    assert caught.value.exit_code == 1


# -- the server's metadata endpoints, as the client reads them -----------------------------------


def test_files_metadata_siblings_carry_size_blob_id_and_lfs(hub: RunningHub) -> None:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub.endpoint, token=False).model_info("org/model", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(MODEL_FILES)
    lfs = siblings["model.safetensors"]
    assert lfs.lfs is not None and lfs.lfs.sha256 == _sha(MODEL_FILES["model.safetensors"])
    assert lfs.lfs.size == lfs.size == 4096 and lfs.lfs.pointer_size > 0
    plain = siblings["tokenizer.json"]
    assert plain.lfs is None and plain.blob_id == _blob(b"{}\n") and plain.size == 3
    # Without files_metadata the Hub lists names only.
    bare = HfApi(endpoint=hub.endpoint, token=False).model_info("org/model")
    assert all(s.size is None and s.blob_id is None for s in bare.siblings or [])


def test_tree_expand_and_paths_info(hub: RunningHub) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    api = HfApi(endpoint=hub.endpoint, token=False)
    head = hub.head("org/data", kind="dataset")
    tree = list(api.list_repo_tree("org/data", repo_type="dataset", recursive=True, expand=True))
    files = {e.path: e for e in tree if isinstance(e, RepoFile)}
    folders = [e for e in tree if isinstance(e, RepoFolder)]
    assert set(files) == set(DATA_FILES) and [f.path for f in folders] == ["data"]
    entry = files["data/train.csv"]
    assert entry.blob_id == _blob(DATA_FILES["data/train.csv"])
    assert entry.last_commit is not None and entry.last_commit.oid == head
    assert entry.security is not None and entry.security.safe
    plain = list(api.list_repo_tree("org/data", repo_type="dataset", recursive=True))
    assert all(getattr(e, "last_commit", None) is None for e in plain)

    infos = api.get_paths_info("org/data", ["README.md", "data", "missing.txt"],
                               repo_type="dataset", revision=head)
    assert [type(i).__name__ for i in infos] == ["RepoFile", "RepoFolder"]
    assert infos[0].path == "README.md" and infos[0].blob_id == _blob(DATA_FILES["README.md"])
    expanded = api.get_paths_info("org/model", ["model.safetensors"], expand=True)
    assert isinstance(expanded[0], RepoFile) and expanded[0].lfs is not None
    assert expanded[0].lfs.sha256 == _sha(MODEL_FILES["model.safetensors"])
    assert expanded[0].last_commit is not None

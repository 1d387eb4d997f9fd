"""bake.hub against tests/hubserver.py on loopback, with the real huggingface_hub client."""

from __future__ import annotations

import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.errors import BakeError, HubError
from bake.hub import is_commit, list_matching_files, resolve_revision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import HubRepo, RunningHub, start_hub

TOKEN = "hf_unit_test_token_9f8e7d6c5b4a"
BAD_TOKEN = "hf_not_the_right_token_0123456789"

MODEL_FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "model.safetensors": b"\0" * 4096,
    "tokenizer.json": b"{}\n",
    "extra/notes.txt": b"notes\n",
}
DATA_FILES = {
    "README.md": b"# data\n",
    "data/train.csv": b"text,label\nok,1\n",
    "data/validation.csv": b"text,label\nbad,0\n",
}

# Variables that would change what the client does if they leaked in from the outside.
_FOREIGN_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


@pytest.fixture(autouse=True)
def clean_hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    # The client reads these at import and builds one shared HTTP session (with the proxy
    # variables of that moment): pin them and start a fresh session from this clean environment.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    close_session()
    yield
    close_session()


@pytest.fixture
def hub() -> Iterator[RunningHub]:
    repos = [
        HubRepo("model", "org/model", branches={"main": MODEL_FILES}, tags={"v1.0": "main"}),
        HubRepo("dataset", "org/data", branches={"main": DATA_FILES}),
        HubRepo("model", "org/gated", branches={"main": MODEL_FILES}, gated=True),
        HubRepo("model", "org/private", branches={"main": MODEL_FILES}, private=True),
    ]
    with start_hub(repos, tokens=[TOKEN]) as running:
        yield running


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _full_text(err: BaseException) -> str:
    return str(err) + repr(err) + "".join(traceback.format_exception(err))


# -- resolve_revision ---------------------------------------------------------------------------


def test_branch_and_tag_resolve_to_the_commit(hub: RunningHub) -> None:
    head = hub.head("org/model")
    assert is_commit(head)
    assert resolve_revision("model", "org/model", "main", endpoint=hub.endpoint, token=None) == head
    assert resolve_revision("model", "org/model", "v1.0", endpoint=hub.endpoint, token=None) == head
    data = resolve_revision("dataset", "org/data", "main", endpoint=hub.endpoint, token=None)
    assert data == hub.head("org/data") != head
    assert all(not r.authorized for r in hub.requests)  # no token of our own was sent


def test_a_commit_is_returned_without_any_request(hub: RunningHub) -> None:
    commit = hub.head("org/model")
    hub.clear_requests()
    assert (
        resolve_revision("model", "org/model", commit, endpoint=hub.endpoint, token=None) == commit
    )
    assert hub.requests == []


def test_the_commit_follows_a_moving_branch(hub: RunningHub) -> None:
    before = resolve_revision("model", "org/model", "main", endpoint=hub.endpoint, token=None)
    again = resolve_revision("model", "org/model", "main", endpoint=hub.endpoint, token=None)
    moved = hub.commit("org/model", "main", {**MODEL_FILES, "config.json": b'{"v": 2}\n'})
    after = resolve_revision("model", "org/model", "main", endpoint=hub.endpoint, token=None)
    assert before == again
    assert after == moved != before
    # The tag stays where it was.
    tag = resolve_revision("model", "org/model", "v1.0", endpoint=hub.endpoint, token=None)
    assert tag == before


def test_a_missing_repo_is_a_usage_error_naming_it(hub: RunningHub) -> None:
    with pytest.raises(HubError) as caught:
        resolve_revision("model", "org/nope", "main", endpoint=hub.endpoint, token=None)
    assert caught.value.exit_code == 2
    assert caught.value.repo == "org/nope"
    assert "org/nope" in str(caught.value) and "not found" in str(caught.value)
    # A dataset is not a model: the kind is part of the name.
    with pytest.raises(HubError, match="model repo 'org/data' not found"):
        resolve_revision("model", "org/data", "main", endpoint=hub.endpoint, token=None)


def test_a_missing_revision_names_repo_and_revision(hub: RunningHub) -> None:
    with pytest.raises(HubError) as caught:
        resolve_revision("model", "org/model", "no-such-branch", endpoint=hub.endpoint, token=None)
    assert caught.value.exit_code == 2
    assert "'no-such-branch'" in str(caught.value) and "'org/model'" in str(caught.value)


def test_gated_repo_without_token_says_what_to_set(hub: RunningHub) -> None:
    with pytest.raises(HubError) as caught:
        resolve_revision("model", "org/gated", "main", endpoint=hub.endpoint, token=None)
    assert caught.value.exit_code == 2
    assert "org/gated" in str(caught.value)
    assert "is gated; set HF_TOKEN in the seller's environment" in str(caught.value)


def test_gated_repo_with_the_token(hub: RunningHub) -> None:
    commit = resolve_revision("model", "org/gated", "main", endpoint=hub.endpoint, token=TOKEN)
    assert commit == hub.head("org/gated")
    files = list_matching_files(
        "model", "org/gated", commit, ["*.json"], [], endpoint=hub.endpoint, token=TOKEN
    )
    assert files == ["config.json", "tokenizer.json"]
    assert all(r.authorized for r in hub.requests)


def test_a_bad_token_is_rejected_and_never_shown(hub: RunningHub) -> None:
    with pytest.raises(HubError) as caught:
        resolve_revision("model", "org/gated", "main", endpoint=hub.endpoint, token=BAD_TOKEN)
    assert caught.value.exit_code == 2
    assert "rejected HF_TOKEN" in str(caught.value)
    assert BAD_TOKEN not in _full_text(caught.value)
    # The client's exception (its request holds the Authorization header) is not kept at all.
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_private_repo_needs_the_token(hub: RunningHub) -> None:
    with pytest.raises(HubError, match="org/private"):
        resolve_revision("model", "org/private", "main", endpoint=hub.endpoint, token=None)
    commit = resolve_revision("model", "org/private", "main", endpoint=hub.endpoint, token=TOKEN)
    assert commit == hub.head("org/private")


def test_an_unreachable_hub_is_not_a_usage_error() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(BakeError) as caught:
        resolve_revision("model", "org/model", "main", endpoint=endpoint, token=TOKEN)
    err = caught.value
    assert not isinstance(err, HubError) and err.exit_code == 1
    assert err.message.startswith(f"cannot reach the Hugging Face Hub at {endpoint}: ")
    assert err.hint == "check build.hf_endpoint / HF_ENDPOINT or the network"
    assert TOKEN not in _full_text(err)


def test_an_unreachable_hub_fails_fast_for_a_commit_listing() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(BakeError, match="cannot reach"):
        list_matching_files("model", "org/model", "a" * 40, [], [], endpoint=endpoint, token=None)


def test_no_error_text_carries_the_token(hub: RunningHub) -> None:
    calls = [
        lambda: resolve_revision("model", "org/nope", "main", endpoint=hub.endpoint, token=TOKEN),
        lambda: resolve_revision("model", "org/model", "nope", endpoint=hub.endpoint, token=TOKEN),
        lambda: list_matching_files(
            "model",
            "org/model",
            hub.head("org/model"),
            ["*.bin"],
            [],
            endpoint=hub.endpoint,
            token=TOKEN,
        ),
    ]
    for call in calls:
        with pytest.raises(HubError) as caught:
            call()
        assert TOKEN not in _full_text(caught.value)


# -- list_matching_files ------------------------------------------------------------------------


def test_include_and_exclude_patterns_select_files(hub: RunningHub) -> None:
    commit = hub.head("org/model")

    def files(include: list[str], exclude: list[str]) -> list[str]:
        return list_matching_files(
            "model", "org/model", commit, include, exclude, endpoint=hub.endpoint, token=None
        )

    assert files([], []) == sorted(MODEL_FILES)
    assert files(["*.json"], []) == ["config.json", "tokenizer.json"]
    assert files(["*.json", "*.safetensors"], ["tokenizer.*"]) == [
        "config.json",
        "model.safetensors",
    ]
    assert files(["extra/"], []) == ["extra/notes.txt"]  # a folder means everything under it


def test_dataset_patterns(hub: RunningHub) -> None:
    files = list_matching_files(
        "dataset",
        "org/data",
        hub.head("org/data"),
        ["data/*.csv"],
        ["*train*"],
        endpoint=hub.endpoint,
        token=None,
    )
    assert files == ["data/validation.csv"]


def test_an_include_pattern_that_matches_nothing_is_an_error(hub: RunningHub) -> None:
    commit = hub.head("org/model")
    with pytest.raises(HubError) as caught:
        list_matching_files(
            "model", "org/model", commit, ["*.json", "*.bin"], [], endpoint=hub.endpoint, token=None
        )
    err = caught.value
    assert err.exit_code == 2 and err.repo == "org/model"
    assert "include pattern '*.bin' matches no file in model repo 'org/model'" in err.message
    assert err.hint is not None and "config.json" in err.hint
    with pytest.raises(HubError, match=r"did you mean 'config\.json'"):
        list_matching_files(
            "model", "org/model", commit, ["confg.json"], [], endpoint=hub.endpoint, token=None
        )
    with pytest.raises(HubError, match="leave no file"):
        list_matching_files(
            "model", "org/model", commit, ["*.json"], ["*.json"], endpoint=hub.endpoint, token=None
        )


def test_listing_a_missing_commit_names_it(hub: RunningHub) -> None:
    with pytest.raises(HubError, match=r"revision '0{40}' not found in model repo 'org/model'"):
        list_matching_files(
            "model", "org/model", "0" * 40, [], [], endpoint=hub.endpoint, token=None
        )


def test_listing_a_gated_repo_needs_the_token(hub: RunningHub) -> None:
    commit = hub.head("org/gated")
    with pytest.raises(HubError, match="is gated; set HF_TOKEN"):
        list_matching_files("model", "org/gated", commit, [], [], endpoint=hub.endpoint, token=None)


def test_a_commit_resolution_does_not_import_the_client() -> None:
    # A cache hit resolves pinned commits only: it must not pay for importing huggingface_hub.
    code = (
        "import sys; from bake.hub import resolve_revision; "
        "c = resolve_revision('model', 'org/m', 'a' * 40, endpoint=None, token=None); "
        "assert c == 'a' * 40; assert 'huggingface_hub' not in sys.modules, 'imported'"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)

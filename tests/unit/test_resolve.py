"""The lock stage's Hub part: branches pinned, patterns checked at key time, errors exit 2.

Against tests/hubserver.py on loopback with the real client (the pipeline's Hub resolver,
:func:`bake.lock.locking.hub_locker`, what ``bake key`` does), and with fake resolvers for
what the lock stage asks of them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.cache.key import compute_key
from bake.errors import HubError
from bake.job import ResolvedJob
from bake.lock.format import DeclaredRepo, LockedFile, LockedRepo, PythonLock, PythonRequest
from bake.lock.locking import Resolvers, hub_locker, lock_for
from bake.resolve import resolve
from bake.settings import BuildSettings, HostEnv, Settings, load_settings
from bake.spec import load_spec
from tests.conftest import write_job
from tests.unit.helpers import fixed_base

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import HubRepo as ServedRepo
from hubserver import RunningHub, start_hub

TOKEN = "hf_resolve_unit_token_5a4b3c2d1e"
FILES = {"config.json": b"{}\n", "model.safetensors": b"\0" * 64, "notes.txt": b"x\n"}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RunningHub]:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    from huggingface_hub.utils import close_session

    close_session()  # a fresh client session in this clean environment (no proxy variables)
    repos = [
        ServedRepo("model", "org/model", branches={"main": FILES}, tags={"v1": "main"}),
        ServedRepo("dataset", "org/data", branches={"main": {"data/a.csv": b"a\n"}}),
        ServedRepo("model", "org/gated", branches={"main": FILES}, gated=True),
    ]
    with start_hub(repos, tokens=[TOKEN]) as running:
        yield running
    close_session()


def _spec(tmp_path: Path, tail: str) -> Path:
    return write_job(tmp_path / "job", f'[job]\ncommand = ["python", "-c", "1"]\n{tail}')


def _no_index(request: PythonRequest) -> PythonLock:
    raise AssertionError("these specs have no requirements")


def _resolve(spec: Path, hub: RunningHub, token: str = "") -> ResolvedJob:
    # resolve_ttl = 0: every lock asks the Hub again, as a cache miss does.
    settings = Settings(build=BuildSettings(hf_endpoint=hub.endpoint, resolve_ttl=0.0),
                        env=HostEnv(hf_token=token))
    pinned = resolve(load_spec(spec), settings, base_lookup=fixed_base)
    return pinned.locked(lock_for(pinned, settings,
                                  resolvers=Resolvers(_no_index, hub_locker(settings))).lock)


def test_branch_and_tag_are_pinned_to_the_commit(tmp_path: Path, hub: RunningHub) -> None:
    spec = _spec(tmp_path, '[[models]]\nrepo = "org/model"\n'
                           '[[datasets]]\nrepo = "org/data"\nrevision = "main"\n'
                           '[[models]]\nrepo = "org/model"\nrevision = "v1"\n')
    job = _resolve(spec, hub)
    head = hub.head("org/model")
    assert [r.commit for r in job.models] == [head, head]
    assert job.datasets[0].commit == hub.head("org/data", kind="dataset")
    manifest = compute_key(job).manifest
    # The name the buyer gave stays in the manifest beside the commit it pinned.
    assert [(m["revision"], m["commit"]) for m in manifest["models"]] == [("main", head),
                                                                          ("v1", head)]


def test_key_follows_the_branch_and_only_the_branch(tmp_path: Path, hub: RunningHub) -> None:
    spec = _spec(tmp_path, '[[models]]\nrepo = "org/model"\n')
    first = compute_key(_resolve(spec, hub)).digest
    assert compute_key(_resolve(spec, hub)).digest == first
    hub.commit("org/model", "main", {**FILES, "config.json": b'{"v": 2}\n'})
    assert compute_key(_resolve(spec, hub)).digest != first


def test_include_pattern_matching_nothing_fails_at_key_time(tmp_path: Path,
                                                            hub: RunningHub) -> None:
    spec = _spec(tmp_path, '[[models]]\nrepo = "org/model"\ninclude = ["*.json", "*.bin"]\n')
    with pytest.raises(HubError) as caught:
        _resolve(spec, hub)
    assert caught.value.exit_code == 2 and caught.value.repo == "org/model"
    assert "'*.bin' matches no file" in caught.value.message


def test_missing_repo_and_revision_fail_at_key_time(tmp_path: Path, hub: RunningHub) -> None:
    for tail, words in (('[[models]]\nrepo = "org/nope"\n', "org/nope"),
                        ('[[models]]\nrepo = "org/model"\nrevision = "nope"\n', "nope"),
                        ('[[datasets]]\nrepo = "org/model"\n', "org/model")):
        with pytest.raises(HubError) as caught:
            _resolve(_spec(tmp_path, tail), hub)
        assert caught.value.exit_code == 2 and words in caught.value.message


def test_gated_repo_needs_the_token_and_the_token_is_used(tmp_path: Path,
                                                         hub: RunningHub) -> None:
    spec = _spec(tmp_path, '[[models]]\nrepo = "org/gated"\n')
    with pytest.raises(HubError, match="HF_TOKEN"):
        _resolve(spec, hub)
    assert _resolve(spec, hub, TOKEN).models[0].commit == hub.head("org/gated")
    # The file probe ran with the token: access is proven before any build starts.  The server
    # records a request after answering it, so the record may trail the client by a moment.
    deadline = time.monotonic() + 5
    while not any(r.method == "HEAD" and r.authorized and r.status == 200 for r in hub.requests):
        assert time.monotonic() < deadline, hub.requests
        time.sleep(0.01)


def test_the_hub_resolver_takes_endpoint_from_settings_and_token_from_the_environment() -> None:
    settings = load_settings(None, environ={"HF_TOKEN": TOKEN,
                                            "BAKE_BUILD_HF_ENDPOINT": "http://h:1"})
    assert settings.hub_endpoint == "http://h:1" and settings.env.hf_token == TOKEN
    assert TOKEN not in repr(settings)
    assert settings.env.sources["hf_token"] == "env HF_TOKEN"


class RecordingHub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, asked: DeclaredRepo) -> LockedRepo:
        self.calls.append((asked.kind, asked.repo, asked.revision))
        return LockedRepo(asked.kind, asked.repo, asked.revision, "c" * 40, asked.include,
                          asked.exclude, (LockedFile("config.json", 2, blob="a" * 40),))


def _lock_with(spec: Path, fake: RecordingHub) -> ResolvedJob:
    pinned = resolve(load_spec(spec), Settings(), base_lookup=fixed_base)
    return pinned.locked(lock_for(pinned, Settings(),
                                  resolvers=Resolvers(_no_index, fake)).lock)


def test_the_lock_stage_asks_the_hub_once_per_repo(tmp_path: Path) -> None:
    spec = _spec(tmp_path, '[[models]]\nrepo = "org/a"\n[[datasets]]\nrepo = "org/b"\n')
    fake = RecordingHub()
    job = _lock_with(spec, fake)
    assert fake.calls == [("model", "org/a", "main"), ("dataset", "org/b", "main")]
    assert [r.commit for r in job.hub_repos] == ["c" * 40] * 2


def test_no_hub_is_asked_when_the_job_names_no_repo(tmp_path: Path) -> None:
    fake = RecordingHub()
    _lock_with(_spec(tmp_path, ""), fake)
    assert fake.calls == []


def test_job_files_past_the_sellers_context_limit_are_exit_2_naming_the_largest(
        tmp_path: Path) -> None:
    """build.max_context bounds what a build copies; checked before a byte is read."""
    from bake.errors import SpecError

    for name, size in (("weights.bin", 3 << 20), ("data/part.csv", 600 << 10), ("main.py", 10)):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as fh:  # sparse: a large size, no disk
            fh.truncate(size)
    spec_path = write_job(tmp_path, '[job]\nfiles = ["main.py", "weights.bin", "data"]\n'
                                    'command = ["python", "main.py"]\n')
    spec = load_spec(spec_path)

    def never(ref: str) -> tuple[str, str]:
        raise AssertionError("the limit is checked before the engine is asked")

    assert Settings().build.max_context == 1 << 30  # the default: 1 GiB (DESIGN.md)
    with pytest.raises(SpecError) as caught:
        resolve(spec, Settings(build=BuildSettings(max_context=1 << 20)), base_lookup=never)
    error = caught.value
    assert error.exit_code == 2 and error.field == "job.files"
    assert "3.59 MiB" in error.message and "build.max_context = 1 MiB" in error.message
    assert "weights.bin (3 MiB), data/part.csv (600 KiB), main.py (10 B)" in error.message
    assert "[[datasets]]" in (error.hint or "")
    roomy = Settings(build=BuildSettings(max_context=8 << 20))
    assert resolve(spec, roomy, base_lookup=fixed_base).spec is spec

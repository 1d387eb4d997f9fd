"""The resolver cache: pure decisions under a fake clock, stale-if-error, and lock_for's use of it
(a shipped bake.lock first, then fresh entries, then the resolvers)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bake.errors import HubError, NotLocked, SpecError, UnreachableError
from bake.lock.cache import Decision, Entry, ResolverCache, cached, decide
from bake.lock.format import (
    DeclaredRepo,
    Lock,
    LockedFile,
    LockedRepo,
    PythonLock,
    PythonRequest,
    write_lock,
)
from bake.lock.locking import Resolvers, declared_of, lock_for, lock_path
from bake.resolve import resolve
from bake.settings import BuildSettings, Settings
from bake.spec import load_spec
from bake.units import parse_duration
from tests.conftest import write_job
from tests.unit.lock_samples import BASE_DIGEST, DISTS, TARGET, dist

DAY = 86400.0


def test_decide_under_a_fake_clock() -> None:
    entry = Entry(stored_at=1000.0, value={})
    assert decide(None, 1000.0, DAY) is Decision.MISSING
    assert decide(entry, 1000.0, DAY) is Decision.FRESH
    assert decide(entry, 1000.0 + DAY - 1, DAY) is Decision.FRESH
    assert decide(entry, 1000.0 + DAY, DAY) is Decision.STALE
    assert decide(entry, 1000.0, 0) is Decision.STALE  # resolve_ttl = "0": always ask
    assert decide(entry, 10.0, DAY) is Decision.STALE  # from the future: the clock moved back
    assert decide(entry, 1e12, math.inf) is Decision.FRESH  # a commit: fresh for ever


@dataclass
class Fetcher:
    values: list[object]
    calls: int = 0
    warnings: list[str] = field(default_factory=list)

    def __call__(self) -> dict[str, object]:
        self.calls += 1
        value = self.values.pop(0)
        if isinstance(value, Exception):
            raise value
        return {"v": value}


def _get(cache: ResolverCache, fetcher: Fetcher, now: float, *, ttl: float = DAY,
         refresh: bool = False) -> object:
    out = cached(cache, {"k": 1}, what="the requirements", ttl=ttl, now=now, fetch=fetcher,
                 encode=lambda v: v, decode=lambda d: dict(d), warn=fetcher.warnings.append,
                 refresh=refresh).value
    assert isinstance(out, dict)
    return out["v"]


def test_fresh_entries_answer_without_fetching_and_stale_ones_are_refetched(
    tmp_path: Path,
) -> None:
    cache = ResolverCache(tmp_path / "resolve")
    fetcher = Fetcher([1, 2, 3])
    assert _get(cache, fetcher, 0.0) == 1
    assert _get(cache, fetcher, DAY - 1) == 1 and fetcher.calls == 1
    assert _get(cache, fetcher, DAY) == 2 and fetcher.calls == 2
    assert _get(cache, fetcher, DAY + 5, refresh=True) == 3 and fetcher.calls == 3
    assert fetcher.warnings == []


def test_stale_if_error_uses_an_entry_however_old_and_warns(tmp_path: Path) -> None:
    cache = ResolverCache(tmp_path / "resolve")
    down = UnreachableError("cannot reach the package index", what="https://index.test/simple")
    fetcher = Fetcher([1, down, down])
    _get(cache, fetcher, 0.0)
    assert _get(cache, fetcher, 400 * DAY) == 1
    assert fetcher.warnings == [
        "cannot reach the package index; using the resolution of the requirements from 400d ago"]
    assert _get(cache, fetcher, 401 * DAY, refresh=True) == 1  # --upgrade cannot either


def test_unreachable_with_no_entry_names_what_was_unreachable(tmp_path: Path) -> None:
    down = UnreachableError("cannot reach the Hub at http://hub.test", what="http://hub.test")
    fetcher = Fetcher([down])
    with pytest.raises(UnreachableError) as caught:
        _get(ResolverCache(tmp_path), fetcher, 0.0)
    assert caught.value.what == "http://hub.test"
    assert "cannot reach the Hub at http://hub.test" in str(caught.value)
    assert "no earlier resolution of the requirements" in str(caught.value)


def test_other_failures_are_never_hidden_by_an_old_entry(tmp_path: Path) -> None:
    cache = ResolverCache(tmp_path)
    fetcher = Fetcher([1, SpecError("no version of numpy==9", field="python.requirements")])
    _get(cache, fetcher, 0.0)
    with pytest.raises(SpecError, match="numpy==9"):
        _get(cache, fetcher, 2 * DAY)


def test_an_unreadable_entry_counts_as_missing(tmp_path: Path) -> None:
    cache = ResolverCache(tmp_path)
    fetcher = Fetcher([1, 2])
    _get(cache, fetcher, 0.0)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text("{not json")
    assert _get(cache, fetcher, 1.0) == 2
    assert fetcher.calls == 2


# -- lock_for -------------------------------------------------------------------------------------

SPEC = """\
template = "transformers"
[python]
requirements = ["numpy>=2", "six"]
[[models]]
repo = "org/model"
include = ["*.json"]
[[datasets]]
repo = "org/data"
revision = "%s"
[job]
command = ["python", "-c", "pass"]
"""
PINNED = "e" * 40


@dataclass
class Fake:
    """Fake resolvers counting their calls; ``down`` makes them unreachable."""

    python_calls: int = 0
    hub_calls: int = 0
    version: str = "2.1.3"
    down: bool = False
    warnings: list[str] = field(default_factory=list)

    def python(self, request: PythonRequest) -> PythonLock:
        self.python_calls += 1
        if self.down:
            raise UnreachableError("cannot reach the index", what=request.index_url)
        numpy = dist("numpy", self.version,
                     f"numpy-{self.version}-cp311-cp311-manylinux_2_17_x86_64.whl")
        return PythonLock(TARGET, (numpy, DISTS[1]))

    def hub(self, asked: DeclaredRepo) -> LockedRepo:
        self.hub_calls += 1
        if self.down:
            raise UnreachableError("cannot reach the Hub", what="http://hub.test")
        commit = asked.revision if len(asked.revision) == 40 else "c" * 40
        name = "config.json" if asked.kind == "model" else "data.csv"
        return LockedRepo(asked.kind, asked.repo, asked.revision, commit, asked.include,
                          asked.exclude, (LockedFile(name, 3, blob="a" * 40),))

    def resolvers(self) -> Resolvers:
        return Resolvers(self.python, lambda asked: self.hub(asked))


def _lock(folder: Path, fake: Fake | None, now: float, *, ttl: str = "1d",
          upgrade: bool = False, digest: str = BASE_DIGEST, spec_text: str = SPEC % PINNED,
          base_from: str | None = None) -> Lock:
    spec = load_spec(write_job(folder, spec_text))
    settings = Settings(build=BuildSettings(resolve_ttl=parse_duration(ttl)))
    pinned = resolve(spec, settings,
                     base_lookup=lambda ref: (base_from or f"{ref}@{digest}", digest))
    clock: Callable[[], float] = lambda: now  # noqa: E731
    warnings: list[str] = fake.warnings if fake is not None else []
    return lock_for(pinned, settings, resolvers=fake.resolvers() if fake else None,
                    upgrade=upgrade, now=clock, warn=warnings.append).lock


def test_a_fresh_cache_locks_with_no_resolver_call(tmp_path: Path) -> None:
    fake = Fake()
    first = _lock(tmp_path / "job", fake, 0.0)
    assert (fake.python_calls, fake.hub_calls) == (1, 2)
    again = _lock(tmp_path / "job", fake, DAY - 1)
    assert again == first and (fake.python_calls, fake.hub_calls) == (1, 2)


def test_a_new_release_moves_the_lock_only_after_the_ttl_or_an_upgrade(tmp_path: Path) -> None:
    fake = Fake()
    before = _lock(tmp_path / "job", fake, 0.0)
    fake.version = "2.2.0"
    assert _lock(tmp_path / "job", fake, 3600.0) == before
    upgraded = _lock(tmp_path / "job", fake, 3601.0, upgrade=True)
    after = _lock(tmp_path / "job", fake, 2 * DAY)
    assert upgraded == after != before
    assert after.python is not None and after.python.distributions[0].version == "2.2.0"
    # The dataset pinned by commit was asked once, ever.
    assert fake.hub_calls == 1 + 3


def test_index_and_hub_down_an_old_lock_stands_in_with_warnings(tmp_path: Path) -> None:
    fake = Fake()
    before = _lock(tmp_path / "job", fake, 0.0)
    fake.down = True
    assert _lock(tmp_path / "job", fake, 30 * DAY) == before
    assert len(fake.warnings) == 2  # the requirements and the model; the commit needs no Hub
    assert "the requirements" in fake.warnings[0] and "model org/model@main" in fake.warnings[1]


def test_with_nothing_cached_an_outage_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UnreachableError, match="no earlier resolution of the requirements"):
        _lock(tmp_path / "job", Fake(down=True), 0.0)


def test_another_base_digest_resolves_again(tmp_path: Path) -> None:
    fake = Fake()
    _lock(tmp_path / "job", fake, 0.0)
    _lock(tmp_path / "job", fake, 1.0, digest="sha256:" + "9" * 64)
    assert fake.python_calls == 2


def test_a_shipped_lock_is_used_as_it_is_with_no_resolution(tmp_path: Path) -> None:
    fake = Fake()
    lock = _lock(tmp_path / "job", fake, 0.0)
    spec = load_spec(tmp_path / "job" / "bake.toml")
    write_lock(lock_path(spec), lock)
    other = Fake(down=True, version="9.9")
    assert _lock(tmp_path / "job", other, 400 * DAY) == lock
    assert (other.python_calls, other.hub_calls) == (0, 0) and other.warnings == []


def test_a_shipped_lock_that_no_longer_matches_names_the_fields_and_bake_lock(
    tmp_path: Path,
) -> None:
    fake = Fake()
    lock = _lock(tmp_path / "job", fake, 0.0)
    write_lock(tmp_path / "job" / "bake.lock", lock)
    changed = (SPEC % PINNED).replace('"numpy>=2"', '"numpy>=2.2"').replace('"*.json"', '"*.md"')
    with pytest.raises(SpecError) as caught:
        _lock(tmp_path / "job", fake, 1.0, spec_text=changed)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "python.requirements, models[0].include changed" in message
    assert "bake lock" in message and "bake.lock" in message
    with pytest.raises(SpecError, match=r"tool\.bake\.base\.digest: .*base python:3\.11-slim "
                       r"is now sha256:9+, the lock has sha256:b+") as caught:
        _lock(tmp_path / "job", fake, 1.0, digest="sha256:" + "9" * 64)
    assert "bake lock" in str(caught.value)
    # --upgrade re-locks instead of refusing.
    assert _lock(tmp_path / "job", fake, 2.0, spec_text=changed, upgrade=True) != lock


def test_a_malformed_shipped_lock_is_exit_2(tmp_path: Path) -> None:
    write_job(tmp_path / "job", SPEC % PINNED)
    (tmp_path / "job" / "bake.lock").write_text('lock-version = "1.0"\ncreated-by = "me"\n')
    with pytest.raises(SpecError, match="tool: missing") as caught:
        _lock(tmp_path / "job", Fake(), 0.0)
    assert caught.value.exit_code == 2


def test_hub_spec_errors_are_not_cached_away(tmp_path: Path) -> None:
    fake = Fake()

    def missing(asked: DeclaredRepo) -> LockedRepo:
        raise HubError(f"model repo '{asked.repo}' not found", repo=asked.repo)

    fake.hub = missing  # type: ignore[method-assign]
    with pytest.raises(HubError, match="org/model"):
        _lock(tmp_path / "job", fake, 0.0)


def test_declared_inputs_come_from_the_spec(tmp_path: Path) -> None:
    spec = load_spec(write_job(tmp_path / "job", SPEC % PINNED))
    d = declared_of(spec, "python:3.11-slim")
    assert d.requirements == ("numpy>=2", "six") and d.only_binary
    assert [r.repo for r in d.models] == ["org/model"] and d.datasets[0].revision == PINNED


def test_a_shipped_lock_on_a_base_made_here_builds_on_this_machines_copy_with_a_warning(
    tmp_path: Path,
) -> None:
    """A base with no registry digest (bake base build) has another image id on every
    machine: the lock's other inputs stand, the base digest becomes this engine's."""
    fake = Fake()
    lock = _lock(tmp_path / "job", fake, 0.0, base_from="python:3.11-slim")
    write_lock(tmp_path / "job" / "bake.lock", lock)
    other = Fake(down=True)
    here = _lock(tmp_path / "job", other, 1.0, digest="sha256:" + "9" * 64,
                 base_from="python:3.11-slim")
    assert here.base_digest == "sha256:" + "9" * 64
    assert here.python == lock.python and here.repos == lock.repos
    assert (other.python_calls, other.hub_calls) == (0, 0)
    (warning,) = other.warnings
    assert "another copy of the base python:3.11-slim" in warning


def test_without_resolvers_only_a_fresh_answer_counts(tmp_path: Path) -> None:
    """The fast path's lock stage: fresh entries or a shipped lock, else NotLocked, and never
    a resolver call (there is none to call)."""
    with pytest.raises(NotLocked):
        _lock(tmp_path / "job", None, 0.0)
    fake = Fake()
    first = _lock(tmp_path / "job", fake, 0.0)
    assert _lock(tmp_path / "job", None, DAY - 1) == first
    with pytest.raises(NotLocked, match="stale"):
        _lock(tmp_path / "job", None, DAY + 1)


def test_a_shipped_lock_is_checked_in_full_once_then_read_without_packaging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Fake()
    lock = _lock(tmp_path / "job", fake, 0.0)
    write_lock(tmp_path / "job" / "bake.lock", lock)
    calls: list[str] = []
    import bake.lock.format as fmt

    real = fmt._check_file
    monkeypatch.setattr(fmt, "_check_file", lambda *a, **k: (calls.append(a[2]), real(*a, **k)))
    assert _lock(tmp_path / "job", None, 1.0) == lock
    assert len(calls) == len(lock.distributions)
    calls.clear()
    assert _lock(tmp_path / "job", None, 2.0) == lock
    assert calls == []  # its digest was checked before
    # A byte changed is another text: checked in full again.
    text = (tmp_path / "job" / "bake.lock").read_text()
    (tmp_path / "job" / "bake.lock").write_text(text + "\n")
    assert _lock(tmp_path / "job", None, 3.0) == lock
    assert len(calls) == len(lock.distributions)


def test_the_answer_says_what_it_was_read_from_and_until_when_it_is_fresh(
    tmp_path: Path,
) -> None:
    """What the fast path's record of a lookup needs: the files (bake.lock beside the spec,
    present or not, and the cache entries) and when the first resolution goes stale."""
    fake = Fake()
    spec = load_spec(write_job(tmp_path / "job", SPEC % PINNED))
    settings = Settings(build=BuildSettings(resolve_ttl=DAY))
    pinned = resolve(spec, settings, base_lookup=lambda ref: (f"{ref}@{BASE_DIGEST}",
                                                              BASE_DIGEST))
    answer = lock_for(pinned, settings, resolvers=fake.resolvers(), now=lambda: 100.0)
    assert answer.inputs[0] == tmp_path / "job" / "bake.lock" and not answer.stale
    # The requirements and the model's branch: two entries; the dataset pinned by commit too.
    assert len(answer.inputs) == 4 and all(p.is_file() for p in answer.inputs[1:])
    assert answer.fresh_until == 100.0 + DAY  # the commit's entry never goes stale
    later = lock_for(pinned, settings, resolvers=fake.resolvers(), now=lambda: 200.0)
    assert later.fresh_until == 100.0 + DAY and later.lock == answer.lock
    fake.down = True
    outage = lock_for(pinned, settings, resolvers=fake.resolvers(), now=lambda: 3 * DAY)
    assert outage.stale and outage.lock == answer.lock
    write_lock(tmp_path / "job" / "bake.lock", answer.lock)
    shipped = lock_for(pinned, settings, resolvers=None)
    assert shipped.inputs == (tmp_path / "job" / "bake.lock",) and shipped.fresh_until is None

"""The runner's plans and output collection against a hostile job, without an engine."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bake.outbox import collect
from bake.runner import NOBODY, RunPlan, RunResult, container_config, job_user
from bake.spec import RunLimits


@pytest.mark.parametrize(("image_user", "expected"), [
    ("", NOBODY),
    ("root", NOBODY),
    ("0", NOBODY),
    ("0:0", NOBODY),
    ("00:10", NOBODY),
    ("root:root", NOBODY),
    ("app", NOBODY),  # a name may map to uid 0 in the image's own /etc/passwd
    ("app:app", NOBODY),
    ("1000:abc", NOBODY),
    ("-1:5", NOBODY),
    ("1000", "1000:1000"),  # no gid would mean group root
    ("1000:0", "1000:1000"),
    ("10001:10001", "10001:10001"),
    (" 10001:10002 ", "10001:10002"),
])
def test_the_job_never_runs_as_root(image_user: str, expected: str) -> None:
    assert job_user(image_user) == expected


def test_the_container_config_holds_every_limit() -> None:
    limits = RunLimits(memory=64 << 20, cpus=0.5, pids=32, timeout=5, shm=1 << 20, tmp=8 << 20)
    config = container_config(RunPlan("img", ("python",), limits=limits), user="10001:10001",
                              out_dir=None)
    assert config["cgroupns"] == "private"
    assert config["tmpfs"]["/tmp"].endswith(f"size={8 << 20}")
    assert "nosuid" in config["tmpfs"]["/tmp"] and "nodev" in config["tmpfs"]["/tmp"]
    assert config["pids_limit"] == 32 and config["shm_size"] == 1 << 20
    assert config["mem_limit"] == config["memswap_limit"] == 64 << 20
    assert config["user"] == "10001:10001" and config["network_mode"] == "none"
    for key in ("privileged", "cap_add", "devices", "pid_mode", "userns_mode", "sysctls"):
        assert key not in config


def test_a_memory_kill_names_the_limit() -> None:
    result = RunResult(image="i", exit_code=137, timed_out=False, oom_killed=True,
                       duration_s=1.0, memory_limit=64 << 20)
    assert result.reason.startswith("was killed for using more than its memory limit (64 MiB")
    assert "[run] memory" in result.reason
    plain = RunResult(image="i", exit_code=137, timed_out=False, oom_killed=False,
                      duration_s=1.0, memory_limit=64 << 20)
    assert plain.reason == "exited 137"


@pytest.fixture
def hostile_output(tmp_path: Path) -> Path:
    """What a hostile job leaves in /out: links out, a fifo, a setuid file, a link loop."""
    out = tmp_path / "staging"
    (out / "sub").mkdir(parents=True)
    (out / "result.txt").write_text("ok\n")
    (out / "sub" / "deep.txt").write_text("deep\n")
    (out / "passwd").symlink_to("/etc/passwd")
    (out / "etc").symlink_to("/etc")
    (out / "sub" / "up").symlink_to("../../../../../../../etc/hostname")
    (out / "loop").symlink_to("loop")
    os.mkfifo(out / "pipe")
    suid = out / "suid"
    suid.write_text("#!/bin/sh\n")
    os.chmod(suid, 0o4777)
    return out


def test_output_collection_copies_files_and_never_follows_links(hostile_output: Path,
                                                                tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    skipped = collect(hostile_output, dest, 1 << 20).skipped
    assert (dest / "result.txt").read_text() == "ok\n"
    assert (dest / "sub" / "deep.txt").read_text() == "deep\n"
    assert sorted(skipped) == ["etc", "loop", "passwd", "pipe", "sub/up"]
    for name in ("passwd", "etc", "loop", "pipe", "sub/up"):
        assert not os.path.lexists(dest / name), name
    # Setuid/setgid and group/other write never reach the host.
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755


def test_output_collection_does_not_write_through_links_in_the_destination(
        hostile_output: Path, tmp_path: Path) -> None:
    """A link already in the seller's folder, named like the job's output, is not followed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(elsewhere)  # the job's sub/ must not land in elsewhere/
    (dest / "result.txt").symlink_to(elsewhere / "planted.txt")
    skipped = collect(hostile_output, dest, 1 << 20).skipped
    assert list(elsewhere.iterdir()) == []
    assert "sub" in skipped
    assert not (dest / "result.txt").is_symlink() and (dest / "result.txt").read_text() == "ok\n"


class _Engine:
    """A fake docker client whose create() is cut short by Ctrl-C after the Engine made
    the container, which then shows up only a moment later (as a real Engine's would)."""

    def __init__(self) -> None:
        import docker.errors

        self.errors = docker.errors
        self.pending: str | None = None
        self.made: set[str] = set()
        self.lookups = 0
        self.api = self
        self.containers = _Create(self)

    def inspect_image(self, image: str) -> dict[str, object]:
        return {"Config": {"User": "10001:10001"}}

    def remove_container(self, name: str, force: bool = False) -> None:
        self.lookups += 1
        if self.lookups == 3 and self.pending == name:
            self.made.add(name)  # the Engine finished creating it just now
        if name not in self.made:
            raise self.errors.NotFound(f"no such container: {name}")
        self.made.remove(name)

    def networks(self, **filters: object) -> list[object]:
        return []  # nothing to sweep


class _Create:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine

    def __call__(self, **filters: object) -> list[object]:
        return []  # client.api.containers(...): nothing to sweep

    def create(self, *, name: str, **config: object) -> None:
        self.engine.pending = name
        raise KeyboardInterrupt  # the signal lands while the request is in flight


def test_a_container_whose_create_was_interrupted_is_still_removed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bake.cache import store
    from bake.runner import run_job

    engine = _Engine()
    monkeypatch.setattr(store, "docker_client", lambda **_: engine)
    with pytest.raises(KeyboardInterrupt):
        run_job(RunPlan("img", ("python",)), stream=False)
    assert engine.pending and engine.pending.startswith("bake-job-")
    assert engine.lookups == 3 and engine.made == set()  # found on the third look, removed

"""The runner: its container plans and output collection against a hostile job, no engine."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bake.engine import Engine
from bake.outbox import collect
from bake.resolve import resolve
from bake.runner import (
    NOBODY,
    RunPlan,
    RunResult,
    container_config,
    job_user,
    run_job,
    self_check_plan,
)
from bake.settings import Settings
from bake.spec import RunLimits, load_spec
from tests.conftest import write_job
from tests.unit.helpers import fixed_base, lock_job


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
    host = config["HostConfig"]
    assert host["CgroupnsMode"] == "private"
    assert host["Tmpfs"]["/tmp"].endswith(f"size={8 << 20}")
    assert "nosuid" in host["Tmpfs"]["/tmp"] and "nodev" in host["Tmpfs"]["/tmp"]
    assert host["PidsLimit"] == 32 and host["ShmSize"] == 1 << 20
    assert host["Memory"] == host["MemorySwap"] == 64 << 20
    assert config["User"] == "10001:10001" and host["NetworkMode"] == "none"
    for key in ("Privileged", "CapAdd", "Devices", "PidMode", "UsernsMode", "Sysctls"):
        assert key not in host


def test_container_is_hardened() -> None:
    limits = RunLimits(memory=1 << 30, cpus=1.5, pids=100, timeout=60, shm=1 << 20,
                       tmp=2 << 20)
    config = container_config(RunPlan("img", ("python", "x.py"), (("A", "1"),), limits,
                                      None, "k"), user="10001:10001", out_dir=None)
    host = config["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": f"rw,exec,nosuid,nodev,size={2 << 20}"}
    assert host["LogConfig"]["Config"]["max-size"] == "64m"
    assert host["PidsLimit"] == 100 and host["Memory"] == 1 << 30
    assert host["MemorySwap"] == 1 << 30 and host["NanoCpus"] == 1_500_000_000
    assert host["IpcMode"] == "private"
    # Only the job's own variables and the node conventions (one node: rank 0 of 1): the
    # Engine API adds none of the client's (no proxies).
    assert config["Env"] == ["A=1", "MASTER_ADDR=node-0", "MASTER_PORT=29500", "NNODES=1",
                             "NODE_RANK=0", "WORLD_SIZE=1", "RANK=0", "LOCAL_RANK=0"]
    assert host["Binds"] == []
    assert "Privileged" not in host and "Devices" not in host


def test_output_is_the_only_mount() -> None:
    config = container_config(RunPlan("img", ("x",)), user=NOBODY, out_dir="/stage/out")
    assert config["HostConfig"]["Binds"] == ["/stage/out:/out:rw"]
    assert "Volumes" not in config and "Mounts" not in config["HostConfig"]


def test_job_user_is_never_root() -> None:
    assert job_user("") == NOBODY
    assert job_user("root") == NOBODY
    assert job_user("0:0") == NOBODY
    assert job_user("10001:10001") == "10001:10001"


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


class _Engine(Engine):
    """An engine whose create is cut short by Ctrl-C after it made the container, which
    then shows up only a moment later (as a real Engine's would)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: str | None = None
        self.made: set[str] = set()
        self.lookups = 0

    def inspect_image(self, image: str) -> dict[str, object]:
        return {"Config": {"User": "10001:10001"}}

    def create_container(self, name: str, config: object) -> str:
        self.pending = name
        raise KeyboardInterrupt  # the signal lands while the request is in flight

    def remove_container(self, name: str) -> bool:
        self.lookups += 1
        if self.lookups == 3 and self.pending == name:
            self.made.add(name)  # the Engine finished creating it just now
        if name not in self.made:
            return False
        self.made.remove(name)
        return True

    def containers(self, *, label: str | None = None) -> list[object]:
        return []  # nothing to sweep

    def networks(self, *, label: str | None = None) -> list[object]:
        return []


def test_a_container_whose_create_was_interrupted_is_still_removed() -> None:
    engine = _Engine()
    with pytest.raises(KeyboardInterrupt):
        run_job(engine, RunPlan("img", ("python",)), stream=False)  # type: ignore[arg-type]
    assert engine.pending and engine.pending.startswith("bake-job-")
    assert engine.lookups == 3 and engine.made == set()  # found on the third look, removed


def test_check_runs_the_jobs_python_on_every_repo_offline(tmp_path: Path) -> None:
    spec = write_job(tmp_path, '[[models]]\nrepo = "o/m"\n[[datasets]]\nrepo = "o/d"\n'
                               '[job]\ncommand = ["python", "-c", "1"]\nenv = { X = "1" }\n')
    job = lock_job(resolve(load_spec(spec), Settings(), base_lookup=fixed_base))
    plan = self_check_plan("sha256:" + "f" * 64, job)
    # The job's venv python (its own huggingface_hub when it has one), never the fetch client.
    assert plan.command == ("/opt/venv/bin/python", "/opt/bake/hubfetch.py", "check",
                            "/opt/bake/hub/0.json", "/opt/bake/hub/1.json")
    assert plan.env == ()  # nothing of the job's or the seller's environment
    host = container_config(plan, user="10001:10001", out_dir=None)["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["Binds"] == []

"""Faults of bake's own environment: bake killed mid-build, a disk that fills up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bake.engine import Engine
from tests.integration.conftest import BASE, Host
from tests.machines import MachineError, docker, loaded_from_host, second_engine

ENGINE = Engine.from_env()

SLOW_SETUP = """\
template = "python"
[python]
requirements = ["numpy==2.1.3", "six==1.16.0"]
[job]
command = ["python", "-c", "import numpy"]
"""


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_bake_takes_its_build_with_it(host: Host, job: Callable[..., Path]) -> None:
    spec = job(SLOW_SETUP)
    key = host.bake("key", str(spec), check=True).stdout.split()[0]
    proc = subprocess.Popen([sys.executable, "-m", "bake", "--config", str(host.config),
                             "build", str(spec), "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "RUN --mount" in line:
            break
    children = _children(proc.pid)
    assert children, "the docker CLI runs as bake's child"
    proc.kill()  # SIGKILL: no handler, no finally clause runs
    proc.communicate()
    killed = time.monotonic()
    while any(_alive(c) for c in children) and time.monotonic() - killed < 30:
        time.sleep(0.1)
    # The CLI's output pipe dies with bake, so the CLI stops at its next line and
    # BuildKit cancels the solve with its session: no orphan builds on without the
    # proxy it was given, and nothing gets the key.
    assert not any(_alive(c) for c in children)
    assert time.monotonic() - killed < 5
    assert ENGINE.inspect_image(f"bake:{key}") is None


@pytest.fixture
def small_disk_engine(engine: None) -> Iterator[str]:
    try:
        with second_engine(loaded_from_host(BASE), label="test-small-disk",
                           data_size="700m") as sock:
            yield sock
    except MachineError as exc:
        pytest.fail(str(exc))


def test_a_full_disk_is_a_clear_error_and_nothing_is_tagged(
        host: Host, job: Callable[..., Path], small_disk_engine: str) -> None:
    folder = job('template = "python"\n[job]\nfiles = ["data"]\ncommand = ["true"]\n').parent
    (folder / "data").mkdir()
    for i in range(3):  # 3 x 160 MiB of job files: more than the engine has room for
        with open(folder / "data" / f"part{i}.bin", "wb") as fh:
            for _ in range(160):
                fh.write(os.urandom(1 << 20))
    host.egress["allow"] = []  # an offline build: the small engine's bridge has no way out
    spec = folder / "bake.toml"
    env = {"DOCKER_HOST": small_disk_engine}
    key = host.bake("key", str(spec), env=env, check=True).stdout.split()[0]
    proc = host.bake("build", str(spec), "--json", env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "ran out of disk space" in proc.stderr
    assert "bake prune" in proc.stderr and "Traceback" not in proc.stderr
    listed = docker("images", "-q", f"bake:{key}", host=small_disk_engine).stdout.strip()
    assert listed == ""
    assert json.loads(docker("ps", "-aq", "--format", "{{json .}}",
                             host=small_disk_engine).stdout or "null") is None

"""Faults on a real Engine: a dead engine, a missing BuildKit CLI, signals mid-build, a killed
lock holder, and many callers at once.

Every job here carries a fresh nonce in its files, so its key is this test's alone:
whatever image a test finds or removes under that key, it made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bake.egress.lockdown import PROXY_PORTS
from bake.engine import Engine
from tests.integration.conftest import Host

ENGINE = Engine.from_env()

OFFLINE_JOB = """\
name = "fault"
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
PIP_JOB = """\
name = "fault-pip"
[python]
requirements = ["six==1.16.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
DEAD = "unix:///nonexistent.sock"


def unique_job(job: Callable[..., Path], spec: str = OFFLINE_JOB) -> Path:
    return job(spec, {"main.py": f"print('{uuid.uuid4()}')\n"})  # type: ignore[no-any-return]


def key_of(host: Host, spec: Path) -> str:
    return host.bake("key", str(spec), check=True).stdout.strip()


def one_message(stderr: str) -> list[str]:
    """bake's error: one line, and at most a hint; never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    tail = lines[errors[0]:]
    assert len(tail) <= 2 and all(line.strip().startswith("hint:") for line in tail[1:]), stderr
    return tail


# -- the Engine down ----------------------------------------------------------------------


@pytest.mark.parametrize(("command", "code"), [("build", 1), ("key", 1), ("run", 125)])
def test_a_dead_engine_is_one_clear_line(host: Host, job: Callable[..., Path], command: str,
                                         code: int) -> None:
    spec = unique_job(job)
    proc = host.bake(command, str(spec), env={"DOCKER_HOST": DEAD}, timeout=60)
    assert proc.returncode == code, proc.stderr
    error, *hint = one_message(proc.stderr)
    assert "Docker Engine" in error and DEAD in error
    assert hint and "start the Docker Engine" in hint[0]


def test_doctor_with_a_dead_engine_prints_the_fix(host: Host) -> None:
    proc = host.bake("doctor", env={"DOCKER_HOST": DEAD}, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "✗ engine:" in proc.stdout and "fix: unset DOCKER_HOST" in proc.stdout


def test_doctor_on_this_host_passes(host: Host) -> None:
    proc = host.bake("doctor", "--json", timeout=180)
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    failing = {name: c for name, c in checks.items() if not c["ok"]}
    assert proc.returncode == (1 if failing else 0)
    assert not failing, failing
    assert "Docker Engine 20.10" in checks["engine"]["detail"] or checks["engine"]["ok"]
    assert str(host.config) in checks["config"]["detail"]


def test_doctor_reaches_a_real_registry_and_says_when_it_is_gone(
        host: Host, tmp_path: Path) -> None:
    from tests.integration.conftest import serve_registry

    with serve_registry(tmp_path / "registry") as registry:
        host.registry["repository"] = registry.repository("doctor")
        proc = host.bake("doctor", "--json", timeout=180)
        check = {c["name"]: c for c in json.loads(proc.stdout)}["registry"]
        assert check["ok"] is True and registry.address in check["detail"], check
    proc = host.bake("doctor", "--json", timeout=180)  # the registry has stopped
    check = {c["name"]: c for c in json.loads(proc.stdout)}["registry"]
    assert proc.returncode == 1 and check["ok"] is False
    assert "cannot reach the registry" in check["detail"]
    assert check["fix"].startswith("start the registry")


# -- BuildKit CLI missing ------------------------------------------------------------------


@pytest.mark.parametrize(("cli", "words"), [
    ("/nonexistent/docker", "/nonexistent/docker (does not exist)"),
    ("/usr/local/bin/docker", "has no buildx plugin"),
])
def test_a_missing_buildkit_cli_says_how_to_get_one(host: Host, job: Callable[..., Path],
                                                    cli: str, words: str) -> None:
    if cli == "/usr/local/bin/docker" and not os.access(cli, os.X_OK):
        pytest.fail(f"{cli} (a docker 28 CLI without buildx) is part of this machine kind")
    host.build["docker_cli"] = cli
    host.egress["allow"] = []
    spec = unique_job(job)
    proc = host.bake("build", str(spec), timeout=120)
    assert proc.returncode == 1, proc.stderr
    error, *hint = one_message(proc.stderr)
    assert "no BuildKit-capable docker CLI found" in error and words in error
    assert hint and "buildx" in hint[0] and "docker.io" in hint[0]
    assert ENGINE.inspect_image(f"bake:{key_of(host, spec)}") is None


# -- signals mid-build ---------------------------------------------------------------------


def _stat_start(pid: int) -> str | None:
    """A running process's start time (None once it is gone, or a zombie waiting for
    its new parent to reap it: a zombie runs nothing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def processes_with_env(needle: bytes) -> dict[int, str]:
    """Processes whose environment holds ``needle`` (here: a build's proxy URL): the RUN
    steps of that build, wherever BuildKit runs them.  pid -> start time."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ:
            start = _stat_start(int(entry))
            if start:
                found[int(entry)] = start
    return found


def descendants(root: int) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _stat_start(child)
            if start:
                found[child] = start
                todo.append(child)
    return found


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state on sockets that ``pid`` holds open."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def alive(processes: dict[int, str]) -> dict[int, str]:
    """Those still running (same pid, same start time), as pid -> command line."""
    found = {}
    for pid, start in processes.items():
        if _stat_start(pid) == start:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found[pid] = cmdline.decode("utf-8", "replace")[:200]
    return found


def containers() -> list[list[str]]:
    """Every container on the engine, running or not: [id, command, labels]."""
    listed = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--format",
                             "{{.ID}}\t{{.Command}}\t{{.Labels}}"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [row.split("\t") for row in listed]


class BuildWatcher:
    """A `bake build` subprocess whose stderr is read line by line as it comes."""

    def __init__(self, host: Host, spec: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bake", "--config", str(host.config), "build", str(spec),
             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise AssertionError(f"never saw {what}; bake said:\n" + "\n".join(self.lines[-30:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        # Not communicate(): it would read stderr too, racing the reader thread for lines.
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # one JSON line at most; EOF when bake exits
        self.proc.wait(timeout=timeout)
        self.close()
        return self.proc.returncode, out, "\n".join(self.lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", ["proxy-up", "canary", "setup-step"])
def test_a_signal_mid_build_leaves_nothing_behind(host: Host, job: Callable[..., Path],
                                                  signum: int, phase: str) -> None:
    spec = unique_job(job, PIP_JOB)
    key = key_of(host, spec)
    if phase == "canary":
        # `bake key` resolved the requirements in a setup step of its own, whose proof of
        # confinement the build would reuse: drop it, so that the build's canary runs.
        from bake.state import state_dir

        (state_dir() / "egress-proof.json").unlink(missing_ok=True)
    build = BuildWatcher(host, spec, "--no-cache")
    pid = build.proc.pid
    ports = build.wait_for(lambda: listening_ports(pid) & set(PROXY_PORTS), 60,
                           "the build's proxy listening")
    assert isinstance(ports, set) and len(ports) == 1
    proxy_url = f"http://172.17.0.1:{ports.pop()}".encode()
    port = proxy_url.rsplit(b":", 1)[1].decode()
    steps: dict[int, str] = {}
    if phase == "canary":
        # The confinement proof: a container on the bridge, told the proxy's port.
        build.wait_for(lambda: [row for row in containers() if f" {port}\"" in row[1]], 60,
                       "the egress canary container")
    if phase == "setup-step":
        # Mid-step: a RUN process of this very build (it carries this build's proxy URL).
        found = build.wait_for(lambda: processes_with_env(b"HTTPS_PROXY=" + proxy_url), 120,
                               "a RUN step of this build running")
        assert isinstance(found, dict)
        steps = found
    children = descendants(pid)
    os.kill(pid, signum)
    code, out, err = build.finish()
    assert code == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"interrupted by {signal.Signals(signum).name}" in err, err[-3000:]
    assert out == ""
    # Nothing half-made: no image under the key, nothing of the build still running.
    assert ENGINE.inspect_image(f"bake:{key}") is None
    deadline = time.monotonic() + 30  # BuildKit cancels the step's processes asynchronously
    while (alive(steps) or alive(children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(steps), f"RUN step processes still running: {alive(steps)}"
    assert not alive(children), f"bake's children outlived it: {alive(children)}"
    assert not listening_ports(pid)
    # No container of this build: the egress canary names the proxy's port in its command.
    ours = [row for row in containers() if f"bake.job={key}" in row[2] or f" {port}\"" in row[1]]
    for row in ours:  # left by this build: remove them so a failure does not leak
        subprocess.run(["docker", "rm", "-f", row[0]], capture_output=True, check=False)
    assert ours == [], ours


# -- locks and concurrency -------------------------------------------------------------------

HOLDER = """
import sys, time
from bake.cache.store import key_lock
with key_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def lock_holder() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start a process that takes a key's build lock and sleeps holding it."""
    started: list[subprocess.Popen[str]] = []

    def hold(key: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, key], stdout=subprocess.PIPE,
                                text=True)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_lock_left_by_a_killed_process_does_not_block(host: Host, job: Callable[..., Path],
                                                        lock_holder: Callable[..., Any]) -> None:
    host.egress["allow"] = []
    spec = unique_job(job)
    key = key_of(host, spec)
    holder = lock_holder(key)
    build = BuildWatcher(host, spec, "--json")
    build.wait_for(lambda: build.saw("another build of this key is running; waiting"), 60,
                   "the build waiting for the lock")
    time.sleep(1)
    assert build.proc.poll() is None  # still waiting while the holder lives
    holder.send_signal(signal.SIGKILL)  # no cleanup, no unlock: the kernel drops the flock
    holder.wait()
    code, out, err = build.finish(timeout=300)
    assert code == 0, err[-3000:]
    result = json.loads(out)
    host.forget(result["image"])
    assert result["cached"] is False and result["key"] == key


def test_many_callers_with_one_key_share_one_build(host: Host, job: Callable[..., Path]) -> None:
    host.egress["allow"] = []
    spec = unique_job(job)
    builds = [BuildWatcher(host, spec, "--json") for _ in range(4)]
    results = []
    for build in builds:
        code, out, err = build.finish(timeout=300)
        assert code == 0, err[-3000:]
        results.append(json.loads(out))
    host.forget(results[0]["image"])
    assert len({r["image"] for r in results}) == 1
    assert sorted(r["cached"] for r in results) == [False, True, True, True]
    assert sum(build.saw("building ") for build in builds) == 1  # BuildKit ran once


def test_different_keys_build_in_parallel(host: Host, job: Callable[..., Path],
                                          lock_holder: Callable[..., Any]) -> None:
    """A build holding one key's lock blocks no other key; the same key waits for it."""
    host.egress["allow"] = []
    spec_a, spec_b = unique_job(job), unique_job(job)
    key_a = key_of(host, spec_a)
    holder = lock_holder(key_a)  # stands for a long build of A
    waiting_a = BuildWatcher(host, spec_a, "--json")
    waiting_a.wait_for(lambda: waiting_a.saw("another build of this key is running"), 60,
                       "the second build of A waiting")
    started = time.monotonic()
    proc = host.bake("build", str(spec_b), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result_b = json.loads(proc.stdout)
    host.forget(result_b["image"])
    assert result_b["cached"] is False and time.monotonic() - started < 240
    assert waiting_a.proc.poll() is None  # A is still waiting for its lock, B is done
    holder.terminate()
    holder.wait()
    code, out, err = waiting_a.finish(timeout=300)
    assert code == 0, err[-3000:]
    result_a = json.loads(out)
    host.forget(result_a["image"])
    assert result_a["cached"] is False and result_a["key"] == key_a

"""Attacks from inside a running job, through ``bake run``, on a real Engine.

One image is built for the whole module (a job whose one file, ``attack.py``,
carries every attack, chosen by argument); several spec files in the same
folder give it different ``[run]`` limits without changing the key, so every
run after the first is a key hit.  Each test asserts what the attack achieved
from inside the container, and the job's output is JSON after a ``RESULT``
marker so that bake's own lines never confuse it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CA_BUNDLE, Host

ATTACK = r'''
import ctypes, errno, json, os, signal, socket, stat, sys, time

def name(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))

def status(pid="self"):
    lines = open(f"/proc/{pid}/status").read().splitlines()
    return dict((k, v.strip()) for k, _, v in (l.partition(":") for l in lines))

def setuid_euid(path):
    """Run a setuid-root binary with its output blocked on a full pipe, then read its euid."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    pid = os.posix_spawn(path, [path, "--help"], dict(os.environ),
                         file_actions=[(os.POSIX_SPAWN_DUP2, w, 1),
                                       (os.POSIX_SPAWN_DUP2, w, 2)])
    euid = None
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            st = status(pid)
        except OSError:
            break
        if st.get("Name") == os.path.basename(path)[:15]:
            euid = int(st["Uid"].split()[1])
            if st.get("State", "").startswith("S"):
                break
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return euid

def probe():
    facts = {}
    st = status()
    facts["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()]
    facts["caps"] = {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    facts["no_new_privs"] = st["NoNewPrivs"]
    facts["seccomp"] = st["Seccomp"]
    try:
        os.setuid(0)
        facts["setuid0"] = "succeeded"
    except OSError as exc:
        facts["setuid0"] = name(exc)
    setuid_bins = []
    for folder in ("/bin", "/usr/bin", "/sbin", "/usr/sbin"):
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            path = os.path.join(folder, entry)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_ISUID and info.st_uid == 0:
                setuid_bins.append(path)
    facts["setuid_euids"] = {p: setuid_euid(p) for p in setuid_bins[:4]}
    writes = {}
    for path in ("/usr/evil", "/etc/evil", "/job/evil", "/opt/venv/evil", "/evil", "/tmp/ok",
                 "/dev/shm/ok", "/proc/sys/kernel/hostname", "/sys/kernel/evil"):
        try:
            with open(path, "w") as fh:
                fh.write("x")
            writes[path] = "written"
        except OSError as exc:
            writes[path] = name(exc)
    facts["writes"] = writes
    mounts = [line.split() for line in open("/proc/self/mountinfo")]
    facts["mounts"] = {m[4]: m[5] for m in mounts}
    socks = []
    for root, dirs, files in os.walk("/"):
        if root in ("/proc", "/sys"):
            dirs[:] = []
            continue
        for entry in files:
            try:
                if stat.S_ISSOCK(os.lstat(os.path.join(root, entry)).st_mode):
                    socks.append(os.path.join(root, entry))
            except OSError:
                pass
    facts["unix_sockets"] = socks
    facts["interfaces"] = [n for _, n in socket.if_nameindex()]
    facts["net_dev"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
    libc = ctypes.CDLL(None, use_errno=True)
    facts["unshare_userns"] = (name(OSError(ctypes.get_errno(), ""))
                               if libc.unshare(0x10000000) != 0 else "succeeded")
    facts["mount_tmpfs"] = (name(OSError(ctypes.get_errno(), ""))
                            if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0
                            else "succeeded")
    facts["cgroups"] = sorted({l.strip().split(":", 2)[2] for l in open("/proc/self/cgroup")})
    return facts

def forkbomb():
    leader = os.fork()
    if leader == 0:
        os.setpgid(0, 0)
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.01)
    time.sleep(3)
    procs = len([p for p in os.listdir("/proc") if p.isdigit()])
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        mine = "forked"
    except OSError as exc:
        mine = name(exc)
    os.killpg(leader, signal.SIGKILL)
    return {"procs": procs, "parent_fork": mine}

def balloon():
    held = []
    while True:
        held.append(b"\x01" * (4 << 20))  # bytes() of a pattern: every page is touched
        print("held", len(held) * 4, "MiB", flush=True)

def tmpfill():
    written = 0
    try:
        with open("/tmp/fill", "wb") as fh:
            while written < (256 << 20):
                fh.write(b"\0" * (1 << 20))
                fh.flush()
                written += 1 << 20
        return {"written": written, "error": None}
    except OSError as exc:
        return {"written": written, "error": name(exc)}

def output():
    os.makedirs("/out/sub", exist_ok=True)
    with open("/out/result.txt", "w") as fh:
        fh.write("result\n")
    with open("/out/sub/ok.txt", "w") as fh:
        fh.write("ok\n")
    os.symlink("/etc/passwd", "/out/passwd")
    os.symlink("/etc", "/out/etc")
    os.symlink("../../../../etc/shadow", "/out/sub/shadow")
    os.mkfifo("/out/fifo")
    return {"uid": os.getuid()}

def connect(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return {"connect": "connected"}
    except OSError as exc:
        return {"connect": name(exc) if exc.errno else type(exc).__name__}

def sleep():
    print("sleeping", flush=True)
    time.sleep(300)

what = sys.argv[1]
result = {"probe": probe, "forkbomb": forkbomb, "balloon": balloon, "tmpfill": tmpfill,
          "output": output, "env": lambda: dict(os.environ), "sleep": sleep,
          "connect": lambda: connect(*sys.argv[2:4])}[what]()
print("RESULT " + json.dumps(result), flush=True)
'''

SPEC = """\
name = "sandbox-attacks"
[job]
files = ["attack.py"]
command = ["python", "attack.py"]
[run]
timeout = "2m"
{limits}
"""
LIMITS = {
    "bake.toml": 'tmp = "16m"',
    "pids.toml": "pids = 32",
    "memory.toml": 'memory = "64m"',
}


@pytest.fixture(scope="module")
def sandbox(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The attack job, built once (offline: it needs no packages), and its seller host."""
    folder = tmp_path_factory.mktemp("sandbox")
    host = Host(folder=folder / "seller",
                # allow = []: setup runs with --network=none, so the build needs no proxy.
                egress={"allow": [], "enforce": "warn"},
                build={"ca_bundle": CA_BUNDLE} if Path(CA_BUNDLE).is_file() else {})
    host.folder.mkdir()
    job = folder / "job"
    job.mkdir()
    # A fresh nonce: the key is this module's alone, so removing the image is safe.
    (job / "attack.py").write_text(f"# nonce {uuid.uuid4()}\n{ATTACK}")
    for name, limits in LIMITS.items():
        (job / name).write_text(SPEC.format(limits=limits))
    proc = host.bake("build", str(job / "bake.toml"), "--json", check=True)
    image = json.loads(proc.stdout)["image"]
    yield {"host": host, "job": job, "image": image}
    subprocess.run(["docker", "rmi", image], capture_output=True, check=False)


def attack(sandbox: dict[str, Any], what: str, *args: str, spec: str = "bake.toml",
           env: dict[str, str] | None = None,
           extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], Any]:
    host: Host = sandbox["host"]
    proc = host.bake("run", str(sandbox["job"] / spec), *extra, "--", what, *args, env=env,
                     timeout=180)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return proc, json.loads(found[-1][7:]) if found else None


@pytest.fixture(scope="module")
def probe(sandbox: dict[str, Any]) -> dict[str, Any]:
    proc, facts = attack(sandbox, "probe")
    assert proc.returncode == 0 and facts is not None, proc.stdout + proc.stderr
    return facts  # type: ignore[no-any-return]


def test_the_job_runs_as_a_non_root_user(probe: dict[str, Any]) -> None:
    uid, euid, gid, egid, groups = probe["ids"]
    assert uid == euid == 10001 and gid == egid == 10001
    assert 0 not in groups
    assert probe["setuid0"] == "EPERM"


def test_the_job_has_no_capabilities(probe: dict[str, Any]) -> None:
    for name, value in probe["caps"].items():
        assert int(value, 16) == 0, f"{name} = {value}"
    assert probe["seccomp"] == "2"  # the Engine's default seccomp filter is on


def test_setuid_binaries_do_not_elevate(probe: dict[str, Any]) -> None:
    assert probe["no_new_privs"] == "1"
    euids = probe["setuid_euids"]
    # The base image has setuid-root binaries (su, mount, passwd...): the attack is real.
    assert euids, "no setuid-root binary found in the image: the attack proves nothing"
    for path, euid in euids.items():
        assert euid == 10001, f"{path} ran with euid {euid}"


def test_the_root_filesystem_is_read_only(probe: dict[str, Any]) -> None:
    writes = probe["writes"]
    for path in ("/usr/evil", "/etc/evil", "/job/evil", "/opt/venv/evil", "/evil"):
        assert writes[path] in ("EROFS", "EACCES"), (path, writes[path])
    assert probe["mounts"]["/"].split(",")[0] == "ro"
    assert writes["/proc/sys/kernel/hostname"] in ("EROFS", "EACCES")
    assert writes["/sys/kernel/evil"] in ("EROFS", "EACCES", "ENOENT")


def test_tmp_and_shm_are_writable(probe: dict[str, Any]) -> None:
    assert probe["writes"]["/tmp/ok"] == "written"
    assert probe["writes"]["/dev/shm/ok"] == "written"
    assert "nosuid" in probe["mounts"]["/tmp"] and "nodev" in probe["mounts"]["/tmp"]


def test_tmp_is_size_limited(sandbox: dict[str, Any]) -> None:
    proc, result = attack(sandbox, "tmpfill")
    assert result is not None, proc.stderr
    assert result["error"] == "ENOSPC", result
    # [run] tmp = "16m": it filled up at the limit, not before and not after.
    assert 8 << 20 <= result["written"] <= 16 << 20


def test_no_docker_socket_and_no_host_paths(probe: dict[str, Any]) -> None:
    assert probe["unix_sockets"] == []
    allowed = ("/", "/tmp", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts")
    for point in probe["mounts"]:
        assert point in allowed or point.startswith(("/proc", "/dev", "/sys")), point


def test_no_user_namespaces_and_no_mounts(probe: dict[str, Any]) -> None:
    assert probe["unshare_userns"] == "EPERM"
    assert probe["mount_tmpfs"] == "EPERM"


def test_the_job_sees_a_private_cgroup_namespace(probe: dict[str, Any]) -> None:
    # The host's cgroup paths (e.g. /docker/<other container ids>) stay hidden.
    assert probe["cgroups"] == ["/"], probe["cgroups"]


def test_no_network_interface_but_loopback(probe: dict[str, Any]) -> None:
    assert probe["interfaces"] == ["lo"]
    assert probe["net_dev"] == ["lo"]


def test_the_job_cannot_reach_a_listener_on_the_bridge_gateway(sandbox: dict[str, Any]) -> None:
    from bake.engine import Engine

    gateway = Engine.from_env().bridge_gateway()
    listener = socket.socket()
    listener.bind((gateway, 0))
    listener.listen(1)
    listener.settimeout(0.5)
    try:
        proc, result = attack(sandbox, "connect", gateway, str(listener.getsockname()[1]))
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing came in
    finally:
        listener.close()
    assert result is not None, proc.stderr
    assert result["connect"] in ("ENETUNREACH", "EHOSTUNREACH", "timeout"), result


def test_a_fork_bomb_is_stopped_by_the_pids_limit(sandbox: dict[str, Any]) -> None:
    proc, result = attack(sandbox, "forkbomb", spec="pids.toml")
    assert proc.returncode == 0 and result is not None, proc.stdout[-2000:] + proc.stderr
    assert result["parent_fork"] == "EAGAIN"
    assert result["procs"] <= 32


def test_a_memory_balloon_is_reported_as_a_memory_kill(sandbox: dict[str, Any]) -> None:
    proc, _ = attack(sandbox, "balloon", spec="memory.toml", extra=("--json",))
    assert proc.returncode == 137, proc.stdout + proc.stderr[-2000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["oom_killed"] is True and outcome["exit_code"] == 137
    assert "held 4 MiB" in proc.stderr  # it did run and allocate before the kill
    assert "was killed for using more than its memory limit (64 MiB" in proc.stderr


def test_output_collects_files_but_not_links(sandbox: dict[str, Any], tmp_path: Path) -> None:
    dest = tmp_path / "out"
    proc, result = attack(sandbox, "output", extra=("--output", str(dest)))
    assert proc.returncode == 0 and result == {"uid": 10001}, proc.stderr
    assert (dest / "result.txt").read_text() == "result\n"
    assert (dest / "sub" / "ok.txt").read_text() == "ok\n"
    for name in ("passwd", "etc", "sub/shadow", "fifo"):
        assert not os.path.lexists(dest / name), name
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == \
        ["result.txt", "sub", "sub/ok.txt"]


def test_the_sellers_environment_never_reaches_the_job(sandbox: dict[str, Any],
                                                       tmp_path: Path) -> None:
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    # The CLI and docker-py both read proxies from here and copy them into containers.
    (docker_config / "config.json").write_text(json.dumps({"proxies": {"default": {
        "httpProxy": "http://docker-config-canary.invalid:3128",
        "httpsProxy": "http://docker-config-canary.invalid:3128",
        "noProxy": "docker-config-canary"}}}))
    env = {"HF_TOKEN": "secret-canary", "HUGGING_FACE_HUB_TOKEN": "secret-canary",
           "HTTPS_PROXY": "http://seller-proxy-canary.invalid:3128",
           "HTTP_PROXY": "http://seller-proxy-canary.invalid:3128",
           "AWS_SECRET_ACCESS_KEY": "secret-canary", "DOCKER_CONFIG": str(docker_config)}
    proc, job_env = attack(sandbox, "env", env=env)
    assert proc.returncode == 0 and job_env is not None, proc.stderr
    text = json.dumps(job_env)
    for canary in ("secret-canary", "seller-proxy-canary", "docker-config-canary"):
        assert canary not in text, canary
    assert not any(name.lower().endswith("_proxy") for name in job_env)
    assert job_env["HOME"] == "/tmp" and job_env["PATH"].startswith("/opt/venv/bin")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_job_stops_and_removes_its_container(sandbox: dict[str, Any],
                                                                 signum: int) -> None:
    host: Host = sandbox["host"]
    key = sandbox["image"].rpartition(":")[2]
    proc = subprocess.Popen([sys.executable, "-m", "bake", "--config", str(host.config), "run",
                             str(sandbox["job"] / "bake.toml"), "--", "sleep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sleeping"
        running = subprocess.run(["docker", "ps", "-q", "--filter", f"label=bake.job={key}"],
                                 capture_output=True, text=True, check=True).stdout.split()
        assert len(running) >= 1  # the job's container, running now
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=bake.job={key}"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert not set(running) & set(left)


def test_no_container_is_left_behind(sandbox: dict[str, Any]) -> None:
    """bake labels a job's container with its key and removes it, whatever the job did."""
    proc, result = attack(sandbox, "connect", "127.0.0.1", "9")
    assert proc.returncode == 0 and result is not None, proc.stderr
    key = sandbox["image"].rpartition(":")[2]
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=bake.job={key}"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []  # neither this run's nor the killed, bombed and ballooned ones above

"""Issue 2 end to end: bake.toml -> key -> BuildKit image -> offline run, on a real Engine."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bake.engine import Engine
from tests.integration.conftest import Host, processes_mentioning

ENGINE = Engine.from_env()

TWO_PACKAGES = """\
name = "two-packages"
template = "python"
[python]
requirements = ["six==1.16.0", "idna==3.10"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
env = { GREETING = "hello" }
[run]
memory = "256m"
timeout = "2m"
"""

MAIN = """\
import os, socket, sys
import six, idna
print(os.environ["GREETING"], six.__version__, idna.__version__)
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
target = sys.argv[1:3]
if target:
    try:
        socket.create_connection((target[0], int(target[1])), timeout=3)
        print("connected")
    except OSError as exc:
        print("blocked", type(exc).__name__)
if len(sys.argv) > 3:
    sys.exit(int(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One real build of the two-package job, shared by the tests that only read it."""
    from tests.conftest import write_job
    from tests.integration.conftest import CA_BUNDLE, engine, machine_cidrs  # noqa: F401

    folder = tmp_path_factory.mktemp("built")
    h = Host(folder=folder / "seller",
             egress={"allow_cidrs": machine_cidrs(), "enforce": "warn"},
             build={"ca_bundle": CA_BUNDLE} if Path(CA_BUNDLE).is_file() else {})
    h.folder.mkdir()
    spec = write_job(folder / "job", TWO_PACKAGES, {"main.py": MAIN})
    proc = h.bake("build", str(spec), "--json", "--no-cache", check=True)
    result = json.loads(proc.stdout)
    yield {"host": h, "spec": spec, "result": result, "stderr": proc.stderr}
    subprocess.run(["docker", "rmi", "-f", result["image"]], capture_output=True, check=False)


def test_build_makes_a_labelled_image(engine: None, built: dict[str, object]) -> None:
    result = built["result"]
    assert isinstance(result, dict)
    assert result["cached"] is False and result["pulled"] is False
    assert result["image"] == f"bake:{result['key']}"
    info = ENGINE.inspect_image(str(result["image"]))
    assert info is not None
    labels = info["Config"]["Labels"]
    assert labels["bake.key"] == result["key"]
    manifest = json.loads(labels["bake.manifest"])
    # The key hashes what the requirements locked to: each distribution's file and sha256.
    assert [f"{d['name']}=={d['version']}" for d in manifest["python"]["distributions"]] == \
        ["idna==3.10", "six==1.16.0"]
    assert all(len(d["sha256"]) == 64 for d in manifest["python"]["distributions"])
    assert labels["bake.locked"] == result["locked"]
    # Seller settings never reach the image: no proxy, CA or pip config in env or history.
    config_text = json.dumps(info["Config"])
    assert "39100" not in config_text and "PIP_" not in json.dumps(info["Config"]["Env"])
    history = subprocess.run(["docker", "history", "--no-trunc", str(result["image"])],
                             capture_output=True, text=True, check=True).stdout
    assert "proxy" not in history.lower() and "ca-certificates" not in history


def test_second_build_is_a_key_hit(engine: None, built: dict[str, object]) -> None:
    host, spec = built["host"], built["spec"]
    assert isinstance(host, Host)
    proc = host.bake("build", str(spec), "--json", check=True)
    again = json.loads(proc.stdout)
    assert again["cached"] is True and again["key"] == built["result"]["key"]  # type: ignore[index]
    assert "building" not in proc.stderr  # BuildKit never started
    assert again["egress_log"] is None


def test_run_is_offline_and_returns_the_job_code(engine: None, built: dict[str, object]) -> None:
    host, spec = built["host"], built["spec"]
    assert isinstance(host, Host)
    listener = socket.socket()
    listener.bind(("172.17.0.1", 0))  # the host, as a job on the default bridge would see it
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        proc = host.bake("run", str(spec), "--", "172.17.0.1", str(port), "7")
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
    assert proc.returncode == 7, proc.stderr
    assert "hello 1.16.0 3.10" in proc.stdout
    assert "interfaces ['lo']" in proc.stdout
    assert "blocked" in proc.stdout and "connected" not in proc.stdout


def test_run_by_image_uses_the_baked_command(engine: None, built: dict[str, object]) -> None:
    host = built["host"]
    assert isinstance(host, Host)
    proc = host.bake("run", str(built["result"]["image"]), "--json")  # type: ignore[index]
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 0
    assert "hello 1.16.0 3.10" in proc.stderr  # with --json the job's stdout goes to stderr


def test_requirements_nothing_satisfies_are_exit_2_before_any_build(
        host: Host, job: Callable[..., Path]) -> None:
    """A requirement the index does not have fails the lock stage (uv's own words), before a
    key exists: exit 2 naming the field, no image, no container.  (A setup that fails on
    locked bytes is exit 3: tests/integration/test_lock_build.py.)"""
    spec = job(TWO_PACKAGES.replace('"idna==3.10"', '"bake-no-such-package-zzz==1.0"'),
               {"main.py": MAIN})
    proc = host.bake("build", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert "python.requirements" in proc.stderr and "bake-no-such-package-zzz" in proc.stderr
    assert "Traceback" not in proc.stderr and "building" not in proc.stderr
    assert _bake_containers() == []


def test_concurrent_builds_of_one_key_share_one_build(host: Host,
                                                      job: Callable[..., Path]) -> None:
    spec = job(TWO_PACKAGES.replace("hello", f"concurrent-{time.time_ns()}"), {"main.py": MAIN})
    procs = [subprocess.Popen([sys.executable, "-m", "bake", "--config", str(host.config),
                               "build", str(spec), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    host.forget(results[0]["image"])
    assert len({r["key"] for r in results}) == 1
    assert sorted(r["cached"] for r in results) == [False, True, True]


def test_interrupted_build_leaves_nothing_behind(host: Host, job: Callable[..., Path]) -> None:
    # setup.py-free trick: a requirement that takes a while to resolve is not reliable,
    # so the job's build step is made slow by a big-but-real download: interrupt once
    # BuildKit has started the step.
    spec = job(TWO_PACKAGES.replace('"idna==3.10"', '"numpy==2.1.3"'), {"main.py": MAIN})
    key = host.bake("key", str(spec), check=True).stdout.split()[0]
    proc = subprocess.Popen([sys.executable, "-m", "bake", "--config", str(host.config),
                             "build", str(spec), "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "RUN --mount" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert ENGINE.inspect_image(f"bake:{key}") is None
    assert _bake_containers() == []
    assert processes_mentioning(str(host.config)) == []  # no proxy, no docker CLI behind


def _bake_containers() -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", "label=bake.job", "-q"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


SLEEPER = """\
template = "python"
[job]
command = ["python", "-c", "import time; print('started', flush=True); time.sleep(300)"]
[run]
timeout = "3s"
"""


def test_run_past_its_timeout_exits_124(host: Host, job: Callable[..., Path]) -> None:
    spec = job(SLEEPER)
    started = time.monotonic()
    proc = host.bake("run", str(spec))
    assert proc.returncode == 124, proc.stderr
    assert time.monotonic() - started < 60
    assert "timed out" in proc.stderr
    assert _bake_containers() == []
    host.forget(f"bake:{host.bake('key', str(spec), check=True).stdout.split()[0]}")


def test_interrupted_run_removes_its_container(host: Host, job: Callable[..., Path]) -> None:
    spec = job(SLEEPER.replace('timeout = "3s"', 'timeout = "5m"'))
    host.bake("build", str(spec), check=True)
    host.forget(f"bake:{host.bake('key', str(spec), check=True).stdout.split()[0]}")
    proc = subprocess.Popen([sys.executable, "-m", "bake", "--config", str(host.config),
                             "run", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    assert len(_bake_containers()) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _bake_containers() == []

"""Issue 3 with a real Engine: setup steps reach the allowlisted origins and nothing else.

The attacker is a package whose ``setup.py`` runs during ``pip install`` (a
sdist, ``only_binary = false``) and tries every way out it can think of.  With
the host locked every attempt fails, the host listener sees nothing, the egress
log records the denials, and the allowed downloads still work.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bake.egress import lockdown
from bake.engine import Engine
from tests.integration.conftest import Host, machine_cidrs, processes_mentioning
from tests.integration.pkgindex import (
    fetch_build_deps,
    fetch_tool,
    sdist,
    serve_index,
    write_simple_index,
)

ENGINE = Engine.from_env()

ATTACK_SETUP = r'''
import json, os, socket
from setuptools import setup

cfg = {CFG}
results = {}

def attempt(name, fn):
    try:
        results[name] = "connected: " + fn()
    except Exception as exc:
        results[name] = "failed: %s: %s" % (type(exc).__name__, exc)

def direct(host, port):
    socket.create_connection((host, port), timeout=5).close()
    return "%s:%s" % (host, port)

def via_proxy(target):
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    host, port = proxy.rsplit("/", 1)[-1].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    # CRLF spelled without the two-character escape: setuptools' PEP 517 legacy backend
    # (what uv builds a setup.py project with) rewrites every literal backslash-r-backslash-n
    # in setup.py to backslash-n before running it.
    crlf = chr(13) + chr(10)
    s.sendall(("CONNECT %s HTTP/1.1%sHost: %s%s%s" % (target, crlf, target, crlf, crlf)).encode())
    answer = s.recv(200).decode("latin-1")
    s.close()
    if " 200 " not in answer.split(crlf)[0]:
        raise ConnectionRefusedError(answer.split(crlf)[0])
    return answer.split(crlf)[0]

attempt("direct_host_listener", lambda: direct(cfg["gateway"], cfg["listener"]))
attempt("direct_index_by_name", lambda: direct(cfg["name"], 443))
attempt("direct_index_by_ip", lambda: direct(cfg["ip"], 443))
attempt("direct_other_host_port", lambda: direct(cfg["gateway"], 22))
attempt("proxy_denied_name", lambda: via_proxy("bake-denied.example:443"))
attempt("proxy_host_port", lambda: via_proxy("%s:%d" % (cfg["gateway"], cfg["listener"])))
attempt("proxy_ip_literal", lambda: via_proxy("%s:443" % cfg["ip"]))
os.makedirs("/opt/venv", exist_ok=True)
with open("/opt/venv/bake-attack.json", "w") as fh:
    json.dump(results, fh)
setup(name="bake-attack", version="1.0", py_modules=["bake_attack"])
'''

SLEEPY_SETUP = r'''
import time
time.sleep(600)
from setuptools import setup
setup(name="bake-sleepy", version="1.0", py_modules=["bake_sleepy"])
'''

SPEC = """\
template = "python"
[python]
requirements = ["{requirement}"]
only_binary = false
[job]
command = ["python", "-c", "print(open('/opt/venv/bake-attack.json').read())"]
"""


@pytest.fixture(scope="module")
def listener(engine: None) -> Iterator[tuple[socket.socket, int]]:
    """A host listener on the bridge gateway that no build step may reach."""
    sock = socket.socket()
    sock.bind((ENGINE.bridge_gateway(), 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock, sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module")
def index(engine: None, listener: tuple[socket.socket, int],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    root = tmp_path_factory.mktemp("index")
    files = root / "files"
    files.mkdir()
    fetch_build_deps(files)
    fetch_tool(files)  # bake's own resolver and installer, as a seller's mirror has it
    gateway = ENGINE.bridge_gateway()
    index_ip = next(iter(machine_cidrs()), "203.0.113.80/32").split("/")[0]
    cfg = {"gateway": gateway, "listener": listener[1], "name": "pypi.org", "ip": index_ip}
    sdist(files, "bake-attack", "1.0", ATTACK_SETUP.replace("{CFG}", json.dumps(cfg)))
    sdist(files, "bake-sleepy", "1.0", SLEEPY_SETUP)
    write_simple_index(files, root)
    with serve_index(root, gateway) as running:
        yield running


def _configure(host: Host, index: object) -> None:
    host.egress["allow_http"] = [index.origin]  # type: ignore[attr-defined]
    host.build["pip_index_url"] = index.url  # type: ignore[attr-defined]


def test_setup_code_cannot_get_out(host: Host, job: Callable[..., Path], locked: None,
                                   listener: tuple[socket.socket, int], index: object) -> None:
    _configure(host, index)
    host.egress["enforce"] = "require"
    spec = job(SPEC.replace("{requirement}", "bake-attack==1.0"))
    # --no-cache: BuildKit would otherwise reuse an earlier run's setup step, and
    # the attack would not run at all.
    proc = host.bake("build", str(spec), "--json", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    host.forget(result["image"])
    assert result["egress"] == "enforced"

    run = host.bake("run", result["image"])
    assert run.returncode == 0, run.stderr
    attempts = json.loads(run.stdout)
    assert attempts, run.stdout
    for name, outcome in attempts.items():
        assert outcome.startswith("failed"), f"{name}: {outcome}"
    # The denials are the proxy's own answers, not lucky timeouts.
    assert "403" in attempts["proxy_denied_name"] and "403" in attempts["proxy_host_port"]
    assert "Timeout" not in attempts["direct_host_listener"]

    with pytest.raises(BlockingIOError):
        listener[0].accept()  # the host listener saw nothing

    log = [json.loads(line) for line in Path(result["egress_log"]).read_text().splitlines()]
    denied = {(e["host"], e["reason"]) for e in log if e["decision"] == "denied"}
    assert ("bake-denied.example", "not-allowlisted") in denied
    assert any(h == ENGINE.bridge_gateway() for h, _ in denied)
    allowed = [e for e in log if e["decision"] == "allowed"]
    assert allowed, "the allowed downloads from the local index went through the proxy"
    assert index.requests  # type: ignore[attr-defined]


def test_require_refuses_an_unconfined_host(host: Host, job: Callable[..., Path],
                                            locked: None) -> None:
    host.egress["enforce"] = "require"
    # A command of its own: an image of the same key left by another run would be a hit.
    spec = job("[python]\nrequirements = [\"six==1.16.0\"]\n[job]\n"
               f"command = [\"true\", \"{uuid.uuid4().hex}\"]\n")
    lockdown.unlock()
    try:
        proc = host.bake("build", str(spec))
    finally:
        lockdown.lock(ENGINE)
    assert proc.returncode == 5, proc.stderr
    assert "bake egress lock" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_proves_the_lock(host: Host, locked: None) -> None:
    proc = host.bake("egress", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    proof = json.loads(proc.stdout)
    assert proof["enforced"] is True
    assert proof["checks"]["direct"].startswith("failed")
    assert proof["checks"]["proxy"].startswith("HTTP/1.1 403")


def test_unlock_removes_exactly_what_lock_added(engine: None, locked: None) -> None:
    def rules() -> str:
        return subprocess.run(["iptables", "-S"], capture_output=True, text=True,
                              check=True).stdout

    locked_rules = rules()
    lockdown.unlock()
    try:
        unlocked_rules = rules()
        assert "BAKE-EGRESS" not in unlocked_rules
        assert not lockdown.locked_rules_present(ENGINE)
    finally:
        lockdown.lock(ENGINE)
    assert rules() == locked_rules
    others = [r for r in locked_rules.splitlines() if "BAKE-EGRESS" not in r]
    assert others == unlocked_rules.splitlines()


def test_locking_a_locked_host_again_never_leaves_it_open(engine: None, locked: None) -> None:
    """``bake egress lock`` on a locked host (each bootstrap does it) replaces bake's rules in
    one commit: a watcher reading the chains all the while never finds them without their
    REJECT rules.  (Flushed and refilled rule by rule, they were open for milliseconds at a
    time, each time.)"""
    chains = (lockdown.CHAIN_IN, lockdown.CHAIN_FWD)
    seen: list[str] = []
    open_views: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for chain in chains:
                view = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True,
                                      text=True, check=False).stdout
                seen.append(chain)
                if "-j REJECT" not in view:
                    open_views.append(f"{chain}: {view!r}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(25):
            lockdown.lock(ENGINE)
    finally:
        done.set()
        watcher.join(timeout=30)
    assert len(seen) > 50, len(seen)  # it did watch while the locks ran
    assert open_views == []
    assert lockdown.locked_rules_present(ENGINE)


def test_setup_past_its_time_limit_exits_4_and_leaves_no_image(
        host: Host, job: Callable[..., Path], index: object) -> None:
    _configure(host, index)
    host.egress["setup_timeout"] = 20
    spec = job(SPEC.replace("{requirement}", "bake-sleepy==1.0"))
    # The sdist's setup.py runs (and sleeps) as soon as the requirements are resolved: the
    # resolve step is a setup step too, bounded by the same limit, and it makes no image (its
    # result is files); with no lock there is no key, so nothing can be tagged.
    started = time.monotonic()
    proc = host.bake("build", str(spec))
    elapsed = time.monotonic() - started
    assert proc.returncode == 4, proc.stderr
    assert "time limit of 20 s" in proc.stderr and "resolving" in proc.stderr
    assert elapsed < 20 + 20, elapsed  # stopped within seconds of the limit
    from bake.state import state_dir

    assert not list((state_dir() / "resolve").glob("*.json"))  # no resolution kept
    assert processes_mentioning(str(host.config)) == []  # no proxy, no docker CLI behind


def test_a_kept_proof_never_outlives_a_change_of_the_firewall(engine: None, locked: None) -> None:
    from tests.integration.conftest import BASE

    gateway = ENGINE.bridge_gateway()
    first = lockdown.prove_recent(ENGINE, BASE, gateway)
    second = lockdown.prove_recent(ENGINE, BASE, gateway)
    assert first.enforced and second.enforced
    assert second.checks.get("cached") is True  # the canary did not run again
    lockdown.unlock()
    try:
        unlocked = lockdown.prove_recent(ENGINE, BASE, gateway)
    finally:
        lockdown.lock(ENGINE)
    assert not unlocked.enforced
    assert "cached" not in unlocked.checks
    relocked = lockdown.prove_recent(ENGINE, BASE, gateway)
    assert relocked.enforced and "cached" not in relocked.checks  # a fresh canary

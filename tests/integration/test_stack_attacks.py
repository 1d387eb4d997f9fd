"""Attacks on the shared wheelhouse and on stacks, with real parts (a local index, bake's
proxy, Engine 20.10's BuildKit, uv, a local Hub for the self-check).

1. An sdist whose build code (buyer code, in the job's own step) looks for the wheelhouse
   and tries to replace a cached wheel and to plant one: it finds nothing it can write,
   and a later job installs the original bytes, hash-checked, from the wheelhouse.
2. A wheel carrying a ``.pth`` file: it runs whenever an interpreter starts in the job's
   venv -- bytecode compilation, a second install on a stack, the offline self-check --
   and tries to read every seller secret and to write the wheelhouse.  In none of those
   starts is a secret mounted or the wheelhouse writable.

Each test fails when the protection goes (checked by hand: a writable wheelhouse mount, or
a secret, in the steps where buyer code runs).
"""

from __future__ import annotations

import json
import secrets
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bake.builder.buildkit import find_cli, plan_build, run_build
from bake.engine import Engine
from bake.lock.format import parse_lock
from bake.stacks.wheelhouse import DOWNLOAD_MOUNT, MOUNT
from tests.integration.conftest import Host
from tests.integration.pkgindex import (
    RunningIndex,
    fetch_build_deps,
    fetch_hub_client,
    fetch_tool,
    sdist,
    serve_index,
    wheel,
    write_simple_index,
)
from tests.machines import LocalRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import HubRepo, RunningHub, start_hub

ENGINE = Engine.from_env()
RUN = uuid.uuid4().hex[:12]  # new bytes each run: the engine's wheelhouse never saw them
CANARY = "hf_bakeStackCanary" + RUN
MODEL = "bake-stacks/model"

# Where a build step could meet the wheelhouse: bake's mount point, and any mount whose
# path says so.  The victim's wheel there (only it: should a protection be gone, the
# engine's other wheels stay whole) is overwritten in place and replaced, and a new wheel
# is planted.  What happened is kept.
PROBE = r'''
import json, os, sys

def mounts():
    found = []
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                parts = line.split()
                found.append((parts[1], parts[3].split(",")))
    except OSError:
        pass
    return found

def attack():
    found = {}
    mounted = []
    roots = ["/opt/bake/wheelhouse"] + [m for m, _ in mounts() if "wheel" in m]
    for root in roots:
        if not os.path.isdir(root):
            continue
        if os.path.ismount(root):
            mounted.append(root)
        for folder, _, names in os.walk(root):
            for name in names:
                if not name.startswith(("victim-", "planted-")):
                    continue
                path = os.path.join(folder, name)
                try:
                    with open(path, "r+b") as fh:
                        fh.write(b"PWNED")
                    found[path] = "WROTE"
                except OSError as exc:
                    found[path] = "refused: %s" % exc.errno
                try:
                    with open(path + ".new", "wb") as fh:
                        fh.write(b"PWNED")
                    os.replace(path + ".new", path)
                    found[path + " (replace)"] = "WROTE"
                except OSError as exc:
                    found[path + " (replace)"] = "refused: %s" % exc.errno
        try:
            with open(os.path.join(root, "planted-1.0-py3-none-any.whl"), "wb") as fh:
                fh.write(b"PWNED")
            found[root + "/planted"] = "WROTE"
        except OSError as exc:
            found[root + "/planted"] = "refused: %s" % exc.errno
    secrets = {}
    if os.path.isdir("/run/secrets"):
        for name in sorted(os.listdir("/run/secrets")):
            try:
                with open(os.path.join("/run/secrets", name), errors="replace") as fh:
                    secrets[name] = fh.read(300)
            except OSError as exc:
                secrets[name] = "unreadable: %s" % exc.errno
    return {
        "argv": sys.argv[:2],
        "wheelhouse": found,
        "mounted": mounted,
        "secrets": secrets,
        "env": sorted(k for k in os.environ
                      if any(w in k.upper() for w in ("TOKEN", "PASSWORD", "SECRET", "AUTH",
                                                      "CREDENTIAL", "INDEX_URL"))),
        "rw_mounts": sorted(m for m, options in mounts() if "rw" in options
                            and m.startswith(("/opt/bake", "/run/secrets", "/tmp/bake"))),
        "install_list": open("/tmp/bake/wheels.txt").read()
        if os.path.exists("/tmp/bake/wheels.txt") else "",
    }
'''

# 1. An sdist's setup.py: the attack, then an ordinary build that keeps what it found.
SDIST_SETUP = PROBE + r'''
result = attack()
with open("sdattack.py", "w") as fh:
    fh.write("RESULT = %r\n" % json.dumps(result))
from setuptools import setup
setup(name="sdattack", version="1.0", py_modules=["sdattack"])
'''

# 2. A .pth line that imports the probe at every interpreter start in the venv; each start
#    says what it found on stderr (the build's log, the self-check's output) and, where it
#    can, appends it to a file in the venv (the layer being built).
PTH_HOOK = PROBE + r'''
record = attack()
line = "EVILPTH " + json.dumps(record, sort_keys=True)
sys.stderr.write(line + "\n")
try:
    with open("/opt/venv/evilpth.log", "a") as fh:
        fh.write(line + "\n")
except OSError:
    pass
'''

VICTIM_MAIN = "import victim\nprint(victim.VICTIM, victim.RUN)\n"


def _spec(*requirements: str, only_binary: bool = True, models: str = "",
          command: str = '["python", "main.py"]') -> str:
    reqs = ", ".join(f'"{r}"' for r in requirements)
    return (f'template = "python"\n[python]\nrequirements = [{reqs}]\n'
            f"only_binary = {'true' if only_binary else 'false'}\n{models}"
            f'[job]\nfiles = ["main.py"]\ncommand = {command}\n')


@pytest.fixture(scope="module")
def index(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIndex]:
    root = tmp_path_factory.mktemp("attack-index")
    files = root / "files"
    files.mkdir()
    wheel(files, "victim", "1.0", {"victim.py": f"VICTIM = 'original'\nRUN = {RUN!r}\n"})
    # filler is the largest wheel by far: in a job of two wheels it gets the first install
    # layer, so that the other one is installed afresh on top of it (alone in the first
    # layer, it would be the layer an earlier job of that one wheel made, reused).
    padding = secrets.token_hex(32768)  # does not compress
    wheel(files, "filler", "1.0", {"filler.py": f"RUN = {RUN!r}\nPAD = {padding!r}\n"})
    wheel(files, "other", "1.0", {"other.py": f"RUN = {RUN!r}\n"})
    wheel(files, "rotting", "1.0", {"rotting.py": f"STATE = 'original'\nRUN = {RUN!r}\n"})
    wheel(files, "evilpth", "1.0", {"evilpth.pth": "import evilpth_hook\n",
                                    "evilpth_hook.py": PTH_HOOK + f"# {RUN}\n"})
    sdist(files, "sdattack", "1.0", SDIST_SETUP + f"# {RUN}\n")
    fetch_tool(files)
    fetch_build_deps(files)  # setuptools and wheel: the sdist's build dependencies
    fetch_hub_client(files)  # the fetch stages' Hub client, for the self-check's model
    write_simple_index(files, root)
    with serve_index(root, ENGINE.bridge_gateway()) as running:
        yield running


@pytest.fixture(scope="module")
def hub(engine: None) -> Iterator[RunningHub]:
    repos = [HubRepo("model", MODEL, branches={"main": {"config.json": b'{"x": 1}\n'}})]
    with start_hub(repos, host=ENGINE.bridge_gateway(), tokens=[CANARY]) as running:
        yield running


@pytest.fixture(scope="module")
def repository(registry: LocalRegistry) -> Iterator[str]:
    repo = registry.repository("attacks")
    yield repo
    registry.forget_local(repo)


@pytest.fixture
def seller(host: Host, locked: None, index: RunningIndex, hub: RunningHub,
           repository: str) -> Host:
    host.egress["allow_http"] = [index.origin, hub.endpoint]
    host.build["pip_index_url"] = index.url
    host.build["hf_endpoint"] = hub.endpoint
    host.registry["repository"] = repository
    host.registry["push"] = False
    return host


def _build(seller: Host, spec: Path) -> tuple[dict[str, Any], str]:
    proc = seller.bake("build", str(spec), "--json", env={"HF_TOKEN": CANARY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def _records(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        if "EVILPTH " in line:
            found.append(json.loads(line.split("EVILPTH ", 1)[1]))
    return found


def _harmless(record: dict[str, Any]) -> None:
    """What a start of the venv's interpreter found: nothing of the seller's, nothing of the
    wheelhouse it could write."""
    assert record["secrets"] == {}, record
    assert record["env"] == [], record
    assert record["rw_mounts"] == [], record
    assert all(not outcome.startswith("WROTE") for outcome in record["wheelhouse"].values()), (
        record)
    assert record["wheelhouse"], record  # it did look, and found the wheelhouse (or its folder)


def test_an_sdists_build_cannot_replace_a_cached_wheel(
        seller: Host, job: Callable[..., Path]) -> None:
    _first, stderr = _build(seller, job(_spec("victim==1.0"), {"main.py": VICTIM_MAIN}))
    assert "fetched victim-1.0-py3-none-any.whl" in stderr  # now in the wheelhouse
    attacker = job(_spec("victim==1.0", "sdattack==1.0", only_binary=False),
                   {"main.py": "import sdattack\nprint(sdattack.RESULT)\n"})
    _build(seller, attacker)
    found = json.loads(seller.bake("run", str(attacker), check=True).stdout.strip())
    # The sdist was built where the wheelhouse is not mounted: no wheel of it to write (what
    # it "planted" went into the job's own layer, in the empty folder a mount point left).
    # (uv runs setup.py twice: the second run finds what the first planted there.)
    assert found["mounted"] == [], found
    assert not [m for m in found["rw_mounts"] if "wheelhouse" in m], found
    assert [p for p in found["wheelhouse"] if "planted" not in p] == [], found
    # What it could read there: the relay's address (no credentials) and the CA bundle.
    assert set(found["secrets"]) <= {"bake_index", "bake_ca"}, found
    assert "@" not in found["secrets"].get("bake_index", "")
    # A later job installs the victim from the wheelhouse, hash-checked: the original bytes.
    later = job(_spec("victim==1.0", "filler==1.0"), {"main.py": VICTIM_MAIN})
    _result, stderr = _build(seller, later)
    assert "fetched victim" not in stderr  # from the wheelhouse, not the index
    assert "+ victim==1.0" in stderr
    assert seller.bake("run", str(later), check=True).stdout.split() == ["original", RUN]


def test_a_pth_never_meets_a_secret_or_a_writable_wheelhouse(
        seller: Host, job: Callable[..., Path]) -> None:
    seller.build["stacks"] = "images"
    show = '["python", "-c", "print(open(\'/opt/venv/evilpth.log\').read())"]'
    # 1. Bytecode compilation in the venv: the .pth runs as soon as it is installed (uv
    #    keeps its workers' stderr: what the .pth found is in the layer's log); with the
    #    two wheels in two install layers, the second layer's install starts it again.
    first = job(_spec("evilpth==1.0", "victim==1.0", command=show), {"main.py": "print(1)\n"})
    _build(seller, first)
    compiled = _records(seller.bake("run", str(first), check=True).stdout)
    assert any("compileall" in " ".join(r["argv"]) for r in compiled), compiled
    # 2. A second install on a stack (the first job's deps, kept as one): uv starts the venv's
    #    interpreter to ask what it is, then compiles; 3. the offline self-check of a model.
    models = f'[[models]]\nrepo = "{MODEL}"\n'
    second = job(_spec("evilpth==1.0", "victim==1.0", "other==1.0", models=models,
                       command=show), {"main.py": "print(1)\n"})
    result, stderr = _build(seller, second)
    assert result["stack"] is not None, stderr[-3000:]  # built on the first job's deps
    kept = _records(seller.bake("run", str(second), check=True).stdout)
    on_stack = [r for r in kept if "other==1.0" in r["install_list"]]
    assert len(on_stack) >= 2, kept  # uv's question to the interpreter, and compileall
    checked = [r for r in _records(stderr) if "hubfetch.py" in " ".join(r["argv"])]
    assert checked, stderr[-3000:]
    for record in (*compiled, *kept, *checked):
        _harmless(record)
    assert CANARY not in stderr


def test_a_wheelhouse_copy_that_changed_is_refused_and_no_cache_mends_it(
        seller: Host, job: Callable[..., Path], tmp_path: Path) -> None:
    """The wheelhouse's bytes are checked again at every install: a copy that changed after
    it entered (no step of a build can write it: a disk, or root on the host) fails setup,
    exit 3, naming it and both digests; ``--no-cache`` fetches and checks it again."""
    main = "import rotting\nprint(rotting.STATE)\n"
    spec = job(_spec("rotting==1.0"), {"main.py": main})
    seller.bake("lock", str(spec), check=True)
    (rotting,) = parse_lock((spec.parent / "bake.lock").read_text()).distributions
    _build(seller, spec)
    # Change the copy in the wheelhouse (another wheel under its name), as only a writer
    # outside bake's builds could.
    context = tmp_path / "rot"
    context.mkdir()
    wheel(context, "rotting", "1.0", {"rotting.py": "STATE = 'rotted'\n"})
    (context / "Dockerfile").write_text(
        f"FROM python:3.11-slim\nRUN --mount=type=bind,source={rotting.file},target=/rot.whl "
        f"{DOWNLOAD_MOUNT} cp /rot.whl {MOUNT}/{rotting.sha256}/{rotting.file}\n")
    # (Not with BuildKit's --no-cache: that would give the step a new, empty cache.)
    plan = plan_build(find_cli(""), context, iidfile=context / "iid", labels={},
                      proxy_url=None, no_network=True, secrets={})
    ENGINE.remove_image(run_build(plan, timeout=120), force=True)
    # Another job with it (another install step: the first one's layer is not reused).
    again = job(_spec("rotting==1.0", "filler==1.0"), {"main.py": main})
    proc = seller.bake("build", str(again), "--json")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert (f"rotting==1.0 does not match its locked hash: expected sha256:{rotting.sha256}"
            in proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    _, stderr = _build_no_cache(seller, again)
    assert f"fetched {rotting.file} sha256:{rotting.sha256}" in stderr
    assert seller.bake("run", str(again), check=True).stdout.strip() == "original"


def _build_no_cache(seller: Host, spec: Path) -> tuple[dict[str, Any], str]:
    proc = seller.bake("build", str(spec), "--json", "--no-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr

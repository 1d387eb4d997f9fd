"""Stacks with real parts: a local PEP 503 index of tiny wheels, bake's proxy, Engine
20.10's BuildKit, uv, and a real registry (Distribution 2.8) on a loopback port.

A seller template declares two variants (``bake prebake`` makes each a stack); jobs lock
against the index and build on the best stack, or on the base.  Every image of this module
is in a repository of its own on the local registry (``127.0.0.1:<port>/bake-test-...``), so
that nothing else on the engine is ever listed, pruned or removed, and so that a stack
BuildKit cannot find is looked for there, never on a registry of the outside world.

Every wheel's module holds a nonce of this run: its bytes (and sha256) are new, so the
engine-wide wheelhouse has never seen them, and what a build fetched shows.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bake.engine import Engine
from bake.stacks.labels import PARENT, read_stack
from bake.types import NullReporter
from tests.integration.conftest import Host
from tests.integration.pkgindex import (
    RunningIndex,
    fetch_tool,
    serve_index,
    wheel,
    write_simple_index,
)
from tests.machines import LocalRegistry

ENGINE = Engine.from_env()
RUN = uuid.uuid4().hex[:12]  # in every wheel: bytes this engine's wheelhouse never saw
TEMPLATE = "bake-test-stacks"
TEMPLATE_TOML = """\
description = "test template: two tiny stacks"
default_base = "python:3.11-slim"
[[variants]]
name = "ab"
requirements = ["alpha==1.0", "beta==1.0"]
[[variants]]
name = "a"
requirements = ["alpha==1.0"]
"""
MAIN = """\
import importlib
for name in ("alpha", "beta", "gamma", "delta"):
    try:
        print(name, importlib.import_module(name).VERSION)
    except ImportError:
        pass
"""

MAIN_ALL = """\
import heavy, bulky, delta
print(heavy.__name__, bulky.__name__, delta.__name__)
"""
MIB = 1 << 20


def _module(name: str, version: str) -> dict[str, str]:
    return {f"{name}.py": f"VERSION = {version!r}\nRUN = {RUN!r}\n"}


def _spec(*requirements: str) -> str:
    reqs = ", ".join(f'"{r}"' for r in requirements)
    return (f'template = "{TEMPLATE}"\n[python]\nrequirements = [{reqs}]\n'
            '[job]\nfiles = ["main.py"]\ncommand = ["python", "main.py"]\n')


@pytest.fixture(scope="module")
def index(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIndex]:
    root = tmp_path_factory.mktemp("stacks-index")
    files = root / "files"
    files.mkdir()
    for name, version in (("alpha", "1.0"), ("alpha", "1.1"), ("beta", "1.0"),
                          ("gamma", "1.0"), ("delta", "1.0")):
        wheel(files, name, version, _module(name, version))
    for name, kib in (("heavy", 1536), ("bulky", 1024)):  # big enough to see in a layer
        padding = secrets.token_hex(kib * 512)  # kib KiB of text that compresses to half
        wheel(files, name, "1.0", {**_module(name, "1.0"), f"{name}_pad.py": f"P = {padding!r}\n"})
    fetch_tool(files)  # bake's own tool (uv), as a seller's mirror has it
    write_simple_index(files, root)
    with serve_index(root, ENGINE.bridge_gateway()) as running:
        yield running


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("templates")
    (folder / TEMPLATE).mkdir()
    (folder / TEMPLATE / "Dockerfile.j2").write_text('{% extends "_base/Dockerfile.j2" %}\n')
    (folder / TEMPLATE / "template.toml").write_text(TEMPLATE_TOML)
    return folder


@pytest.fixture(scope="module")
def repository(registry: LocalRegistry) -> Iterator[str]:
    """This module's repository; every image of it is removed at the end."""
    repo = registry.repository("stacks")
    yield repo
    registry.forget_local(repo)


@dataclass
class Seller:
    host: Host
    repository: str

    def bake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.bake(*args, check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self.bake(*args, "--json").stdout)

    def build(self, spec: Path, *args: str) -> tuple[dict[str, Any], str]:
        proc = self.bake("build", str(spec), "--json", *args)
        return json.loads(proc.stdout), proc.stderr

    def prebake(self, *args: str) -> dict[str, dict[str, Any]]:
        return {o["variant"]: o for o in self.json("prebake", TEMPLATE, *args)}


@pytest.fixture
def seller(host: Host, locked: None, index: RunningIndex, templates: Path,
           repository: str) -> Seller:
    host.egress["allow_http"] = [index.origin]
    host.build["pip_index_url"] = index.url
    host.build["templates"] = [str(templates)]
    host.registry["repository"] = repository
    host.registry["push"] = False
    return Seller(host, repository)


def _labels(image: str) -> dict[str, str]:
    info = ENGINE.inspect_image(image)
    assert info is not None, image
    return dict((info.get("Config") or {}).get("Labels") or {})


def _size(image: str) -> int:
    info = ENGINE.inspect_image(image)
    assert info is not None, image
    return int(info["Size"])


def _fetched(stderr: str) -> list[str]:
    """The files bake's fetch step fetched (its "fetched FILE ..." lines)."""
    return [line.split("bake-install: fetched ", 1)[1].split()[0]
            for line in stderr.splitlines() if "bake-install: fetched " in line]


def test_a_job_builds_on_the_prebaked_stack_and_installs_only_the_rest(
        seller: Seller, index: RunningIndex, job: Callable[..., Path]) -> None:
    stacks = seller.prebake()
    ab = stacks["ab"]
    assert ab["outcome"] == "built" and ab["image"].startswith(seller.repository + ":")
    stack_key = ab["image"].rpartition(":")[2]
    held = read_stack(ab["image"], stack_key, _labels(ab["image"]))
    assert held is not None and held.variant == f"{TEMPLATE}/ab" and len(held.held.wheels) == 2
    again = seller.prebake()
    assert again["ab"]["outcome"] == "present" and again["ab"]["image"] == ab["image"]
    ran = seller.bake("run", ab["image"], check=False)  # a stack is no job
    assert ran.returncode == 125 and "is a stack" in ran.stderr, ran.stderr

    spec = job(_spec("alpha==1.0", "beta==1.0", "gamma==1.0"), {"main.py": MAIN})
    seller.bake("lock", str(spec))  # resolving reads the wheels' metadata; building is after
    index.requests.clear()
    result, stderr = seller.build(spec)
    # The largest stack that holds only wheels of the lock: ab (2 of 3), not a (1 of 3).
    assert result["stack"] == stack_key, stderr
    assert f"built on stack {stack_key[:12]} ({TEMPLATE}/ab)" in stderr
    # Only gamma was fetched (the egress log and the index agree) and installed.
    assert not [f for f in _fetched(stderr) if f.startswith(("alpha", "beta"))]  # the stack's
    served = {r.split()[1] for r in index.requests if "/files/" in r}
    assert served == {"/files/gamma-1.0-py3-none-any.whl"}
    assert "+ gamma==1.0" in stderr and "+ alpha==1.0" not in stderr
    # The choice is a label; the image adds only its own layer to the stack's.
    assert _labels(result["image"])[PARENT] == stack_key
    assert _size(result["image"]) - _size(ab["image"]) < 1 << 20
    run = seller.bake("run", str(spec)).stdout.split("\n")
    assert run[:3] == ["alpha 1.0", "beta 1.0", "gamma 1.0"]
    # The key is the lock's, whatever the stack: the same with stacks off.
    seller.host.build["stacks"] = "none"
    assert seller.bake("key", str(spec)).stdout.split()[0] == result["key"]
    seller.host.build["stacks"] = "variants"
    # A job of exactly the stack's wheels adds no install step at all.
    exact = job(_spec("alpha==1.0", "beta==1.0"), {"main.py": MAIN})
    same, stderr = seller.build(exact)
    assert same["stack"] == stack_key and _fetched(stderr) == [] and "uv pip install" not in (
        stderr)


def test_a_jobs_wheels_are_installed_in_two_layers_of_about_equal_size(
        seller: Seller, job: Callable[..., Path]) -> None:
    """The engine exports an image's new layers in parallel: bake's fetch step deals the
    wheels out into two install layers by size, the largest first to the lighter one."""
    seller.host.build["stacks"] = "none"
    spec = job(_spec("heavy==1.0", "bulky==1.0", "delta==1.0"), {"main.py": MAIN_ALL})
    result, stderr = seller.build(spec)
    installs = [entry for entry in ENGINE.image_history(result["image"])
                if "uv pip install" in str(entry.get("CreatedBy"))]
    sizes = sorted(int(entry["Size"]) for entry in installs)
    assert len(sizes) == 2, installs
    # heavy alone in one (its text and its bytecode: about 3 MiB), bulky and delta in the
    # other (about 2 MiB).
    assert 1.5 * MIB < sizes[0] < 2.5 * MIB < sizes[1] < 3.5 * MIB, sizes
    assert "bake-install: installed in 2 layers" in stderr
    assert seller.bake("run", str(spec)).stdout.split() == ["heavy", "bulky", "delta"]
    # One wheel: one install step.
    single = job(_spec("gamma==1.0"), {"main.py": MAIN})
    result, _ = seller.build(single)
    installs = [entry for entry in ENGINE.image_history(result["image"])
                if "uv pip install" in str(entry.get("CreatedBy"))]
    assert len(installs) == 1, installs


def test_no_cache_runs_every_step_again_and_keeps_the_engines_wheelhouse(
        seller: Seller, job: Callable[..., Path]) -> None:
    """``--no-cache`` fetches and checks the job's wheels again, and empties no cache that
    other jobs share (BuildKit's own --no-cache would throw the wheelhouse away)."""
    spec = job(_spec("gamma==1.0", "delta==1.0"), {"main.py": MAIN + "# nc\n"})
    seller.build(spec)
    other = job(_spec("alpha==1.1"), {"main.py": MAIN + "# nc other\n"})
    _, stderr = seller.build(other, "--no-cache")
    assert _fetched(stderr) == ["alpha-1.1-py3-none-any.whl"] and "+ alpha==1.1" in stderr
    later = job(_spec("gamma==1.0", "delta==1.0"), {"main.py": MAIN + "# nc later\n"})
    _result, stderr = seller.build(later)
    assert _fetched(stderr) == [] and "2 in place already" in stderr, stderr[-2000:]
    assert seller.bake("run", str(later)).stdout.split("\n")[:2] == ["gamma 1.0", "delta 1.0"]


def test_a_version_left_open_resolves_to_the_stacks_and_a_pin_keeps_its_own(
        seller: Seller, job: Callable[..., Path]) -> None:
    """The index's newest alpha is 1.1; stack ab holds alpha 1.0.  A job that leaves alpha
    open is resolved again with ab's pins and builds on it; one that pins alpha >= 1.1 keeps
    1.1, with no error; with stacks off, the newest."""
    ab = seller.prebake()["ab"]["image"].rpartition(":")[2]
    # (Its own main.py: the same lock and files as another test's job would be a key hit.)
    spec = job(_spec("alpha", "beta==1.0", "gamma==1.0"), {"main.py": MAIN + "# open\n"})
    result, stderr = seller.build(spec)
    assert f"resolving again with the versions of stack {TEMPLATE}/ab" in stderr
    assert result["stack"] == ab and not result["cached"], stderr[-3000:]
    assert not [f for f in _fetched(stderr) if f.startswith(("alpha", "beta"))]  # the stack's
    assert seller.bake("run", str(spec)).stdout.split("\n")[:3] == [
        "alpha 1.0", "beta 1.0", "gamma 1.0"]
    pinned = job(_spec("alpha>=1.1", "beta==1.0", "gamma==1.0"), {"main.py": MAIN + "# 1.1\n"})
    result, stderr = seller.build(pinned)
    assert result["stack"] is None, stderr[-3000:]
    assert seller.bake("run", str(pinned)).stdout.split("\n")[:3] == [
        "alpha 1.1", "beta 1.0", "gamma 1.0"]
    seller.host.build["stacks"] = "none"
    off = job(_spec("alpha", "beta==1.0", "delta==1.0"), {"main.py": MAIN + "# off\n"})
    result, stderr = seller.build(off)
    assert "resolving again" not in stderr and result["stack"] is None
    assert seller.bake("run", str(off)).stdout.split("\n")[0] == "alpha 1.1"


def test_a_lock_that_conflicts_with_every_stack_builds_on_the_base(
        seller: Seller, job: Callable[..., Path]) -> None:
    seller.prebake()
    spec = job(_spec("alpha==1.1", "beta==1.0"), {"main.py": MAIN})
    result, stderr = seller.build(spec)
    assert result["stack"] is None and "built on stack" not in stderr
    assert _labels(result["image"])[PARENT] == ""
    assert seller.bake("run", str(spec)).stdout.split("\n")[:2] == ["alpha 1.1", "beta 1.0"]
    seller.host.build["stacks"] = "none"  # the seller's "none": never a stack
    spec = job(_spec("alpha==1.0", "beta==1.0", "delta==1.0"), {"main.py": MAIN + "#\n"})
    result, _ = seller.build(spec)
    assert result["stack"] is None


def test_images_mode_keeps_a_jobs_deps_as_a_stack_for_the_next_job(
        seller: Seller, job: Callable[..., Path]) -> None:
    stacks = seller.prebake()
    seller.host.build["stacks"] = "images"
    first, _ = seller.build(job(_spec("alpha==1.0", "beta==1.0", "gamma==1.0"),
                                {"main.py": MAIN + "# first\n"}))
    ab = stacks["ab"]["image"].rpartition(":")[2]
    assert first["stack"] == ab
    listed = {i["image"]: i for i in seller.json("images")}
    kept = [i for i in listed.values() if i["stack"] and i["parent"] == ab]
    assert len(kept) == 1, listed  # the first job's deps: ab + gamma, on ab
    deps = kept[0]
    assert deps["variant"] is None and deps["adds"] < 1 << 20
    # The deps layer alone: nothing of the first job's own (its files, its env) is in it.
    peek = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh",
                           deps["image"], "-c", "ls -A /job 2>&1; env"],
                          capture_output=True, text=True, check=False)
    assert "main.py" not in peek.stdout and "VIRTUAL_ENV" not in peek.stdout, peek.stdout
    second, stderr = seller.build(job(_spec("alpha==1.0", "beta==1.0", "gamma==1.0",
                                            "delta==1.0"), {"main.py": MAIN}))
    assert second["stack"] == deps["key"], stderr  # 3 of 4 beats ab's 2
    assert "+ delta==1.0" in stderr and "+ gamma==1.0" not in stderr  # only the rest
    listed = {i["image"]: i for i in seller.json("images")}
    assert listed[second["image"]]["parent"] == deps["key"]
    # In "variants" mode a job's deps are no stack: ab again.
    seller.host.build["stacks"] = "variants"
    third, _ = seller.build(job(_spec("alpha==1.0", "beta==1.0", "gamma==1.0", "delta==1.0"),
                                {"main.py": MAIN + "# third\n"}))
    assert third["stack"] == ab


def test_prune_never_orphans_a_stack_an_image_that_stays_is_built_on(
        seller: Seller, job: Callable[..., Path]) -> None:
    stacks = seller.prebake()
    spec = job(_spec("alpha==1.0", "beta==1.0", "gamma==1.0"), {"main.py": MAIN + "# p\n"})
    built, _ = seller.build(spec)
    ab = stacks["ab"]["image"]
    assert built["stack"] == ab.rpartition(":")[2]
    holder = f"bake-test-stacks-holder-{secrets.token_hex(4)}"
    subprocess.run(["docker", "create", "--name", holder, built["image"]], check=True,
                   capture_output=True)
    try:
        report = seller.json("prune", "--keep-size", "1")
        assert built["image"] in report["spared_in_use"]
        # The image in use stays, so its stack does, though it was the least recently used.
        assert ab in report["kept_as_stack"] and ENGINE.has_image(ab)
        assert stacks["a"]["image"] in {i["image"] for i in report["removed"]}
    finally:
        subprocess.run(["docker", "rm", "-f", holder], capture_output=True, check=False)
    report = seller.json("prune", "--keep-size", "1")
    removed = [i["image"] for i in report["removed"]]
    # Now the image goes, and its stack after it.
    assert built["image"] in removed and ab in removed
    assert removed.index(built["image"]) < removed.index(ab)


def test_a_stack_that_disappears_during_the_build_falls_back_to_the_base(
        seller: Seller, job: Callable[..., Path]) -> None:
    """Between the choice and BuildKit's FROM, the stack is removed (another prune, a
    docker rmi): the build that failed left no image, and bake builds on the base, with a
    warning.  BuildKit looks for the missing stack on the module's own registry."""
    from bake import pipeline

    stacks = seller.prebake()
    gone = stacks["a"]["image"]
    spec = job(_spec("alpha==1.0", "delta==1.0"), {"main.py": MAIN + "# gone\n"})

    class RemovesTheStack(NullReporter):
        def __init__(self) -> None:
            self.warnings: list[str] = []

        def stage(self, text: str) -> None:
            if text.startswith("built on stack"):
                ENGINE.remove_image(gone, force=True)

        def warn(self, text: str) -> None:
            self.warnings.append(text)

    reporter = RemovesTheStack()
    result = pipeline.build(spec, settings=seller.host.settings(), reporter=reporter)
    assert result.stack is None and result.built
    assert any("disappeared during the build" in w and "building on the base" in w
               for w in reporter.warnings), reporter.warnings
    assert _labels(result.image)[PARENT] == ""
    assert seller.bake("run", str(spec)).stdout.split("\n")[:2] == ["alpha 1.0", "delta 1.0"]


def test_a_registry_stack_is_pulled_and_one_that_fails_to_pull_means_the_base(
        seller: Seller, registry: LocalRegistry, job: Callable[..., Path]) -> None:
    seller.host.registry["push"] = True
    stacks = seller.prebake("--push")
    ab = stacks["ab"]["image"]
    assert registry.has(ab)
    ENGINE.remove_image(ab, force=True)
    seller.host.registry["push"] = False
    spec = job(_spec("alpha==1.0", "beta==1.0", "delta==1.0"), {"main.py": MAIN + "# reg\n"})
    result, stderr = seller.build(spec)
    assert result["stack"] == ab.rpartition(":")[2], stderr
    assert "from the registry" in stderr and ENGINE.has_image(ab)
    # The stack's manifest is in the registry, but its config blob is lost: the pull fails.
    ENGINE.remove_image(ab, force=True)
    _lose_blob(registry, _manifest(registry, ab)["config"]["digest"])
    spec = job(_spec("alpha==1.0", "beta==1.0", "delta==1.0"), {"main.py": MAIN + "# lost\n"})
    result, stderr = seller.build(spec)
    assert result["stack"] is None and result["cached"] is False
    assert "could not be used" in stderr and "building on the base" in stderr
    assert not ENGINE.has_image(ab)  # no half-pulled stack left under its name
    assert seller.bake("run", str(spec)).stdout.split("\n")[:3] == [
        "alpha 1.0", "beta 1.0", "delta 1.0"]


def _manifest(registry: LocalRegistry, image: str) -> dict[str, Any]:
    import urllib.request

    repository, _, tag = image.rpartition(":")
    name = repository.split("/", 1)[1]
    request = urllib.request.Request(
        f"http://{registry.address}/v2/{name}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        manifest: dict[str, Any] = json.load(response)
        return manifest


def _lose_blob(registry: LocalRegistry, digest: str) -> None:
    hexdigest = digest.removeprefix("sha256:")
    blob = (registry.folder / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"
            / hexdigest[:2] / hexdigest)
    assert blob.is_dir(), blob
    shutil.rmtree(blob)

"""The image cache against a real registry and a second Docker Engine.

A Distribution 2.8 registry (Debian's ``docker-registry``) on a loopback port,
the machine's engine, and -- playing a second machine of the fleet -- a second
``dockerd`` with its own data root, socket and bridge, that has never built
anything: what it has, it got from the registry (``pulled: true``) or, for a
prebaked dependency layer, through ``--cache-from`` (an equal layer digest).

Every repository here is ``127.0.0.1:<port>/bake-test-<name>-<random>``, and
only images of those repositories are ever removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bake.templates import BUILTIN_DIR
from tests.conftest import write_job
from tests.integration.conftest import BASE, CA_BUNDLE, Host, machine_cidrs
from tests.machines import (
    LocalRegistry,
    MachineError,
    docker,
    free_port,
    loaded_from_host,
    serve_registry,
)
from tests.machines import second_engine as start_second_engine

SIX_JOB = """
name = "registry-six"
template = "bake-test-py"
[python]
requirements = ["six==1.16.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
SIX_MAIN = 'import six\nprint("six", six.__version__)\n'

# Seller templates, with a copy of bake's _base taken when the module starts, so
# that keys stay put while someone edits bake's own templates during the run.
# Tiny variants keep prebake fast.
PY_TEMPLATE = """
description = "test template: the python template, frozen for the run"
default_base = "python:3.11-slim"
"""
TEMPLATE_DOCKERFILE = '{% extends "_base/Dockerfile.j2" %}\n'
TINY_TEMPLATE = """
description = "test template: two small variants"
default_base = "python:3.11-slim"
[[variants]]
name = "six"
requirements = ["six==1.16.0"]
[[variants]]
name = "plain"
requirements = []
"""
OFFLINE_TEMPLATE = """
description = "test template: one variant that needs no network"
default_base = "python:3.11-slim"
[[variants]]
name = "plain"
requirements = []
"""


@dataclass
class Machine:
    """A seller config and a state folder, used across the tests of this module."""

    host: Host
    env: dict[str, str] = field(default_factory=dict)

    def bake(self, *args: str, env: dict[str, str] | None = None,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.host.bake(*args, env={**self.env, **(env or {})}, check=check)

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        proc = self.bake(*args, "--json", env=env, check=True)
        return json.loads(proc.stdout)

    def with_registry(self, repository: str) -> Machine:
        host = Host(folder=self.host.folder, egress=dict(self.host.egress),
                    build=dict(self.host.build), registry={"repository": repository})
        return Machine(host, dict(self.env))


def _docker(*args: str, host: str | None = None, check: bool = True,
            stdin: Any = None) -> subprocess.CompletedProcess[str]:
    return docker(*args, host=host, check=check, stdin=stdin, timeout=300)


def _inspect(image: str, host: str | None = None) -> dict[str, Any] | None:
    proc = _docker("image", "inspect", image, host=host, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def repositories() -> Iterator[list[str]]:
    """Every repository this module names; their images are removed at the end."""
    made: list[str] = []
    yield made
    if not made:
        return
    listed = _docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout
    ours = [ref for ref in listed.split() if ref.rpartition(":")[0] in made]
    if ours:
        _docker("rmi", "-f", *ours, check=False)


@pytest.fixture(scope="module")
def seller(engine: None, registry: LocalRegistry, repositories: list[str],
           tmp_path_factory: pytest.TempPathFactory) -> Machine:
    folder = tmp_path_factory.mktemp("seller")
    templates = folder / "templates"
    shutil.copytree(BUILTIN_DIR / "_base", templates / "_base")
    for name, toml in (("bake-test-py", PY_TEMPLATE), ("bake-test-tiny", TINY_TEMPLATE),
                       ("bake-test-offline", OFFLINE_TEMPLATE)):
        (templates / name).mkdir(parents=True)
        (templates / name / "Dockerfile.j2").write_text(TEMPLATE_DOCKERFILE)
        (templates / name / "template.toml").write_text(toml)
    repository = registry.repository("cache")
    repositories.append(repository)
    build: dict[str, object] = {"templates": [str(templates)]}
    if Path(CA_BUNDLE).is_file():
        build["ca_bundle"] = CA_BUNDLE
    host = Host(
        folder=folder,
        egress={"allow_cidrs": machine_cidrs(), "enforce": "warn", "setup_timeout": 300},
        build=build,
        registry={"repository": repository},
    )
    return Machine(host, {"BAKE_STATE_DIR": str(folder / "state")})


@dataclass
class Published:
    spec: Path
    result: dict[str, Any]

    @property
    def image(self) -> str:
        return str(self.result["image"])


@pytest.fixture(scope="module")
def published(seller: Machine) -> Published:
    """The six job, built and pushed once for the module."""
    spec = write_job(seller.host.folder / "six", SIX_JOB, {"main.py": SIX_MAIN})
    return Published(spec, seller.json("build", str(spec)))


@pytest.fixture(scope="module")
def second_engine(engine: None) -> Iterator[str]:
    """A second dockerd (tests/machines.py) playing another machine of the fleet.

    Its bridge has no route out, so a build step that needs a network cannot run
    on it; it gets the same base image (same id, so the same key) by save | load.
    """
    try:
        with start_second_engine(loaded_from_host(BASE), label="test-engine2") as sock:
            yield sock
    except MachineError as exc:
        pytest.fail(str(exc))


# --- build, push, pull ------------------------------------------------------------------------


def test_build_pushes_the_image_with_its_key_labels(published: Published,
                                                   registry: LocalRegistry) -> None:
    result = published.result
    assert result["pushed"] is True
    assert result["cached"] is False and result["pulled"] is False
    assert registry.has(published.image)
    info = _inspect(published.image)
    assert info is not None
    labels = info["Config"]["Labels"]
    assert labels["bake.key"] == result["key"]
    assert [(d["name"], d["version"]) for d in
            json.loads(labels["bake.manifest"])["python"]["distributions"]] == [("six", "1.16.0")]


def test_without_the_local_image_build_pulls_and_runs(published: Published,
                                                      seller: Machine) -> None:
    _docker("rmi", published.image)
    proc = seller.bake("build", str(published.spec), "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["pulled"] is True, proc.stderr
    assert result["cached"] is False and result["pushed"] is False
    assert result["egress"] is None  # no setup ran
    assert "building" not in proc.stderr
    run = seller.bake("run", str(published.spec), check=True)
    assert run.stdout.strip() == "six 1.16.0"

    # `bake pull` fetches by key without building; a key never pushed is an error.
    _docker("rmi", published.image)
    seller.bake("pull", str(published.spec), check=True)
    assert _inspect(published.image) is not None
    other = write_job(seller.host.folder / "never", SIX_JOB.replace("registry-six", "never"),
                      {"main.py": SIX_MAIN + "# never pushed\n"})
    missing = seller.bake("pull", str(other))
    assert missing.returncode == 1
    assert "is not in the registry" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_second_engine_pulls_instead_of_building(published: Published, seller: Machine,
                                                 second_engine: str) -> None:
    on_two = {"DOCKER_HOST": second_engine}
    assert _inspect(published.image, host=second_engine) is None
    proc = seller.bake("build", str(published.spec), "--json", env=on_two, check=True)
    result = json.loads(proc.stdout)
    assert result["pulled"] is True and result["key"] == published.result["key"]
    run = seller.bake("run", str(published.spec), env=on_two, check=True)
    assert run.stdout.strip() == "six 1.16.0"
    # The registry's copy carries the manifest, so the two machines can compare keys.
    explain = seller.bake("key", str(published.spec), "--explain", check=True).stdout
    digest, _, manifest = explain.partition("\n")
    info = _inspect(published.image, host=second_engine)
    assert info is not None
    assert info["Config"]["Labels"]["bake.key"] == digest.strip()
    assert json.loads(info["Config"]["Labels"]["bake.manifest"]) == \
        json.loads(manifest)["manifest"]


# --- prebake ----------------------------------------------------------------------------------


def test_prebake_publishes_the_variants_then_finds_them_present(
        seller: Machine, registry: LocalRegistry, repositories: list[str]) -> None:
    machine = seller.with_registry(registry.repository("prebake"))
    repositories.append(machine.host.registry["repository"])  # type: ignore[arg-type]
    first = machine.json("prebake", "bake-test-tiny", "--push")
    assert [(o["variant"], o["outcome"], o["pushed"]) for o in first] == [
        ("six", "built", True), ("plain", "built", True)]
    for outcome in first:
        assert registry.has(outcome["image"])
    second = machine.json("prebake", "bake-test-tiny", "--push")
    assert [(o["variant"], o["outcome"]) for o in second] == [("six", "present"),
                                                              ("plain", "present")]
    assert [o["image"] for o in second] == [o["image"] for o in first]


def test_prebaked_dependency_layer_is_reused_on_a_second_engine(
        seller: Machine, registry: LocalRegistry, repositories: list[str],
        second_engine: str) -> None:
    """A buyer's job (own files, own key) reuses the prebaked variant's deps layer.

    Offline settings (no egress at all: ``--network=none``) keep the second
    engine's build steps off every network.  Creating a venv is not reproducible
    byte for byte, so an equal layer digest proves the layer came from the
    prebaked image (--cache-from through the registry), not from a rebuild.
    """
    machine = seller.with_registry(registry.repository("offline"))
    repositories.append(machine.host.registry["repository"])  # type: ignore[arg-type]
    machine.host.egress = {**machine.host.egress, "allow": []}
    (variant,) = machine.json("prebake", "bake-test-offline", "--push")
    assert variant["outcome"] == "built" and variant["pushed"] is True

    spec = write_job(machine.host.folder / "offline-job", (
        'template = "bake-test-offline"\n[job]\nfiles = ["main.py"]\n'
        'command = ["python", "main.py"]\n'), {"main.py": 'print("own job")\n'})
    on_two = {"DOCKER_HOST": second_engine}
    proc = machine.bake("build", str(spec), "--json", "--no-push", env=on_two, check=True)
    result = json.loads(proc.stdout)
    assert result["pulled"] is False and result["key"] not in variant["image"]
    base_layers = len(_inspect(BASE)["RootFS"]["Layers"])  # type: ignore[index]
    prebaked = _inspect(variant["image"])
    built = _inspect(result["image"], host=second_engine)
    assert prebaked is not None and built is not None
    deps = prebaked["RootFS"]["Layers"][base_layers]
    assert built["RootFS"]["Layers"][base_layers] == deps
    run = machine.bake("run", str(spec), env=on_two, check=True)
    assert run.stdout.strip() == "own job"


# --- failures ----------------------------------------------------------------------------------


def test_registry_down_is_a_warning_and_a_local_build(published: Published,
                                                      seller: Machine,
                                                      repositories: list[str]) -> None:
    repository = f"127.0.0.1:{free_port()}/bake-test-down-{secrets.token_hex(4)}"
    repositories.append(repository)
    machine = seller.with_registry(repository)
    proc = machine.bake("build", str(published.spec), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["pulled"] is False and result["pushed"] is False
    assert result["image"].startswith(repository + ":")
    assert "warning" in proc.stderr
    assert "cannot reach the registry" in proc.stderr
    assert "building locally" in proc.stderr
    assert _inspect(result["image"]) is not None

    # Without the registry check (--no-cache), the push finds the registry down: a warning.
    rebuilt = machine.bake("build", str(published.spec), "--json", "--no-cache")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["pushed"] is False
    assert "not pushed: cannot reach the registry" in rebuilt.stderr
    # Asked for explicitly, a push that cannot happen is an error.
    push = machine.bake("push", str(published.spec))
    assert push.returncode == 1 and "was not pushed: cannot reach" in push.stderr


def test_refused_push_is_a_clear_error_and_keeps_the_local_image(
        published: Published, seller: Machine, repositories: list[str],
        tmp_path: Path) -> None:
    with serve_registry(tmp_path / "readonly", readonly=True) as readonly:
        repository = readonly.repository("readonly")
        repositories.append(repository)
        machine = seller.with_registry(repository)
        proc = machine.bake("build", str(published.spec), "--json")
        assert proc.returncode == 1, proc.stderr
        assert "refused the push" in proc.stderr
        assert "kept on this engine" in proc.stderr
        assert "hint:" in proc.stderr and "Traceback" not in proc.stderr
        image = f"{repository}:{published.result['key']}"
        info = _inspect(image)
        assert info is not None
        assert info["Config"]["Labels"]["bake.key"] == published.result["key"]
        assert not readonly.has(image)

        again = machine.bake("push", str(published.spec))
        assert again.returncode == 1 and "refused the push" in again.stderr
        hit = machine.bake("build", str(published.spec), "--json")
        assert hit.returncode == 0 and json.loads(hit.stdout)["cached"] is True


# --- images and prune -------------------------------------------------------------------------


def test_prune_removes_least_recently_used_first_never_in_use(
        seller: Machine, registry: LocalRegistry, repositories: list[str]) -> None:
    machine = seller.with_registry(registry.repository("prune"))
    repository = str(machine.host.registry["repository"])
    repositories.append(repository)
    specs = {}
    for name in "ABCD":
        # A megabyte of its own per image, so that each has a size of its own to free.
        specs[name] = write_job(machine.host.folder / f"prune-{name}", (
            f'name = "prune-{name}"\ntemplate = "bake-test-py"\n[job]\nfiles = ["data.txt"]\n'
            'command = ["python", "-c", "print(len(open(\'data.txt\').read()))"]\n'),
            {"data.txt": secrets.token_hex(500_000)})
    images = {name: machine.json("build", str(specs[name]), "--no-push")["image"]
              for name in "ABCD"}
    # Last uses, as bake records them: B is the least recently used, then C, D, A.
    state = Path(machine.env["BAKE_STATE_DIR"]) / "used"
    now = time.time()
    for age, name in ((40, "B"), (30, "C"), (20, "D"), (10, "A")):
        key = images[name].rpartition(":")[2]
        os.utime(state / key, (now - age, now - age))

    listed = {i["image"]: i for i in machine.json("images")}
    assert set(listed) == set(images.values())
    assert {i["template"] for i in listed.values()} == {"bake-test-py"}
    assert all(i["size"] > 0 and i["unique_size"] > 0 for i in listed.values())
    unique = {name: listed[images[name]]["unique_size"] for name in "ABCD"}

    # C is in use by a running container: never removed, even when its turn comes.
    container = _docker("run", "-d", "--rm", "--network", "none", images["C"],
                        "python", "-c", "import time; time.sleep(300)").stdout.strip()
    try:
        keep = unique["A"] + unique["C"] + unique["D"] // 2
        report = machine.json("prune", "--keep-size", str(keep))
        assert [i["image"] for i in report["removed"]] == [images["B"], images["D"]]
        assert report["spared_in_use"] == [images["C"]]
        assert report["freed"] == unique["B"] + unique["D"]
        assert _inspect(images["B"]) is None and _inspect(images["D"]) is None
        assert _inspect(images["C"]) is not None and _inspect(images["A"]) is not None

        # Ten days unused: A goes, C stays while its container exists.
        key_a, key_c = (images[n].rpartition(":")[2] for n in "AC")
        for key in (key_a, key_c):
            os.utime(state / key, (now - 10 * 86400, now - 10 * 86400))
        report = machine.json("prune", "--older-than", "7d")
        assert [i["image"] for i in report["removed"]] == [images["A"]]
        assert report["spared_in_use"] == [images["C"]]
        assert _inspect(images["C"]) is not None
    finally:
        _docker("rm", "-f", container, check=False)

    bad = machine.bake("prune", "--older-than", "soon")
    assert bad.returncode == 2 and "--older-than: 'soon' is not a duration" in bad.stderr

"""Integration tier: a real Docker Engine with BuildKit, real pip through bake's proxy.

``./scripts/test`` starts what these need (the engine, a base image); a test
here fails, not skips, when they are missing, so a green run means they ran.
Each test removes only the images it made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bake.cache.engine import inspect_image, ping

BASE = os.environ.get("BAKE_TEST_BASE", "python:3.11-slim")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def engine() -> None:
    if not ping():
        pytest.fail("no Docker Engine answers; ./scripts/test installs and starts one")
    if inspect_image(BASE) is None:
        pytest.fail(f"base image {BASE} is missing; ./scripts/test makes one (bake base build)")


def machine_cidrs() -> list[str]:
    """Where this machine's package index really is, when the proxy would refuse it.

    Some hosts reach the index through a gateway in a private or documentation
    range; the seller config must then name it in egress.allow_cidrs.
    """
    from bake.doctor import refused_addresses
    from bake.settings import Settings

    refused = refused_addresses(Settings())
    return sorted({f"{a}/{32 if '.' in a else 128}" for found in refused.values() for a in found})


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


@dataclass
class Host:
    """The seller's side of a test: its config file and a way to call the CLI."""

    folder: Path
    egress: dict[str, object] = field(default_factory=dict)
    build: dict[str, object] = field(default_factory=dict)
    registry: dict[str, object] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        path = self.folder / "config.toml"
        lines = []
        for section, values in (("egress", self.egress), ("build", self.build),
                                ("registry", self.registry)):
            lines.append(f"[{section}]")
            for key, value in values.items():
                if isinstance(value, bool):
                    lines.append(f"{key} = {str(value).lower()}")
                elif isinstance(value, int):
                    lines.append(f"{key} = {value}")
                elif isinstance(value, list):
                    lines.append(f"{key} = {_toml_list(value)}")
                else:
                    lines.append(f'{key} = "{value}"')
        path.write_text("\n".join(lines) + "\n")
        return path

    def settings(self):  # type: ignore[no-untyped-def]
        from bake.settings import load_settings

        return load_settings(self.config)

    def bake(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "bake", "--config", str(self.config), *args],
            capture_output=True, text=True, env=full_env, timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"bake {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def forget(self, image: str) -> None:
        """Remove this image when the test ends."""
        self.made.append(image)


@pytest.fixture
def host(engine: None, tmp_path: Path) -> Iterator[Host]:
    h = Host(
        folder=tmp_path / "seller",
        egress={"allow_cidrs": machine_cidrs(), "enforce": "warn", "setup_timeout": 300},
        build={"ca_bundle": CA_BUNDLE} if Path(CA_BUNDLE).is_file() else {},
    )
    h.folder.mkdir()
    yield h
    for image in h.made:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


@pytest.fixture
def job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job folder: ``job(spec_text, {"main.py": "..."})`` -> path of bake.toml."""
    from tests.conftest import write_job

    counter = iter(range(1000))

    def make(spec: str, files: dict[str, str] | None = None) -> Path:
        return write_job(tmp_path / f"job{next(counter)}", spec, files)

    return make


@pytest.fixture(scope="session")
def locked(engine: None) -> Iterator[None]:
    """The host confined with `bake egress lock` for the tests that need proof."""
    from bake.egress import lockdown

    was_locked = lockdown.locked_rules_present()
    if not was_locked:
        lockdown.lock()
    yield
    if not was_locked:
        lockdown.unlock()


REGISTRY_BIN = "/usr/bin/docker-registry"


@dataclass
class LocalRegistry:
    """A Distribution registry on a loopback port, with its own storage."""

    address: str  # "127.0.0.1:<port>"
    folder: Path

    def repository(self, name: str) -> str:
        """A repository only this test run uses, so that prune touches nothing else."""
        import uuid

        return f"{self.address}/bake-test-{name}-{uuid.uuid4().hex[:8]}"

    def has(self, image: str) -> bool:
        """Does the registry hold ``image``?  Asked over the Registry API, not through bake."""
        import urllib.error
        import urllib.request

        repository, _, tag = image.rpartition(":")
        name = repository.split("/", 1)[1]
        request = urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_registry(folder: Path, *, readonly: bool = False) -> Iterator[LocalRegistry]:
    """Run ``docker-registry serve`` until the block ends; wait until it answers."""
    import time
    import urllib.error
    import urllib.request

    if not Path(REGISTRY_BIN).is_file():
        pytest.fail(f"{REGISTRY_BIN} is missing; scripts/bootstrap installs docker-registry")
    folder.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    maintenance = ("  maintenance:\n    readonly:\n      enabled: true\n" if readonly else "")
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {folder / 'storage'}\n  delete:\n    enabled: true\n{maintenance}"
        f"http:\n  addr: {address}\n"
    )
    log = (folder / "registry.log").open("wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start on {address}:\n"
                            f"{(folder / 'registry.log').read_text(errors='replace')}")
            time.sleep(0.05)
        yield LocalRegistry(address, folder)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(folder / "storage", ignore_errors=True)


@pytest.fixture(scope="session")
def registry(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real registry (Distribution 2.8) on a loopback port for the whole session."""
    with serve_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg

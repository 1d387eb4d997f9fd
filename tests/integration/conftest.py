"""Integration tier: a real Docker Engine with BuildKit, real pip through bake's proxy.

``./scripts/test`` starts what these need (the engine, a base image); a test
here fails, not skips, when they are missing, so a green run means they ran.
Each test removes only the images it made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bake.engine import Engine
from tests.machines import LocalRegistry, MachineError, serve_registry

ENGINE = Engine.from_env()

BASE = os.environ.get("BAKE_TEST_BASE", "python:3.11-slim")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def engine() -> None:
    if not ENGINE.ping():
        pytest.fail("no Docker Engine answers; ./scripts/test installs and starts one")
    if ENGINE.inspect_image(BASE) is None:
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


def processes_mentioning(marker: str) -> list[str]:
    """Command lines of the running processes that mention ``marker`` (a test's config file).

    "Nothing left behind" for a bake that has exited: no process of its own (nor a child,
    which inherits its arguments or names the config) still runs, and so none holds a
    proxy port.  Other builds on this machine (other tests, other checkouts) are not ours.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8",
                                                                                   "replace")
        except OSError:
            continue
        if marker in command:
            found.append(command.strip())
    return found


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

    was_locked = lockdown.locked_rules_present(ENGINE)
    if not was_locked:
        lockdown.lock(ENGINE)
    yield
    if not was_locked:
        lockdown.unlock()


@pytest.fixture(scope="session")
def registry(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real registry (Distribution 2.8) on a loopback port for the whole session."""
    try:
        with serve_registry(tmp_path_factory.mktemp("registry")) as reg:
            yield reg
    except MachineError as exc:
        pytest.fail(str(exc))

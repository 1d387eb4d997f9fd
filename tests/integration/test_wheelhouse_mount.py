"""What Engine 20.10's built-in BuildKit does with bake's wheelhouse mounts (a probe, kept).

bake's promise rests on two facts about the builder on this host, checked here with the
very mount lines bake renders (:mod:`bake.stacks.wheelhouse`), on a cache of the test's
own id so that bake's real wheelhouse is never touched:

- a step with the install mount (``readonly``) cannot write the cache in any way, as
  root: not write, create, replace, unlink, chmod, nor remount it writable; it reads
  what the download mount left there;
- a step that reads a file of another stage through a bind mount stays cached when that
  stage runs again and leaves the same bytes (how the download step runs on every build
  without breaking the install step's cache).

The same probe run on a writable mount must see every write succeed: so the probe can
tell the two apart, and a change of the mount line would turn this test red.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.builder.buildkit import find_cli, plan_build, run_build
from bake.stacks.wheelhouse import CACHE_ID, DOWNLOAD_MOUNT, INSTALL_MOUNT, MOUNT
from tests.integration.conftest import BASE

# Every way a root step could change a file in the wheelhouse; each prints one word.
ATTEMPTS = " ; ".join(
    f"( {command} ) >/dev/null 2>&1 && echo {word}-WROTE || echo {word}-REFUSED"
    for word, command in (
        ("write", f"echo evil > {MOUNT}/w.whl"),
        ("append", f"echo evil >> {MOUNT}/w.whl"),
        ("chmod", f"chmod 0777 {MOUNT}/w.whl"),
        ("create", f"touch {MOUNT}/new.whl"),
        ("mkdir", f"mkdir {MOUNT}/d"),
        ("replace", f"cp /etc/hostname /tmp/x && mv /tmp/x {MOUNT}/w.whl"),
        ("unlink", f"rm -f {MOUNT}/w.whl && test ! -e {MOUNT}/w.whl"),
        ("remount", f"mount -o remount,rw {MOUNT}"),
    )
)
WORDS = ("write", "append", "chmod", "create", "mkdir", "replace", "unlink", "remount")


def _dockerfile(cache_id: str, probe_mount: str, nonce: str) -> str:
    download = DOWNLOAD_MOUNT.replace(CACHE_ID, cache_id)
    probe = probe_mount.replace(CACHE_ID, cache_id)
    return (
        f"FROM {BASE} AS fetch\n"
        f"RUN {download} echo {cache_id} {nonce} > /tmp/nonce && echo original > {MOUNT}/w.whl "
        "&& mkdir -p /bake && echo fixed > /bake/wheelhouse.txt\n"
        f"FROM {BASE} AS install\n"
        "RUN --mount=type=bind,from=fetch,source=/bake/wheelhouse.txt,target=/tmp/fetched "
        f"{probe} cat {MOUNT}/w.whl && {ATTEMPTS} ; echo probed > /probed\n"
    )


def _build(tmp: Path, dockerfile: str) -> list[str]:
    context = tmp / f"ctx-{uuid.uuid4().hex[:8]}"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    plan = plan_build(find_cli(""), context, iidfile=context / "iid", labels={},
                      proxy_url=None, no_network=True, secrets={})
    lines: list[str] = []
    image = run_build(plan, timeout=120, on_line=lines.append)
    subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)
    return lines


@pytest.fixture
def cache_id(engine: None) -> Iterator[str]:
    """A cache of the test's own; its BuildKit record is removed after (its creating
    command names the id, so it is found by its description)."""
    ident = f"bake-test-probe-{uuid.uuid4().hex[:12]}"
    yield ident
    df = subprocess.run(["curl", "-s", "--unix-socket", "/var/run/docker.sock",
                         "http://localhost/system/df"], capture_output=True, check=False)
    records = json.loads(df.stdout or b"{}").get("BuildCache") or []
    for record in records:
        if ident in str(record.get("Description")):
            subprocess.run(["docker", "builder", "prune", "-f", "--filter",
                            f"id={record['ID']}"], capture_output=True, check=False)


def _outcomes(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        for word in WORDS:
            for result in ("WROTE", "REFUSED"):
                if line.endswith(f" {word}-{result}"):
                    found[word] = result
    return found


def test_the_install_mount_is_read_only_for_a_root_step(tmp_path: Path, cache_id: str) -> None:
    lines = _build(tmp_path, _dockerfile(cache_id, INSTALL_MOUNT, "1"))
    assert any(line.endswith(" original") for line in lines), lines[-20:]
    assert _outcomes(lines) == dict.fromkeys(WORDS, "REFUSED"), "\n".join(lines[-30:])
    # Nothing changed for the next reader either.
    again = _build(tmp_path, _dockerfile(cache_id, INSTALL_MOUNT, "1").replace(
        "echo probed", "echo probed again"))
    assert any(line.endswith(" original") for line in again)


def test_the_probe_sees_a_writable_mount_write(tmp_path: Path, cache_id: str) -> None:
    """The control: without ``readonly`` the same step changes the cache every way."""
    writable = INSTALL_MOUNT.replace(",readonly", "")
    outcomes = _outcomes(_build(tmp_path, _dockerfile(cache_id, writable, "1")))
    assert {w: r for w, r in outcomes.items() if w != "remount"} == dict.fromkeys(
        [w for w in WORDS if w != "remount"], "WROTE")


def test_a_download_step_that_runs_again_keeps_the_install_step_cached(tmp_path: Path,
                                                                     cache_id: str) -> None:
    _build(tmp_path, _dockerfile(cache_id, INSTALL_MOUNT, "first"))
    lines = _build(tmp_path, _dockerfile(cache_id, INSTALL_MOUNT, "second"))
    text = "\n".join(lines)
    # The download step ran (a new nonce) ...
    assert "second > /tmp/nonce" in text and any("DONE" in line
                                         for line in lines)
    # ... and the install step was not run again: no probe output, a cache hit.
    assert not _outcomes(lines), text[-2000:]
    assert "CACHED" in text

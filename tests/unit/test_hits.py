"""The fast path's records of lookups: what makes a record stale (bake/cache/hits.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bake.cache import hits
from bake.engine import EngineAddress
from bake.state import state_dir


def _remember(files: list[Path], *, expires: float | None = None, name: str = "n") -> None:
    hits.remember(name=name, key="k" * 64, image="bake:" + "k" * 64,
                  engine=EngineAddress("unix:///nonexistent.sock"), base_ref="python:3.11-slim",
                  base_info={"Id": "sha256:" + "b" * 64, "RepoDigests": []}, inputs=files,
                  expires=expires)


def _old(path: Path) -> None:
    """Make a record older than the racy window by moving its clock back."""
    record = state_dir() / "hits" / "n.json"
    data = json.loads(record.read_text())
    data["made_ns"] += int(10e9)  # as if written 10 s after the files last changed
    record.write_text(json.dumps(data))


def _files(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "a.py", tmp_path / "b.toml"
    a.write_text("print(1)\n")
    b.write_text("x = 1\n")
    return [a, b, tmp_path / "absent.toml", tmp_path]


def _unchanged() -> bool:
    data = json.loads((state_dir() / "hits" / "n.json").read_text())
    return hits._unchanged(data["files"], int(data["made_ns"]))


def test_a_record_stands_while_every_input_is_as_it_was(tmp_path: Path) -> None:
    files = _files(tmp_path)
    _remember(files)
    _old(files[0])
    assert _unchanged()


@pytest.mark.parametrize("change", ["edit-same-size-same-mtime", "appear", "vanish", "relink",
                                    "new-file-in-folder"])
def test_any_change_to_an_input_makes_the_record_stale(tmp_path: Path, change: str) -> None:
    files = _files(tmp_path)
    _remember(files)
    _old(files[0])
    a, b, absent, folder = files
    if change == "edit-same-size-same-mtime":
        st = a.stat()
        a.write_text("print(2)\n")  # same size
        os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime cannot be
    elif change == "appear":
        absent.write_text("[egress]\n")
    elif change == "vanish":
        b.unlink()
    elif change == "relink":
        b.unlink()
        b.symlink_to(a)
    else:
        (folder / "new.py").write_text("")
    assert not _unchanged()


def test_a_file_changed_in_the_records_own_moment_is_judged_by_its_content(
        tmp_path: Path) -> None:
    """Racy: a write in the same clock tick as the record could leave every stat equal, so
    the record keeps the content's digest of a recent path and compares that."""
    files = _files(tmp_path)
    _remember(files)
    assert _unchanged()
    data = json.loads((state_dir() / "hits" / "n.json").read_text())
    assert all(len(entry) == 3 for entry in data["files"] if entry[1] is not None)
    # A write that keeps size, mtime and ctime (as if in the same tick): simulate it by
    # changing the content the record kept.
    data["files"][0][2] = "0" * 64
    (state_dir() / "hits" / "n.json").write_text(json.dumps(data))
    assert not _unchanged()


def test_an_expired_record_is_no_answer(tmp_path: Path) -> None:
    files = _files(tmp_path)
    _remember(files, expires=time.time() - 1)
    _old(files[0])
    assert hits.recall("n") is None


def test_records_are_named_by_spec_config_and_environment(tmp_path: Path) -> None:
    spec = tmp_path / "bake.toml"
    base = {"HOME": "/root", "PATH": "/usr/bin"}
    name = hits.record_name(spec, "", base)
    assert name == hits.record_name(spec, "", dict(base, PATH="/other"))  # not read by bake
    for other in (hits.record_name(tmp_path / "other.toml", "", base),
                  hits.record_name(spec, "seller.toml", base),
                  hits.record_name(spec, "", dict(base, BAKE_EGRESS_ALLOW="x.org")),
                  hits.record_name(spec, "", dict(base, DOCKER_HOST="tcp://h:2376")),
                  hits.record_name(spec, "", dict(base, HF_TOKEN="hf_x"))):
        assert other != name


def test_the_settings_and_the_records_read_the_same_variables() -> None:
    from bake import settings, state

    read = {v for vs in settings._HOST_VARIABLES.values() for v in vs}
    assert read <= set(state.SETTINGS_VARIABLES)
    assert {"XDG_CONFIG_HOME", "HOME", "DOCKER_CONTEXT"} <= set(state.SETTINGS_VARIABLES)


def test_bakes_own_code_and_templates_are_inputs() -> None:
    names = {p.name for p in hits.code_inputs()}
    assert {"key.py", "spec.py", "Dockerfile.j2", "template.toml", "hub-client.txt"} <= names

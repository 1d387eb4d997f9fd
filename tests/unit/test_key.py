"""The key: stable across what must not matter, sensitive to every input of the image."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

import bake.templates as templates_mod
from bake.cache import key as key_mod
from bake.cache.key import compute_key
from bake.lock.format import LockedFile, PythonLock
from tests.conftest import write_job
from tests.unit.helpers import TARGET, fake_dist, resolved

SPEC = """\
name = "a"
template = "python"
[python]
requirements = ["six==1.16.0", "idna==3.10"]
[job]
files = ["main.py", "pkg"]
command = ["python", "main.py"]
env = { A = "1", B = "2" }
"""
FILES = {"main.py": "print('hi')\n", "pkg/util.py": "X = 1\n"}


def key_of(folder: Path, spec: str = SPEC, files: dict[str, str] | None = None) -> str:
    return compute_key(resolved(write_job(folder, spec, FILES if files is None else files))).digest


def test_key_is_64_hex(tmp_path: Path) -> None:
    digest = key_of(tmp_path / "a")
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_same_inputs_same_key_in_another_folder(tmp_path: Path) -> None:
    assert key_of(tmp_path / "one") == key_of(tmp_path / "elsewhere" / "two")


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(SPEC.replace('name = "a"', 'name = "renamed"'), id="name"),
        pytest.param(SPEC.replace('{ A = "1", B = "2" }', '{ B = "2", A = "1" }'), id="env-order"),
        pytest.param(SPEC.replace('["six==1.16.0", "idna==3.10"]', '["idna==3.10", "six==1.16.0"]'),
                     id="requirement-order"),
        pytest.param(SPEC.replace('"six==1.16.0"', '"Six == 1.16.0"'), id="requirement-spelling"),
        pytest.param("# a comment\n" + SPEC.replace(" = ", "   =   "), id="formatting"),
        pytest.param(SPEC.replace('[job]', '[run]\nmemory = "1g"\n[job]'), id="run-limits"),
    ],
)
def test_key_ignores(tmp_path: Path, variant: str) -> None:
    assert key_of(tmp_path / "a") == key_of(tmp_path / "b", variant)


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(SPEC.replace("six==1.16.0", "six==1.17.0"), id="requirement"),
        pytest.param(SPEC.replace("[python]", "[python]\nonly_binary = false"), id="only-binary"),
        pytest.param(SPEC.replace('"main.py"]', '"main.py", "--x"]'), id="command"),
        pytest.param(SPEC.replace('A = "1"', 'A = "3"'), id="env"),
        pytest.param(SPEC.replace('files = ["main.py", "pkg"]', 'files = ["main.py"]'), id="files"),
    ],
)
def test_key_follows(tmp_path: Path, variant: str) -> None:
    assert key_of(tmp_path / "a") != key_of(tmp_path / "b", variant)


def test_key_follows_file_bytes(tmp_path: Path) -> None:
    changed = dict(FILES, **{"pkg/util.py": "X = 2\n"})
    assert key_of(tmp_path / "a") != key_of(tmp_path / "b", files=changed)


def test_key_follows_file_mode(tmp_path: Path) -> None:
    first = key_of(tmp_path / "a")
    (tmp_path / "a" / "main.py").chmod(0o755)
    assert compute_key(resolved(tmp_path / "a" / "bake.toml")).digest != first


def test_key_follows_base_digest(tmp_path: Path) -> None:
    path = write_job(tmp_path / "a", SPEC, FILES)
    one = compute_key(resolved(path, digest="sha256:" + "1" * 64)).digest
    two = compute_key(resolved(path, digest="sha256:" + "2" * 64)).digest
    assert one != two


def test_key_follows_builder_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key_of(tmp_path / "a")
    monkeypatch.setattr(key_mod, "BUILDER_VERSION", "999")
    assert key_of(tmp_path / "b") != before


def test_key_follows_template_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key_of(tmp_path / "a")
    copy = tmp_path / "templates"
    shutil.copytree(templates_mod.BUILTIN_DIR, copy)
    with (copy / "_base" / "Dockerfile.j2").open("a") as fh:
        fh.write("\n# changed\n")
    monkeypatch.setattr(templates_mod, "BUILTIN_DIR", copy)
    assert key_of(tmp_path / "b") != before


def test_manifest_has_no_host_paths_or_name(tmp_path: Path) -> None:
    image_key = compute_key(resolved(write_job(tmp_path / "secret-folder", SPEC, FILES)))
    text = image_key.manifest_json()
    assert "secret-folder" not in text and str(tmp_path) not in text
    # The spec's name ("a") is a label only: the only names in the manifest are the
    # template's and the locked distributions'.
    names = set(re.findall(r'"name":"([^"]*)"', text))
    assert names == {"python", "six", "idna"}


@pytest.mark.parametrize(
    "line",
    ["six==1.16.0", "Six == 1.16.0", "Foo_Bar.baz==2.0", "zope.interface==6.4", "A-B__c==10.0.1"],
)
def test_fast_requirement_path_normalises_like_packaging(line: str) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from bake.spec import _SIMPLE_PIN, parse_requirement

    assert _SIMPLE_PIN.fullmatch(line.strip())
    req = Requirement(line)
    req.name = canonicalize_name(req.name)
    assert parse_requirement(line) == str(req)


@pytest.mark.parametrize("line", ["0_", "a_", "a__ ; python_version > \"3\""])
def test_names_pep508_refuses_are_refused_even_where_packaging_takes_them(line: str) -> None:
    from bake.errors import SpecError
    from bake.spec import parse_requirement

    with pytest.raises(SpecError, match="not a valid project name"):
        parse_requirement(line)


def test_a_huge_hub_repo_and_lock_still_fit_in_the_label(tmp_path: Path) -> None:
    """A dataset of 4,000 shards and a lock of 900 distributions: each table alone is past
    a label's size.  The label gives the largest tables way to their digest and count until
    it fits; what bake run reads (command, env) stays; the key covers every entry."""
    spec = write_job(tmp_path, 'template = "python"\n[[datasets]]\nrepo = "org/shards"\n'
                     '[job]\nfiles = ["main.py"]\ncommand = ["python", "main.py"]\n'
                     '[job.env]\nMODE = "huge"\n', {"main.py": "x"})
    job = resolved(spec)
    (repo,) = job.lock.datasets
    shards = tuple(LockedFile(f"data/train/part-{i:05d}-of-04000.parquet", 1 << 20,
                              sha256=f"{i:064x}") for i in range(4000))
    dists = tuple(sorted((fake_dist(f"package-number-{i}==1.{i}") for i in range(900)),
                         key=lambda d: d.name))
    lock = dataclasses.replace(job.lock, python=PythonLock(TARGET, dists),
                               datasets=(dataclasses.replace(repo, files=shards),))
    key = compute_key(dataclasses.replace(job, lock=lock))
    assert len(key.manifest_json()) > 3 * key_mod.MAX_LABEL
    text = key.label()
    assert len(text) <= key_mod.MAX_LABEL
    label = json.loads(text)
    assert label["command"] == ["python", "main.py"] and label["env"] == {"MODE": "huge"}
    assert label["datasets"][0]["files"]["count"] == 4000
    assert label["datasets"][0]["commit"] == repo.commit
    assert label["python"]["distributions"]["count"] == 900
    assert label["files"] == key.manifest["files"]  # small: kept whole
    assert len(key.manifest["datasets"][0]["files"]) == 4000

# ruff: noqa: E501 -- uv lock samples hold real, long wheel file names
"""bake.lock: the value, its file (PEP 751 + [tool.bake]), a strict reader and a deterministic
writer; uv's lock -> one file per distribution for the target interpreter."""

from __future__ import annotations

import os
import platform
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bake.errors import SpecError
from bake.lock.format import (
    Declared,
    Target,
    dumps,
    parse_lock,
    python_from_doc,
    python_to_doc,
    read_lock,
    repo_from_doc,
    repo_to_doc,
    write_lock,
)
from bake.lock.python import python_lock
from tests.unit.lock_samples import DATA, MODEL, TARGET, declared, sample_lock

# -- writer ---------------------------------------------------------------------------------------


def test_round_trip_and_the_same_lock_gives_the_same_bytes(tmp_path: Path) -> None:
    lock = sample_lock()
    text = dumps(lock)
    assert parse_lock(text) == lock
    assert dumps(parse_lock(text)) == text == dumps(sample_lock())
    write_lock(tmp_path / "bake.lock", lock)
    assert (tmp_path / "bake.lock").read_text() == text
    assert read_lock(tmp_path / "bake.lock") == lock
    assert lock.digest() == sample_lock().digest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", lock.digest())


def test_the_file_is_a_pep751_lock_with_one_file_per_package() -> None:
    doc = tomllib.loads(dumps(sample_lock()))
    assert doc["lock-version"] == "1.0" and doc["created-by"] == "bake"
    assert doc["requires-python"] == "==3.11.2"
    for package in doc["packages"]:
        assert set(package) == {"name", "version", "wheels"}
        (wheel,) = package["wheels"]
        assert set(wheel) == {"name", "url", "hashes"} and wheel["url"].endswith(wheel["name"])
    assert doc["tool"]["bake"]["base"]["digest"].startswith("sha256:")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                        min_size=1, max_size=20).filter(str.isprintable), max_size=4))
def test_any_printable_declared_text_round_trips(texts: list[str]) -> None:
    lock = sample_lock(declared=declared(requirements=tuple(texts)))
    text = dumps(lock)
    assert text.isascii()
    assert parse_lock(text) == lock


# -- strict reader --------------------------------------------------------------------------------

TEXT = dumps(sample_lock())
SHA_NUMPY = re.search(r'sha256 = "([0-9a-f]{64})"', TEXT).group(1)  # type: ignore[union-attr]


def _edit(old: str, new: str, count: int = 1) -> str:
    assert old in TEXT, old
    return TEXT.replace(old, new, count)


CASES = {
    "non-hex wheel hash": (_edit(SHA_NUMPY, "Z" * 64), "packages[0].wheels[0].hashes.sha256"),
    "short wheel hash": (_edit(SHA_NUMPY, SHA_NUMPY[:10]), "packages[0].wheels[0].hashes.sha256"),
    "a wheel for another Python": (
        TEXT.replace("numpy-2.1.3-cp311-cp311", "numpy-2.1.3-cp312-cp312"),
        "packages[0].wheels[0].name"),
    "a wheel for another platform": (
        TEXT.replace("six-1.16.0-py2.py3-none-any.whl", "six-1.16.0-py3-none-macosx_11_0_arm64.whl"),
        "packages[1].wheels[0].name"),
    "a wheel of another project": (
        TEXT.replace("six-1.16.0-py2.py3", "sux-1.16.0-py2.py3"), "packages[1].wheels[0].name"),
    "a url that serves another file": (
        TEXT.replace("packages/six-1.16.0-py2.py3", "packages/evil-1.16.0-py2.py3"),
        "packages[1].wheels[0].url"),
    "two wheels for one package": (
        _edit("wheels = [{ name = \"six", "wheels = [{ name = \"six-1.16.0-py2.py3-none-any.whl\", "
              "url = \"https://x.test/six-1.16.0-py2.py3-none-any.whl\", hashes = { sha256 = \""
              + "0" * 64 + "\" } }, { name = \"six"), "packages[1].wheels"),
    "a package locked twice": (
        TEXT.replace('name = "tokenizers"', 'name = "six"'), "packages[2].name"),
    "an sdist with only_binary": (
        TEXT.replace('wheels = [{ name = "six-1.16.0-py2.py3-none-any.whl"',
                     'sdist = { name = "six-1.16.0.tar.gz"').replace(
            'six-1.16.0-py2.py3-none-any.whl", hashes = { sha256 = "' ,
            'six-1.16.0.tar.gz", hashes = { sha256 = "').replace(
            '" } }]\n\n[[packages]]\nname = "tokenizers"', '" } }\n\n[[packages]]\nname = '
            '"tokenizers"'), "packages[1].sdist"),
    "a Hub path outside the repo": (_edit('path = "config.json"', 'path = "../config.json"'),
                                    "tool.bake.models[0].files[0].path"),
    "an absolute Hub path": (_edit('path = "config.json"', 'path = "/config.json"'),
                             "tool.bake.models[0].files[0].path"),
    "a Hub path the patterns do not select": (
        _edit('path = "config.json"', 'path = "run.py"'), "tool.bake.models[0].files"),
    "a Hub file listed twice": (
        _edit('path = "model.safetensors"', 'path = "config.json"'),
        "tool.bake.models[0].files[1].path"),
    "a Hub blob id that is not hex": (_edit("a" * 40, "g" * 40),
                                      "tool.bake.models[0].files[0].blob"),
    "a commit that is not one": (_edit("c" * 40, "main"), "tool.bake.models[0].commit"),
    "a base digest that is not one": (_edit("b" * 64, "b" * 63), "tool.bake.base.digest"),
    "an unknown top-level key": ("extra = 1\n" + TEXT, "extra"),
    "an unknown package key": (_edit('version = "1.16.0"', 'version = "1.16.0"\nextras = []'),
                               "packages[1].extras"),
    "an unknown tool.bake key": (_edit("format = 1", "format = 1\nsalt = 2"), "tool.bake.salt"),
    "a typo in a file entry": (_edit("size = 23, blob", "size = 23, blobb"),
                               "tool.bake.models[0].files[0].blobb"),
    "a newer format": (_edit("format = 1", "format = 2"), "tool.bake.format"),
    "a repo that the declarations do not name": (
        _edit('repo = "org/model"\nrevision = "main"\ncommit',
              'repo = "org/other"\nrevision = "main"\ncommit'), "tool.bake.models[0]"),
    "a target that is not a version": (_edit('python = "3.11.2"', 'python = "3.11; rm"'),
                                       "tool.bake.target.python"),
    "requires-python that is not the target": (
        _edit('requires-python = "==3.11.2"', 'requires-python = ">=3.8"'), "requires-python"),
    "a negative size": (_edit("size = 23", "size = -1"), "tool.bake.models[0].files[0].size"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_or_hand_edited_lock_is_a_spec_error_naming_the_field(case: str) -> None:
    text, field = CASES[case]
    with pytest.raises(SpecError) as caught:
        parse_lock(text)
    assert caught.value.exit_code == 2
    assert caught.value.field == field, (case, caught.value)
    assert "bake lock" in str(caught.value)


@pytest.mark.parametrize("text", ["", "lock-version = ", "[[packages]]\nname = 1\n[tool]\nx=1",
                                  "a = 1\na = 2\n", "[" * 2000, "\x00"])
def test_garbage_is_a_spec_error_not_a_traceback(text: str) -> None:
    with pytest.raises(SpecError):
        parse_lock(text)


def test_a_lock_file_that_is_not_utf8_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bake.lock"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SpecError, match=str(path)):
        read_lock(path)


def test_declared_changes_name_the_spec_fields() -> None:
    lock = declared()
    assert lock.changed(lock) == []
    assert declared(requirements=("numpy>=3",)).changed(lock) == ["python.requirements"]
    assert Declared(**{**lock.__dict__, "base": "python:3.12-slim",
                       "only_binary": False}).changed(lock) == ["base", "python.only_binary"]
    moved = Declared(**{**lock.__dict__, "models": (
        MODEL.declared.__class__("model", "org/model", "v2", ("*.json",), ()),)})
    assert moved.changed(lock) == ["models[0].revision", "models[0].include"]
    assert Declared(**{**lock.__dict__, "datasets": ()}).changed(lock) == ["datasets"]


def test_parts_round_trip_through_the_cache_shapes() -> None:
    lock = sample_lock()
    assert lock.python is not None
    assert python_from_doc(python_to_doc(lock.python), only_binary=True) == lock.python
    assert repo_from_doc(repo_to_doc(MODEL)) == MODEL
    assert repo_from_doc(repo_to_doc(DATA)) == DATA


def test_install_requirements_name_every_locked_file_by_hash() -> None:
    lock = sample_lock()
    assert lock.python is not None
    lines = lock.python.install_requirements().decode().splitlines()
    assert lines == [f"{d.name}=={d.version} --hash=sha256:{d.sha256}"
                     for d in lock.python.distributions]


# -- the target's tags ----------------------------------------------------------------------------


def test_target_tags_are_the_interpreters_own_in_order() -> None:
    from packaging import tags

    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    name, _, version = libc.partition(" ")
    here = Target(platform.python_version(), "cpython",
                  f"cp{''.join(platform.python_version_tuple()[:2])}",
                  platform.machine(), f"glibc {'.'.join(version.split('.')[:2])}")
    assert name == "glibc"
    assert list(here.tags) == [str(t) for t in tags.sys_tags()]


def test_musl_targets_take_musllinux_wheels_only() -> None:
    musl = Target("3.11.9", "cpython", "cp311", "x86_64", "musl 1.2")
    assert musl.rank("x-1-cp311-cp311-musllinux_1_1_x86_64.whl") is not None
    assert musl.rank("x-1-cp311-cp311-manylinux_2_17_x86_64.whl") is None
    assert TARGET.rank("x-1-cp311-cp311-musllinux_1_1_x86_64.whl") is None
    assert TARGET.rank("x-1-cp311-cp311-manylinux_2_37_x86_64.whl") is None  # newer glibc


# -- uv's lock -> bake's --------------------------------------------------------------------------

PYLOCK = '''
lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11"

[[packages]]
name = "regex"
version = "2026.11.19"
sdist = { url = "https://f.test/regex-2026.11.19.tar.gz", hashes = { sha256 = "%(s0)s" } }
wheels = [
  { url = "https://f.test/regex-2026.11.19-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", hashes = { sha256 = "%(s1)s" } },
  { url = "https://f.test/regex-2026.11.19-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl", hashes = { sha256 = "%(s2)s" } },
]

[[packages]]
name = "Typing_Extensions"
version = "4.16.0"
wheels = [{ url = "https://f.test/typing_extensions-4.16.0-py3-none-any.whl", hashes = { sha256 = "%(s3)s" } }]

[[packages]]
name = "pywin32"
version = "311"
marker = "sys_platform == 'win32'"
wheels = [{ url = "https://f.test/pywin32-311-cp311-cp311-win_amd64.whl", hashes = { sha256 = "%(s4)s" } }]

[[packages]]
name = "oldpkg"
version = "1.0"
sdist = { url = "https://f.test/oldpkg-1.0.tar.gz", hashes = { sha256 = "%(s5)s" } }
''' % {f"s{i}": str(i) * 64 for i in range(6)}
TARGET_DOC = {"python": "3.11.2", "implementation": "cpython", "abi": "cp311",
              "machine": "x86_64", "libc": "glibc 2.36"}
ENV = {"sys_platform": "linux", "python_version": "3.11", "platform_machine": "x86_64",
       "implementation_name": "cpython", "python_full_version": "3.11.2", "os_name": "posix",
       "platform_system": "Linux", "platform_release": "", "platform_version": "",
       "platform_python_implementation": "CPython", "implementation_version": "3.11.2"}


def test_the_target_installers_wheel_is_kept_one_per_distribution() -> None:
    lock = python_lock(PYLOCK, TARGET_DOC, ENV, only_binary=False)
    files = {d.name: d.file for d in lock.distributions}
    # The wheel whose best tag ranks first (manylinux_2_28 over 2_17), as uv and pip pick it.
    assert files["regex"].endswith("manylinux_2_28_x86_64.whl")
    assert {d.name: d.sha256 for d in lock.distributions}["regex"] == "2" * 64
    assert "typing-extensions" in files  # canonical name
    assert "pywin32" not in files  # another platform's dependency
    assert files["oldpkg"] == "oldpkg-1.0.tar.gz"  # only an sdist, and the spec allows them
    assert [d.name for d in lock.distributions] == sorted(files)


def test_a_distribution_without_a_wheel_is_a_spec_error_with_only_binary() -> None:
    with pytest.raises(SpecError, match=r"oldpkg 1\.0 has no wheel for Python 3\.11\.2") as caught:
        python_lock(PYLOCK, TARGET_DOC, ENV, only_binary=True)
    assert caught.value.field == "python.requirements"

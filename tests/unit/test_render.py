"""Rendered Dockerfiles against golden files, and the exact build context.

Regenerate the golden files after an intended template change with
``BAKE_TEST_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`` and read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bake.builder.render import render
from tests.conftest import write_job
from tests.unit.helpers import resolved

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "python-requirements": ("""\
template = "python"
[python]
requirements = ["six==1.16.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
""", {"ca_bundle": False}),
    "python-ca-sdist": ("""\
template = "python"
[python]
requirements = ["six==1.16.0"]
only_binary = false
[job]
command = ["python", "-c", "print(1)"]
""", {"ca_bundle": True}),
    "python-no-requirements": ("""\
[job]
command = ["python", "-c", "print(1)"]
""", {"ca_bundle": False}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_dockerfile(tmp_path: Path, name: str) -> None:
    spec, options = CASES[name]
    job = resolved(write_job(tmp_path, spec, {"main.py": "print(1)\n"}))
    dockerfile = render(job, **options).dockerfile
    golden = GOLDEN / f"{name}.Dockerfile"
    if os.environ.get("BAKE_TEST_UPDATE_GOLDEN"):
        golden.write_text(dockerfile)
    assert dockerfile == golden.read_text()


def test_dockerfile_targets_the_builtin_frontend(tmp_path: Path) -> None:
    job = resolved(write_job(tmp_path, CASES["python-ca-sdist"][0]))
    dockerfile = render(job, ca_bundle=True).dockerfile
    assert "# syntax" not in dockerfile  # would pull a frontend image from a registry
    assert "<<" not in dockerfile  # heredocs: not in Engine 20.10's frontend
    assert "--network" not in dockerfile and "--security" not in dockerfile
    assert "type=cache" not in dockerfile  # shared caches let one job plant files for another


def test_requirements_travel_as_a_file_not_as_dockerfile_text(tmp_path: Path) -> None:
    job = resolved(write_job(tmp_path, CASES["python-requirements"][0], {"main.py": "x"}))
    context = render(job, ca_bundle=False)
    assert "six" not in context.dockerfile
    files = {f.path: f for f in context.files}
    assert files["bake/requirements.txt"].data == b"six==1.16.0\n"


def test_context_holds_exactly_the_declared_files(tmp_path: Path) -> None:
    spec_path = write_job(tmp_path / "job", CASES["python-requirements"][0],
                          {"main.py": "print(1)\n", "secret.txt": "not declared\n"})
    context = render(resolved(spec_path), ca_bundle=False)
    out = context.write(tmp_path / "ctx")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["Dockerfile", "bake/requirements.txt", "job/main.py"]


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    job = resolved(write_job(tmp_path, CASES["python-requirements"][0], {"main.py": "x"}))
    assert render(job, ca_bundle=True) == render(job, ca_bundle=True)

"""bake base build's plan: the two commands, pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from bake.builder.base import PACKAGES, plan_base
from bake.errors import UsageError


def test_plan_makes_a_python_base_from_debian_packages(tmp_path: Path) -> None:
    plan = plan_base("bookworm", None, tmp_path / "rootfs.tar")
    assert plan.tag == "bake/python:3.11-bookworm"
    assert plan.debootstrap[0] == "mmdebstrap" and "--variant=minbase" in plan.debootstrap
    included = next(a for a in plan.debootstrap if a.startswith("--include="))
    assert set(included.removeprefix("--include=").split(",")) == set(PACKAGES)
    assert {"python3-venv", "python3-pip", "ca-certificates"} <= set(PACKAGES)
    assert (plan.repository, plan.image_tag) == ("bake/python", "3.11-bookworm")
    assert plan.tarball == tmp_path / "rootfs.tar"
    assert 'CMD ["python3"]' in plan.changes


def test_plan_takes_a_tag(tmp_path: Path) -> None:
    plan = plan_base("trixie", "python:3.13-slim", tmp_path / "r.tar")
    assert plan.tag == "python:3.13-slim" and "trixie" in plan.debootstrap


@pytest.mark.parametrize(("suite", "tag"), [("sid-ish", None), ("bookworm", "Bad Tag"),
                                            ("bookworm", "x;rm -rf /"),
                                            ("bookworm", "x@sha256:" + "a" * 64)])
def test_bad_suite_or_tag_is_a_usage_error(tmp_path: Path, suite: str, tag: str | None) -> None:
    with pytest.raises(UsageError):
        plan_base(suite, tag, tmp_path / "r.tar")


def test_a_tag_without_one_gets_latest(tmp_path: Path) -> None:
    assert plan_base("bookworm", "mybase", tmp_path / "r.tar").tag == "mybase:latest"

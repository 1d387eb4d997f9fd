"""``bake base build``: a Python base image from Debian packages, no registry needed.

For air-gapped hosts (and this project's own machines, which reach no image
registry): ``mmdebstrap`` makes a minimal root file system from Debian's
packages and ``docker import`` turns it into an image.  The image is what the
templates expect of a base: ``python3`` (and ``python``) with ``venv`` and
``pip``, CA certificates, nothing else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..engine import Engine
from ..errors import BakeError, UsageError
from ..reference import parse_image_ref
from ..types import NullReporter, Reporter

__all__ = ["BasePlan", "build_base", "plan_base"]

# Debian suite -> the Python it ships, for the default tag.
SUITES = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")


@dataclass(frozen=True)
class BasePlan:
    suite: str
    tag: str  # repository:tag
    debootstrap: tuple[str, ...]
    tarball: Path
    changes: tuple[str, ...]  # Dockerfile instructions for the image's config
    message: str

    @property
    def repository(self) -> str:
        return self.tag.rpartition(":")[0]

    @property
    def image_tag(self) -> str:
        return self.tag.rpartition(":")[2]


def plan_base(suite: str, tag: str | None, tarball: Path) -> BasePlan:
    """The root file system command and the import that make the image.  Pure."""
    if suite not in SUITES:
        raise UsageError(f"unknown Debian suite {suite!r}",
                         hint=f"use one of: {', '.join(SUITES)}")
    image = tag or f"bake/python:{SUITES[suite]}-{suite}"
    try:
        ref = parse_image_ref(image)
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    if ref.digest:
        raise UsageError(f"--tag {image!r} names a digest; give a repository and a tag")
    if not ref.tag:
        image += ":latest"
    debootstrap = (
        "mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
        # Keep the image small: no apt lists or caches, no docs.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
        suite, str(tarball),
    )
    return BasePlan(suite, image, debootstrap, tarball,
                    changes=('CMD ["python3"]', "ENV LANG=C.UTF-8"),
                    message=f"bake base build --suite {suite}")


def build_base(engine: Engine, *, suite: str = "bookworm", tag: str | None = None,
               reporter: Reporter | None = None) -> str:
    if shutil.which("mmdebstrap") is None:
        raise BakeError("mmdebstrap is not installed",
                        hint="install it: apt-get install -y mmdebstrap")
    if os.geteuid() != 0:
        raise BakeError("bake base build needs root (mmdebstrap makes device nodes and owners)",
                        hint="run it as root")
    report = reporter or NullReporter()
    with tempfile.TemporaryDirectory(prefix="bake-base-") as tmp:
        plan = plan_base(suite, tag, Path(tmp) / "rootfs.tar")
        report.stage(f"making a Debian root file system ({plan.suite})")
        try:
            made = proc.run(plan.debootstrap)
        except OSError as exc:
            raise BakeError(f"cannot run mmdebstrap: {exc.strerror or exc}") from exc
        if not made.ok:
            tail = (made.stderr or made.stdout).strip().splitlines()[-3:]
            raise BakeError(f"mmdebstrap failed: {' / '.join(tail)}",
                            hint="check the network to Debian's package mirror and disk space")
        report.stage(f"importing it into the engine as {plan.tag}")
        engine.import_image(plan.tarball, plan.repository, plan.image_tag,
                            changes=plan.changes, message=plan.message)
    return plan.tag

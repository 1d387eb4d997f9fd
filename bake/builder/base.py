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
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BakeError, UsageError

if TYPE_CHECKING:
    from ..pipeline import Reporter

__all__ = ["BasePlan", "build_base", "plan_base"]

# Debian suite -> the Python it ships, for the default tag.
SUITES = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")


@dataclass(frozen=True)
class BasePlan:
    suite: str
    tag: str
    debootstrap: tuple[str, ...]
    import_argv: tuple[str, ...]


def plan_base(suite: str, tag: str | None, tarball: Path, docker: str = "docker") -> BasePlan:
    """The two commands that make the image.  Pure."""
    if suite not in SUITES:
        raise UsageError(f"unknown Debian suite {suite!r}",
                         hint=f"use one of: {', '.join(SUITES)}")
    image = tag or f"bake/python:{SUITES[suite]}-{suite}"
    from ..reference import parse_image_ref

    try:
        parse_image_ref(image)
    except ValueError as exc:
        raise UsageError(f"--tag: {exc}") from None
    debootstrap = (
        "mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
        # Keep the image small: no apt lists or caches, no docs.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
        suite, str(tarball),
    )
    import_argv = (
        docker, "import",
        "--change", 'CMD ["python3"]',
        "--change", "ENV LANG=C.UTF-8",
        "--message", f"bake base build --suite {suite}",
        str(tarball), image,
    )
    return BasePlan(suite, image, debootstrap, import_argv)


def build_base(*, suite: str = "bookworm", tag: str | None = None,
               reporter: Reporter | None = None) -> str:
    if shutil.which("mmdebstrap") is None:
        raise BakeError("mmdebstrap is not installed",
                        hint="install it: apt-get install -y mmdebstrap")
    if os.geteuid() != 0:
        raise BakeError("bake base build needs root (mmdebstrap makes device nodes and owners)",
                        hint="run it as root")
    with tempfile.TemporaryDirectory(prefix="bake-base-") as tmp:
        plan = plan_base(suite, tag, Path(tmp) / "rootfs.tar",
                         docker=shutil.which("docker") or "docker")
        for step, argv in (("making a Debian root file system", plan.debootstrap),
                           ("importing it into the engine", plan.import_argv)):
            if reporter is not None:
                reporter.stage(f"{step} ({plan.suite})")
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise BakeError(f"{argv[0]} failed: {' / '.join(tail)}",
                                hint="check the network to Debian's package mirror and disk space")
    return plan.tag

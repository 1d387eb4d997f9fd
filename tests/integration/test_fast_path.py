"""The fast path answers a key hit from the record of the last lookup, and never a stale one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Host

SPEC = """\
name = "fast"
template = "python"
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""


def fast_build(config: Path, spec: Path) -> tuple[dict[str, object], bool]:
    """``bake --config F build SPEC --json``; and whether the fast path answered (the CLI's
    typer was never imported)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bake", "--config", str(config),
         "build", str(spec), "--json"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), "| typer" not in proc.stderr


def test_a_hit_is_answered_from_the_record_until_an_input_changes(
        host: Host, job: Callable[..., Path]) -> None:
    host.egress["allow"] = []  # offline setup: nothing to prove, quick
    config = host.config  # (each read of host.config writes the file anew)
    spec = job(SPEC, {"main.py": "print('one')\n"})
    first, _ = fast_build(config, spec)
    host.forget(str(first["image"]))
    again = subprocess.run([sys.executable, "-m", "bake", "--config", str(config), "key",
                            str(spec)], capture_output=True, text=True, check=True)
    assert again.stdout.split()[0] == first["key"]  # (this lookup records again)
    hit, fast = fast_build(config, spec)
    assert fast and hit["cached"] is True and hit["key"] == first["key"]

    # Same size, mtime put back: only the ctime tells.  The fast path must not answer.
    main = spec.parent / "main.py"
    st = main.stat()
    main.write_text("print('two')\n")
    os.utime(main, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed, fast = fast_build(config, spec)
    host.forget(str(changed["image"]))
    assert not fast and changed["key"] != first["key"] and changed["cached"] is False

    # A seller setting changes (not one in the key): the CLI answers, from the same key.
    host.egress["setup_timeout"] = 301
    assert host.config == config  # written anew, with the new setting
    same, fast = fast_build(config, spec)
    assert not fast and same["key"] == changed["key"] and same["cached"] is True
    again_fast, fast = fast_build(config, spec)
    assert fast and again_fast["key"] == changed["key"]


def test_a_removed_image_is_no_hit(host: Host, job: Callable[..., Path]) -> None:
    host.egress["allow"] = []
    config = host.config
    spec = job(SPEC, {"main.py": "print('gone')\n"})
    first, _ = fast_build(config, spec)
    subprocess.run(["docker", "rmi", "-f", str(first["image"])], capture_output=True, check=True)
    rebuilt, fast = fast_build(config, spec)
    host.forget(str(rebuilt["image"]))
    assert not fast and rebuilt["cached"] is False and rebuilt["key"] == first["key"]

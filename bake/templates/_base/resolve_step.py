#!/usr/bin/env python3
"""bake-resolve: the job's requirements -> a PEP 751 lock, inside a confined setup step.

Runs in the job's base image with that image's ``python3`` (the interpreter the job's venv is
made from), so the resolution is for exactly that Python and platform.  Standard library only,
Python >= 3.8.  Reads (never from argv)::

    /tmp/bake/resolve/requirements.in    the job's requirements, one PEP 508 line each
    /tmp/bake/resolve/constraints.txt    when present: versions to keep to (a stack's pins)
    /tmp/bake/resolve/request.json       {"only_binary": bool, "nonce": "..."}
    /run/secrets/bake_index              the index URL (no credentials); absent: the default
    /run/secrets/bake_ca                 an extra CA bundle, when the seller set one

and writes ``/out/result.json`` (always, exit 0 unless this script itself breaks) and, on
success, ``/out/pylock.toml`` (uv's).  uv's lock is read from its standard output, and /out
is emptied and written only after uv has exited: with ``only_binary = false`` an sdist's
build code runs during the resolution and could write files anywhere (bake reads the lock
strictly in any case, and it only ever serves the same declared inputs).  The result says
what went wrong in bake's own words: ``unsatisfiable`` (the requirements name nothing the
index has), ``unreachable`` (the index could not be reached through the proxy), or ``failed``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time

UV = "/opt/bake/tool/bin/uv"
REQUEST = "/tmp/bake/resolve/request.json"
REQUIREMENTS = "/tmp/bake/resolve/requirements.in"
CONSTRAINTS = "/tmp/bake/resolve/constraints.txt"
INDEX_FILE = "/run/secrets/bake_index"
CA_FILE = "/run/secrets/bake_ca"
OUT = "/out"
_UNREACHABLE = (
    "Failed to fetch",
    "error sending request",
    "tunnel error",
    "dns error",
    "HTTP status server error",
    "Connection refused",
    "timed out",
)


def target() -> dict[str, str]:
    """What the lock's reader needs to know which wheels this interpreter installs."""
    major, minor = sys.version_info[:2]
    impl = sys.implementation.name
    if impl == "cpython":
        flags = ""
        if sysconfig.get_config_var("Py_GIL_DISABLED"):
            flags += "t"
        abi = f"cp{major}{minor}{flags}"
    else:
        abi = (sysconfig.get_config_var("SOABI") or impl).split("-")[0].replace(".", "_")
    libc = ""
    if hasattr(os, "confstr"):
        try:
            found = os.confstr("CS_GNU_LIBC_VERSION") or ""
        except (OSError, ValueError):
            found = ""
        name, _, version = found.partition(" ")
        if name == "glibc" and version:
            libc = "glibc " + ".".join(version.split(".")[:2])
    if not libc:
        lib, version = platform.libc_ver()
        if lib == "glibc" and version:
            libc = "glibc " + ".".join(version.split(".")[:2])
        else:
            libc = musl_version()
    return {
        "python": platform.python_version(),
        "implementation": impl,
        "abi": abi,
        "machine": platform.machine().lower(),
        "libc": libc,
    }


def musl_version() -> str:
    import glob
    import re

    for path in glob.glob("/lib/ld-musl-*.so.1"):
        proc = subprocess.run([path], capture_output=True, text=True)
        found = re.search(r"Version (\d+)\.(\d+)", proc.stderr)
        if found:
            return f"musl {found.group(1)}.{found.group(2)}"
    return ""


def environment() -> dict[str, str]:
    """PEP 508's marker environment of this interpreter (the spec's default_environment)."""
    impl = sys.implementation
    version = "{}.{}.{}".format(*impl.version[:3])
    if impl.version.releaselevel != "final":
        version += impl.version.releaselevel[0] + str(impl.version.serial)
    return {
        "implementation_name": impl.name,
        "implementation_version": version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def main() -> int:
    started = time.monotonic()
    with open(REQUEST, encoding="utf-8") as fh:
        request = json.load(fh)
    env = dict(os.environ)
    env.update(
        UV_NO_CACHE="1",  # nothing shared with another job's resolution
        UV_NO_CONFIG="1",  # no uv.toml of the base image's
        UV_PYTHON_DOWNLOADS="never",
        UV_HTTP_RETRIES="1",  # an unreachable index is known in a second, not ten
        UV_HTTP_TIMEOUT="30",
    )
    argv = [UV, "pip", "compile", REQUIREMENTS, "--python", sys.executable,
            "--format", "pylock.toml", "--no-header", "--quiet"]
    if os.path.isfile(INDEX_FILE):
        with open(INDEX_FILE, encoding="utf-8") as fh:
            index = fh.read().strip()
        if index:
            argv += ["--index-url", index]
            if index.startswith("http://"):
                # The seller named a plain-HTTP mirror (as pip's trusted-host).
                host = index.split("/")[2].rsplit("@", 1)[-1].split(":")[0]
                argv += ["--allow-insecure-host", host]
    if os.path.isfile(CA_FILE):
        env["SSL_CERT_FILE"] = CA_FILE
    if request.get("only_binary", True):
        argv += ["--only-binary", ":all:"]
    if os.path.isfile(CONSTRAINTS):
        argv += ["--constraints", CONSTRAINTS]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    output = proc.stderr.strip()
    if output:
        print(output, flush=True)
    result: dict[str, object] = {
        "ok": proc.returncode == 0, "target": target(), "environment": environment(),
        "seconds": round(time.monotonic() - started, 3),
    }
    if proc.returncode != 0:
        if "No solution found" in output:
            result["error"] = "unsatisfiable"
        elif any(marker in output for marker in _UNREACHABLE):
            result["error"] = "unreachable"
        else:
            result["error"] = "failed"
        result["message"] = "\n".join(output.splitlines()[-12:])[-2000:]
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    if proc.returncode == 0:
        with open(os.path.join(OUT, "pylock.toml"), "w", encoding="utf-8") as fh:
            fh.write(proc.stdout)
    with open(os.path.join(OUT, "result.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
    outcome = "resolved" if result["ok"] else result["error"]
    print(f"bake-resolve: {outcome} in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a job from its image: ``--network none``, hardened, limits from ``[run]``.

Plan, then execute: :func:`spec_job` / :func:`image_job` build a frozen
:class:`RunPlan`; :func:`container_config` turns it into the Engine's container
settings (pure, unit-tested); :func:`run_job` is the only part that runs.
Nothing from the seller's environment reaches the job: its environment is the
image's plus the spec's ``[job].env`` (the Engine API adds nothing of the
client's, unlike the docker CLI and SDK, which copy their proxy settings in).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .engine import Engine
from .errors import EngineError, RunError, SetupError
from .job import ResolvedJob
from .spec import JobSpec, RunLimits
from .state import state_dir
from .units import format_size

__all__ = ["RunPlan", "RunResult", "container_config", "image_job", "run_job", "spec_job"]

NOBODY = "65534:65534"
EXIT_TIMEOUT = 124


@dataclass(frozen=True)
class RunPlan:
    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    limits: RunLimits = field(default_factory=RunLimits)
    output: Path | None = None
    key: str = ""


@dataclass(frozen=True)
class RunResult:
    image: str
    exit_code: int
    timed_out: bool
    oom_killed: bool
    duration_s: float
    output: str | None = None
    skipped_outputs: tuple[str, ...] = ()
    memory_limit: int = 0

    @property
    def reason(self) -> str:
        if self.timed_out:
            return "timed out"
        if self.oom_killed:
            return (f"was killed for using more than its memory limit "
                    f"({format_size(self.memory_limit)}; raise [run] memory in bake.toml if it "
                    "needs more)")
        return f"exited {self.exit_code}"


def spec_job(image: str, spec: JobSpec, *, args: Sequence[str] = (),
             output: Path | None = None) -> RunPlan:
    return RunPlan(image, tuple(spec.command) + tuple(args), spec.env, spec.run, output,
                   image.rpartition(":")[2])


def image_job(engine: Engine, image: str, *, args: Sequence[str] = (),
              output: Path | None = None) -> RunPlan:
    """A plan from an image's own labels (``bake run IMAGE``)."""
    info = engine.inspect_image(image)
    if info is None:
        raise RunError(f"no image {image!r} on this engine and no job spec at that path",
                       hint="pass a bake.toml, its folder, or a baked image (bake images)")
    labels = (info.get("Config") or {}).get("Labels") or {}
    try:
        manifest = json.loads(labels["bake.manifest"])
        command = tuple(manifest["command"])
        env = tuple(sorted(manifest.get("env", {}).items()))
    except (KeyError, ValueError, TypeError):
        raise RunError(f"{image} is not an image baked by bake (no bake.manifest label)",
                       hint="bake run takes a job spec or an image that bake built") from None
    return RunPlan(image, command + tuple(args), env, RunLimits(), output,
                   str(labels.get("bake.key", "")))


def container_config(plan: RunPlan, *, user: str, out_dir: str | None) -> dict[str, Any]:
    """The Engine API's settings for the job's container (``POST /containers/create``).  Pure."""
    limits = plan.limits
    host: dict[str, Any] = {
        "NetworkMode": "none",
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "ReadonlyRootfs": True,
        # exec: JIT compilers (torch inductor, numba, triton) load what they build
        # in /tmp; without a network that is no wider a door than python itself.
        "Tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={limits.tmp}"},
        # The job's output is kept by the engine until bake removes the container;
        # cap it so that a chatty job cannot fill the host's disk.
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "64m", "max-file": "1"}},
        "PidsLimit": limits.pids,
        "Memory": limits.memory,
        "MemorySwap": limits.memory,  # no swap beyond the memory limit
        "NanoCpus": int(limits.cpus * 1e9),
        "ShmSize": limits.shm,
        "IpcMode": "private",
        # Engine 20.10 on cgroup v1 defaults to the host's cgroup namespace, which shows
        # the job the host's cgroup paths (other containers' ids); a private one does not.
        "CgroupnsMode": "private",
        "Binds": [f"{out_dir}:/out:rw"] if out_dir else [],
    }
    if limits.gpus:
        if limits.gpus == "all":
            host["DeviceRequests"] = [{"Driver": "", "Count": -1, "DeviceIDs": None,
                                       "Capabilities": [["gpu"]], "Options": {}}]
        else:
            ids = limits.gpus.removeprefix("device=").split(",")
            host["DeviceRequests"] = [{"Driver": "", "Count": 0, "DeviceIDs": ids,
                                       "Capabilities": [["gpu"]], "Options": {}}]
    return {
        "Image": plan.image,
        "Cmd": list(plan.command),
        "Env": [f"{k}={v}" for k, v in plan.env],
        "User": user,
        "Labels": {"bake.job": plan.key or "unknown"},
        "AttachStdin": False,
        "OpenStdin": False,
        "Tty": False,
        "HostConfig": host,
    }


def job_user(image_user: str) -> str:
    """The image's own user when it is a numeric, non-root ``uid[:gid]``, else nobody.

    A user *name* is resolved by the image's own ``/etc/passwd``, which may map any
    name to uid 0, so names are not trusted.  A missing or zero gid would leave the
    job in group root (Docker's default for a uid with no passwd entry): use the uid.
    """
    uid, _, gid = (image_user or "").strip().partition(":")
    if not uid.isdigit() or int(uid) == 0 or (gid and not gid.isdigit()):
        return NOBODY
    if not gid or int(gid) == 0:
        gid = uid
    return f"{int(uid)}:{int(gid)}"


def run_job(
    engine: Engine,
    plan: RunPlan,
    *,
    stream: bool = True,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
) -> RunResult:
    """Run the planned job to its end; always removes the container."""
    info = engine.inspect_image(plan.image)
    if info is None:
        raise RunError(f"image {plan.image} is not on this engine")
    user = job_user((info.get("Config") or {}).get("User", ""))
    staging = _staging(user) if plan.output is not None else None
    started = time.monotonic()
    created = False
    # A name of bake's own: a Ctrl-C that lands while the Engine is creating the
    # container (before create returns its id) must not leave it behind.
    name = f"bake-job-{uuid.uuid4().hex[:16]}"
    out_stream = stdout if stdout is not None else _stdbuffer("stdout")
    err_stream = stderr if stderr is not None else _stdbuffer("stderr")
    try:
        try:
            config = container_config(plan, user=user,
                                      out_dir=str(staging) if staging else None)
            engine.create_container(name, config)
            created = True
            engine.start_container(name)
        except EngineError as exc:
            raise RunError(f"cannot start the job's container: {exc.message}") from exc
        pumps = []
        if stream:
            for which, sink in ((1, out_stream), (2, err_stream)):
                t = threading.Thread(target=_pump, args=(engine, name, which, sink),
                                     daemon=True)
                t.start()
                pumps.append(t)
        timed_out = False
        try:
            code = engine.wait_container(name, timeout=plan.limits.timeout)
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(EngineError):
                engine.kill_container(name)
            code = EXIT_TIMEOUT
        for t in pumps:
            t.join(timeout=10)
        state = engine.inspect_container(name)
        skipped: tuple[str, ...] = ()
        if staging is not None and plan.output is not None:
            skipped = collect_output(staging, plan.output)
        return RunResult(
            image=plan.image,
            exit_code=code,
            timed_out=timed_out,
            oom_killed=bool(state and state.oom_killed),
            duration_s=round(time.monotonic() - started, 3),
            output=str(plan.output) if plan.output else None,
            skipped_outputs=skipped,
            memory_limit=plan.limits.memory,
        )
    finally:
        _remove(engine, name, maybe_in_flight=not created)
        if staging is not None:
            shutil.rmtree(staging.parent, ignore_errors=True)


def _remove(engine: Engine, name: str, *, maybe_in_flight: bool) -> None:
    """Remove the job's container by name; when create never returned, the Engine may
    still be making it, so look again for a moment before giving up."""
    for attempt in range(10 if maybe_in_flight else 1):
        try:
            if engine.remove_container(name):
                return
        except EngineError:
            return
        if maybe_in_flight and attempt < 9:
            time.sleep(0.1)


def _stdbuffer(name: str) -> IO[bytes]:
    stream: IO[bytes] = (sys.stdout if name == "stdout" else sys.stderr).buffer
    return stream


def _pump(engine: Engine, name: str, which: int, sink: IO[bytes]) -> None:
    try:
        for _, chunk in engine.logs(name, stdout=which == 1, stderr=which == 2, follow=True):
            sink.write(chunk)
            sink.flush()
    except (EngineError, OSError):  # the container may vanish under us; output is best effort
        return


def _staging(user: str) -> Path:
    """A fresh folder for /out, owned by the job's user, outside any folder the caller named."""
    root = state_dir() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    out = holder / "out"
    out.mkdir()
    uid, _, gid = user.partition(":")
    try:
        os.chown(out, int(uid), int(gid) if gid.isdigit() else int(uid))
    except (ValueError, PermissionError):
        # A seller running bake without root cannot give the folder away; the holder
        # above stays private (0700), so a world-writable out/ exposes nothing.
        os.chmod(out, 0o777)
    return out


def collect_output(staging: Path, dest: Path) -> tuple[str, ...]:
    """Copy what the job wrote into ``dest``: regular files and folders only.

    Symlinks, devices and fifos are skipped (and named), so a job cannot make
    the host follow a link out of its output folder.
    """
    skipped: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(staging, followlinks=False):
        rel_root = Path(root).relative_to(staging)
        target_root = dest / rel_root
        for name in list(dirs):
            src = Path(root) / name
            if src.is_symlink() or (target_root / name).is_symlink():
                # Neither the job's links nor one already in the seller's folder is followed.
                skipped.append(str(rel_root / name))
                dirs.remove(name)
                continue
            (target_root / name).mkdir(exist_ok=True)
        for name in files:
            src = Path(root) / name
            st = os.lstat(src)
            if not stat.S_ISREG(st.st_mode):
                skipped.append(str(rel_root / name))
                continue
            target = target_root / name
            if target.is_symlink():
                target.unlink()
            try:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                # Unreadable to bake (a job's 0000 file when bake is not root): name it.
                skipped.append(str(rel_root / name))
                continue
            with os.fdopen(fd, "rb") as fin:
                # Check the file we opened, not the name: it may have changed since lstat.
                if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                    skipped.append(str(rel_root / name))
                    continue
                out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                 0o600)
                with os.fdopen(out_fd, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            # Setuid/setgid bits and group/other write never cross to the host.
            os.chmod(target, st.st_mode & 0o755)
    return tuple(skipped)


# Where the templates put what the self-check reads (bake/templates/_base/Dockerfile.j2).
CHECK_SCRIPT = "/opt/bake/hubfetch.py"
CHECK_SPECS = "/opt/bake/hub"
# The job's own interpreter: every bake image has this venv (the deps step makes it).
JOB_PYTHON = "/opt/venv/bin/python"


def self_check_plan(image_id: str, job: ResolvedJob) -> RunPlan:
    """The check's container: the job's python runs hubfetch.py's offline check.  Pure.

    The job's own venv, not the fetch stages' client (which stays out of the image):
    when the job has huggingface_hub, the check loads every file through the very
    client the job will use, offline; when it has none, hubfetch.py checks the cache
    layout file by file (every selected file present, of the listed size, readable).
    It runs like the job: no network, hardened, as the job's user.
    """
    return RunPlan(
        image=image_id,
        command=(JOB_PYTHON, CHECK_SCRIPT, "check",
                 *(f"{CHECK_SPECS}/{i}.json" for i in range(len(job.hub_repos)))),
        limits=RunLimits(timeout=600),
    )


def self_check(engine: Engine, image_id: str, job: ResolvedJob) -> str:
    """Check, offline, that every declared model and dataset file loads from the image.

    Returns the check's report (one line per repo); raises SetupError when it fails.
    """
    sink = io.BytesIO()
    result = run_job(engine, self_check_plan(image_id, job), stdout=sink, stderr=sink)
    lines = sink.getvalue().decode("utf-8", "replace").strip().splitlines()
    if result.exit_code != 0:
        tail = lines[-5:]
        raise SetupError(
            "the offline self-check of the baked models and datasets failed: "
            + (" / ".join(tail) or result.reason),
            hint="check the repo's include patterns and that the files load",
        )
    return "\n".join(line.removeprefix("bake-fetch: ") for line in lines)

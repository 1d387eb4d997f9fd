"""The docker CLI, driving BuildKit: the only module of bake that runs it.

Plan, then execute: :func:`plan_build` computes the argv and environment (pure,
tested without Docker); :func:`run_build` runs it with a deadline, streams its
plain progress, and on timeout or interruption cancels the build so that nothing
is tagged and nothing is left running.

Why the CLI and not the Engine API: the API's BuildKit session (secrets, the
context upload) is spoken by the CLI; re-implementing it is not worth it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .. import proc
from ..errors import EngineError, SetupError, SetupTimeout
from ..state import state_dir

__all__ = [
    "PROXY_ARGS",
    "BuildPlan",
    "DockerCLI",
    "find_cli",
    "plan_build",
    "run_build",
]

# Docker's predefined proxy build args: they reach RUN steps as environment
# variables but, unlike ARG/ENV, never the image's history or config, and
# BuildKit leaves them out of its cache keys (the proxy's port changes per build).
PROXY_ARGS = (
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
    "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
)
_CANCEL_GRACE = 15.0
# The CLI's own view of where the engine is; bake sets them from its settings.
_ENGINE_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT")


@dataclass(frozen=True)
class DockerCLI:
    """A BuildKit-capable way to run ``docker build``."""

    argv: tuple[str, ...]  # ("docker", "buildx", "build") or ("/usr/bin/docker", "build")
    env: tuple[tuple[str, str], ...] = ()
    version: str = ""
    path: str = ""

    def describe(self) -> str:
        return f"{' '.join(self.argv)} (docker {self.version} at {self.path})"


@dataclass(frozen=True)
class BuildPlan:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    iidfile: Path = Path()
    output: Path | None = None  # a folder the last stage's files go to; then no image at all
    #: Values that never leave bake: each is replaced in every line of the build's output
    #: (what it reports and what an error quotes), should any step print it.
    redact: tuple[str, ...] = field(default=(), repr=False)


def _client_version(path: str) -> str | None:
    try:
        out = proc.run([path, "version", "--format", "{{.Client.Version}}"], timeout=20)
    except OSError:
        return None
    return out.stdout.strip() or None


def _has_buildx(path: str) -> bool:
    try:
        return proc.run([path, "buildx", "version"], timeout=20).ok
    except OSError:
        return False


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _candidates(configured: str) -> list[str]:
    if configured:
        return [configured]  # the seller named it: no silent fallback to another CLI
    found: list[str] = []
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]:
        path = os.path.join(folder, "docker")
        if os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found


_PLUGIN_DIRS = (
    "~/.docker/cli-plugins", "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins", "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def _cli_fingerprint(configured: str, docker_config: str) -> str:
    """What decides find_cli's answer: the candidates' files and the plugin folders."""
    parts = [configured, docker_config]
    plugin_dirs = [os.path.expanduser(d) for d in _PLUGIN_DIRS]
    if docker_config:
        plugin_dirs.append(os.path.join(docker_config, "cli-plugins"))
    for path in [*_candidates(configured), *plugin_dirs]:
        try:
            st = os.stat(path)
            parts.append(f"{path}:{os.path.realpath(path)}:{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append(f"{path}:-")
    return "\n".join(parts)


@lru_cache(maxsize=4)
def find_cli(configured: str = "", docker_config: str = "") -> DockerCLI:
    """``docker buildx build`` where buildx exists, else a classic CLI < 23 + DOCKER_BUILDKIT=1.

    ``docker_config`` is ``$DOCKER_CONFIG`` (where plugins may live).  Asking each
    candidate takes two or three subprocesses; the answer is kept in the state
    folder until a candidate binary or a plugin folder changes.
    """
    record = state_dir() / "docker-cli.json"
    fingerprint = _cli_fingerprint(configured, docker_config)
    try:
        kept = json.loads(record.read_text())
        if kept["fingerprint"] == fingerprint:
            return DockerCLI(tuple(kept["argv"]), tuple(map(tuple, kept["env"])),
                             kept["version"], kept["path"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cli = _detect_cli(configured)
    record.write_text(json.dumps({"fingerprint": fingerprint, "argv": cli.argv,
                                  "env": cli.env, "version": cli.version, "path": cli.path}))
    return cli


def _detect_cli(configured: str) -> DockerCLI:
    seen: list[str] = []
    for path in _candidates(configured):
        version = _client_version(path)
        if version is None:
            seen.append(f"{path} (does not exist)" if not os.path.exists(path)
                        else f"{path} (does not run)")
            continue
        if _has_buildx(path):
            return DockerCLI((path, "buildx", "build", "--load"), (), version, path)
        if _major(version) < 23:
            # Before 23 the classic builder is the default; DOCKER_BUILDKIT=1 makes the
            # CLI speak BuildKit to the engine's built-in builder.
            return DockerCLI((path, "build"), (("DOCKER_BUILDKIT", "1"),), version, path)
        seen.append(f"docker {version} at {path} has no buildx plugin")
    where = "; ".join(seen) if seen else "no docker CLI on PATH"
    raise EngineError(
        f"no BuildKit-capable docker CLI found ({where})",
        hint="install the buildx plugin, or Debian's docker.io (its /usr/bin/docker uses "
        "BuildKit), or set build.docker_cli in the seller config",
    )


def plan_build(
    cli: DockerCLI,
    context: Path,
    *,
    iidfile: Path,
    labels: Mapping[str, str],
    proxy_url: str | None,
    no_network: bool,
    secrets: Mapping[str, Path],
    no_cache: bool = False,
    target: str | None = None,
    cache_from: Sequence[str] = (),
    inline_cache: bool = False,
    engine_env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    output: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    redact: Sequence[str] = (),
) -> BuildPlan:
    """The argv and environment of one build.  Pure but for reading ``os.environ`` when
    ``environ`` is not given.

    ``engine_env`` points the CLI at the engine bake talks to (DOCKER_HOST and its
    TLS variables, from the settings); proxy variables of the caller never pass.
    With ``output`` the last stage's files are written to that folder
    (``--output type=local``) and no image is made or kept: the resolve build's way out.
    """
    if output is None:
        argv: list[str] = [*cli.argv, "--progress=plain", "--iidfile", str(iidfile)]
    else:
        # buildx's --load would ask for an image too; a local export is the only output.
        argv = [a for a in cli.argv if a != "--load"]
        argv += ["--progress=plain", "--output", f"type=local,dest={output}"]
    # Every predefined proxy arg is set explicitly, empty when there is no proxy, so
    # the proxies in the seller's ~/.docker/config.json can never fill them in.
    for name in PROXY_ARGS:
        value = proxy_url if name.lower() in ("http_proxy", "https_proxy") and proxy_url else ""
        argv += ["--build-arg", f"{name}={value}"]
    for name, value in sorted((build_args or {}).items()):
        if name.upper() in PROXY_ARGS:
            raise ValueError(f"{name} is the proxy's build arg, set by bake alone")
        argv += ["--build-arg", f"{name}={value}"]
    if no_network:
        argv.append("--network=none")
    for key, value in sorted(labels.items()):
        argv += ["--label", f"{key}={value}"]
    for name, path in sorted(secrets.items()):
        argv += ["--secret", f"id={name},src={path}"]
    if no_cache:
        argv.append("--no-cache")
    if inline_cache:
        # BuildKit writes its cache metadata into the image config, so that another
        # engine that has (or can pull) this image can reuse its layers via --cache-from.
        argv += ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
    for ref in cache_from:
        # A missing source costs BuildKit one log line, never the build.
        argv += ["--cache-from", ref]
    if target:
        argv += ["--target", target]
    argv += ["--file", str(context / "Dockerfile"), str(context)]
    base_env = os.environ if environ is None else environ
    env = {k: v for k, v in base_env.items()
           if k.upper() not in PROXY_ARGS and k not in _ENGINE_VARIABLES}
    env.update(engine_env or {})
    env.update(dict(cli.env))
    return BuildPlan(tuple(argv), env, iidfile, output, tuple(v for v in redact if v))


REDACTED = "[redacted]"


def redacted(line: str, values: Sequence[str]) -> str:
    """``line`` with every one of ``values`` replaced by :data:`REDACTED`.  Pure."""
    for value in values:
        if value in line:
            line = line.replace(value, REDACTED)
    return line


def run_build(
    plan: BuildPlan,
    *,
    timeout: float,
    on_line: Callable[[str], None] = lambda line: None,
    keep_lines: int = 80,
) -> str:
    """Run a planned build; return the image id ("" for a local export).  Raises SetupError /
    SetupTimeout.

    On timeout, KeyboardInterrupt or any exception the CLI is sent SIGINT (it then
    cancels the solve in BuildKit) and killed if it lingers; the exception goes on.
    """
    if not shutil.which(plan.argv[0]) and not os.access(plan.argv[0], os.X_OK):
        raise EngineError(f"docker CLI {plan.argv[0]} is missing")
    tail: collections.deque[str] = collections.deque(maxlen=keep_lines)
    deadline = time.monotonic() + timeout
    try:
        build = proc.Process(plan.argv, env=plan.env)
    except OSError as exc:
        raise EngineError(f"cannot run {plan.argv[0]}: {exc.strerror}") from exc
    finished = False
    try:
        # Inside the try: a signal that lands right after the start still cancels the build.
        build.start_reading()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SetupTimeout(
                    f"setup ran past its time limit of {timeout:g} s and was stopped; no image "
                    "was made",
                    log_tail="\n".join(tail),
                    hint="raise egress.setup_timeout in the seller config if the job needs longer",
                )
            try:
                line = build.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                break
            line = redacted(line, plan.redact)
            tail.append(line)
            on_line(line)
        code = build.wait()
        finished = True
    finally:
        if not finished:
            with _signals_deferred():
                build.cancel(_CANCEL_GRACE)
        build.close()
    if code != 0:
        if any("no space left on device" in line.lower() for line in tail):
            # Not the job's fault and not fixed by editing the spec: say so.
            raise SetupError(
                "the setup build ran out of disk space on the Docker Engine's data root "
                f"(docker exited {code}); no image was made",
                log_tail="\n".join(tail),
                hint="free space there (bake prune --keep-size SIZE, docker system df) "
                "and build again",
            )
        raise SetupError(
            f"the setup build failed (docker exited {code}): {_failure(tail)}",
            log_tail="\n".join(tail),
            hint="read the build log above; fix the requirement or step it names",
        )
    if plan.output is not None:
        return ""
    try:
        return plan.iidfile.read_text().strip()
    except OSError as exc:
        raise SetupError("the build finished but reported no image id") from exc


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the build is being cancelled, then deliver them.

    A second Ctrl-C during the cancel would otherwise abandon the docker CLI mid-
    cancel, leaving BuildKit's solve running with nobody to stop it.  Python runs
    signal handlers in the main thread only, so elsewhere (a seller's agent calling
    the API from a worker thread) there is nothing to defer.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python; the default is the safe stand-in.
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if held:
            # Re-deliver the first one through the restored handler (KeyboardInterrupt, or
            # the CLI's Interrupted for SIGTERM).
            signal.raise_signal(held[0])


_STEP_OUTPUT = re.compile(r"#\d+ \d+\.\d+ (.*)")
_UV_MISMATCH = re.compile(r"Hash mismatch for `([^`]+)`")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _hash_mismatch(lines: list[str]) -> str | None:
    """uv's "Hash mismatch for `name==version`" block, as one line: what, expected, received."""
    for i, line in enumerate(lines):
        found = _UV_MISMATCH.search(line)
        if not found:
            continue
        digests = [d for rest in lines[i + 1:i + 12] for d in _DIGEST.findall(rest)]
        # The wheelhouse's copy (checked when it entered: changed since, on disk) or an
        # sdist from the index; `bake build --no-cache` fetches and checks it again.
        if len(digests) >= 2:
            return (f"{found.group(1)} does not match its locked hash: expected {digests[0]}, "
                    f"received {digests[1]} (bake build --no-cache fetches it again)")
        return (f"{found.group(1)} does not match its locked hash (bake build --no-cache "
                "fetches it again)")
    return None


_UV_FAILED = re.compile(r"error: Failed to (?:download|install|build) `([^`]+)`")
_UV_CAUSE = re.compile(r"cause: (.*)")


def _uv_failed(lines: list[str]) -> str | None:
    """uv's "Failed to download `name==version`" and its last cause, as one line: a file
    of the wheelhouse that is no longer a wheel (or an sdist that does not build)."""
    for i, line in enumerate(lines):
        found = _UV_FAILED.search(line)
        if not found:
            continue
        causes = [c.group(1).strip() for rest in lines[i + 1:i + 8]
                  if (c := _UV_CAUSE.search(rest))]
        cause = f": {causes[-1]}" if causes else ""
        return (f"{found.group(1)} could not be installed{cause} (bake build --no-cache "
                "fetches its files again)")[:300]
    return None


def _failure(tail: Iterable[str]) -> str:
    """The most telling line of a failed build's log.

    BuildKit ends a failed build with "executor failed running [the whole RUN]";
    what a person needs is the step's own last error line above it (pip's
    "ERROR: No matching distribution ...", hubfetch's "bake-fetch: error: ...").
    """
    lines = [line.strip() for line in tail]
    mismatch = _hash_mismatch(lines) or _uv_failed(lines)
    if mismatch:
        return mismatch
    for line in reversed(lines):
        step = _STEP_OUTPUT.fullmatch(line)
        if step and "error" in step.group(1).lower():
            return step.group(1).strip()[:300]
    for line in reversed(lines):
        if line.startswith(("ERROR:", "error:", "ERROR ")) or "did not complete" in line:
            return line.removeprefix("ERROR:").strip()[:300]
    for line in reversed(lines):
        if line:
            return line[:300]
    return "no output"

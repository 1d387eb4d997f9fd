"""Run a job from its image: one node or N, hardened, limits from ``[run]``.

Plan, then execute: :func:`spec_job` / :func:`image_job` build a frozen
:class:`RunPlan`; :func:`container_config` turns it into one node's container
settings (pure, unit-tested; ``bake/nodes.py`` plans what N nodes add);
:func:`run_job` is the only part that runs.  Nothing from the seller's
environment reaches the job: its environment is the image's plus the spec's
``[job].env`` plus the node conventions, and docker-py's habit of copying the
client's proxy settings into containers is switched off.

One lifecycle, whatever N::

    sweep what killed bakes left -> mount each node's /out -> (N > 1) the job's
    network, proven closed -> create every node -> start them together -> follow
    their output -> wait: the first node to fail stops the others; the timeout
    stops all -> collect /out -> remove containers, network and mounts, always

A single node keeps ``--network none`` and passes its output through byte for
byte; N nodes prefix each line with the node's name.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from .egress import lockdown
from .engine import Engine
from .errors import BakeError, EngineError, RunError, SetupError, UsageError
from .job import ResolvedJob
from .nodes import (
    NODE_LABEL,
    OWNER_LABEL,
    RUN_LABEL,
    NodeNetwork,
    current_owner,
    host_routes,
    is_orphan,
    node_env,
    node_name,
    node_settings,
    pick_subnet,
    prefixes,
)
from .outbox import Collected, Outbox, close_outbox, collect, open_outbox, sweep_outboxes
from .spec import MAX_NODES, JobSpec, RunLimits
from .stacks.labels import STACK as STACK_LABEL
from .units import format_size

__all__ = ["NodeResult", "RunPlan", "RunResult", "container_config", "image_job", "run_job",
           "spec_job"]

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
    # The nodes' network (N > 1): "bridge" on this engine, or "overlay" on an engine
    # that manages a Docker Swarm (the seam for nodes on several machines).
    network: str = "bridge"

    @property
    def nodes(self) -> int:
        return self.limits.nodes

    def with_nodes(self, nodes: int | None) -> RunPlan:
        """The plan with ``bake run --nodes`` applied."""
        if nodes is None:
            return self
        if isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES:
            raise UsageError(f"--nodes {nodes}: must be a whole number from 1 to {MAX_NODES}")
        return replace(self, limits=replace(self.limits, nodes=nodes))


@dataclass(frozen=True)
class NodeResult:
    rank: int
    exit_code: int
    oom_killed: bool = False
    stopped: bool = False  # bake stopped it: another node failed first, or the timeout
    output: str | None = None
    skipped_outputs: tuple[str, ...] = ()
    output_over_limit: bool = False

    def to_json(self) -> dict[str, object]:
        return {"node": self.rank, "exit_code": self.exit_code, "oom_killed": self.oom_killed,
                "stopped": self.stopped, "output": self.output,
                "skipped_outputs": list(self.skipped_outputs),
                "output_over_limit": self.output_over_limit}


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
    nodes: tuple[NodeResult, ...] = ()
    failed_node: int | None = None  # the first node to fail, when one did
    output_limit: int = 0

    @property
    def reason(self) -> str:
        if self.timed_out:
            return "timed out"
        who = f"{node_name(self.failed_node)} " if len(self.nodes) > 1 and \
            self.failed_node is not None else ""
        if self.oom_killed:
            return (f"{who}was killed for using more than its memory limit "
                    f"({format_size(self.memory_limit)}; raise [run] memory in bake.toml if it "
                    "needs more)")
        return f"{who}exited {self.exit_code}"

    @property
    def output_note(self) -> str | None:
        """One line when a node left more in /out than ``[run] output`` allows."""
        over = [n for n in self.nodes if n.output_over_limit]
        if not over:
            return None
        who = "the job" if len(self.nodes) == 1 else ", ".join(node_name(n.rank) for n in over)
        return (f"{who} left more than {format_size(self.output_limit)} in /out ([run] output): "
                "nothing of it was kept")

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image, "exit_code": self.exit_code, "timed_out": self.timed_out,
            "oom_killed": self.oom_killed, "duration_s": self.duration_s,
            "output": self.output, "skipped_outputs": list(self.skipped_outputs),
            "failed_node": self.failed_node,
            "output_over_limit": any(n.output_over_limit for n in self.nodes),
            "nodes": [n.to_json() for n in self.nodes],
        }


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
    if labels.get(STACK_LABEL):
        raise RunError(f"{image} is a stack (a deps layer other jobs build on), not a job",
                       hint="run a job built on it: bake run SPEC")
    try:
        manifest = json.loads(labels["bake.manifest"])
        command = tuple(manifest["command"])
        env = tuple(sorted(manifest.get("env", {}).items()))
    except (KeyError, ValueError, TypeError):
        raise RunError(f"{image} is not an image baked by bake (no bake.manifest label)",
                       hint="bake run takes a job spec or an image that bake built") from None
    return RunPlan(image, command + tuple(args), env, RunLimits(), output,
                   str(labels.get("bake.key", "")))


def container_config(plan: RunPlan, *, user: str, out_dir: str | None, rank: int = 0,
                     network: NodeNetwork | None = None, run_id: str = "",
                     owner: str = "") -> dict[str, Any]:
    """The Engine API's settings for node ``rank``'s container (the only one, when N = 1),
    for ``POST /containers/create``.  Pure."""
    limits = plan.limits
    node, node_host = node_settings(rank, plan.nodes, network)
    host: dict[str, Any] = {
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
        # The network (none, for a single node), the hosts file and the resolver.
        **node_host,
    }
    if limits.gpus:
        if limits.gpus == "all":
            host["DeviceRequests"] = [{"Driver": "", "Count": -1, "DeviceIDs": None,
                                       "Capabilities": [["gpu"]], "Options": {}}]
        else:
            ids = limits.gpus.removeprefix("device=").split(",")
            host["DeviceRequests"] = [{"Driver": "", "Count": 0, "DeviceIDs": ids,
                                       "Capabilities": [["gpu"]], "Options": {}}]
    # The node conventions last: they describe the job's shape, which the spec cannot.
    env = {**dict(plan.env), **node_env(rank, plan.nodes)}
    return {
        "Image": plan.image,
        "Cmd": list(plan.command),
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": user,
        "Labels": {"bake.job": plan.key or "unknown", RUN_LABEL: run_id, NODE_LABEL: str(rank),
                   OWNER_LABEL: owner},
        "AttachStdin": False,
        "OpenStdin": False,
        "Tty": False,
        **node,
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
    """Run the planned job to its end; always removes its containers, network and mounts."""
    n = plan.nodes
    info = engine.inspect_image(plan.image)
    if info is None:
        raise RunError(f"image {plan.image} is not on this engine")
    user = job_user((info.get("Config") or {}).get("User", ""))
    me = current_owner()
    sweep(engine, lambda label: is_orphan(label, me))
    run_id = uuid.uuid4().hex[:16]
    # Names of bake's own: a Ctrl-C that lands while the Engine is creating a
    # container (before create returns its id) must not leave it behind.
    names = [f"bake-job-{run_id}" if n == 1 else f"bake-job-{run_id}-{rank}"
             for rank in range(n)]
    requested: list[str] = []
    created: set[str] = set()
    boxes: list[Outbox] = []
    network: NodeNetwork | None = None
    network_requested = False
    started = time.monotonic()
    try:
        if plan.output is not None:
            try:
                plan.output.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunError(f"cannot use {plan.output} for the job's output: "
                               f"{exc.strerror or exc}",
                               hint="pass --output a folder bake can create or write") from exc
            for _ in range(n):
                boxes.append(open_outbox(plan.limits.output, user, me.label()))
        if n > 1:
            network_requested = True
            network = _create_network(engine, plan, run_id, me.label())
            _prove_closed(engine, plan, network, me.label())
        for rank, name in enumerate(names):
            config = container_config(plan, user=user,
                                      out_dir=str(boxes[rank].mount) if boxes else None,
                                      rank=rank, network=network, run_id=run_id,
                                      owner=me.label())
            requested.append(name)
            try:
                engine.create_container(name, config)
            except EngineError as exc:
                raise RunError(f"cannot create {_who(rank, n)}container: {exc.message}") from exc
            created.add(name)
        _each(lambda name: _start(engine, name), names)
        pumps = _follow(engine, names, stdout, stderr) if stream else []
        codes, first_failed, stopped, timed_out = _wait_all(engine, names, plan.limits.timeout)
        for pump in pumps:
            pump.join(timeout=10)
        nodes = []
        for rank, name in enumerate(names):
            state = engine.inspect_container(name)
            code = codes.get(rank, state.exit_code if state else 0)
            kept = Collected(False, 0)
            where = None
            if boxes and plan.output is not None:
                dest = plan.output if n == 1 else plan.output / node_name(rank)
                kept = collect(boxes[rank].mount, dest, plan.limits.output)
                where = str(dest)
            nodes.append(NodeResult(rank, code, bool(state and state.oom_killed),
                                    rank in stopped, where, kept.skipped, kept.over_limit))
        failed = nodes[first_failed] if first_failed is not None else None
        skipped = tuple(s if n == 1 else f"{node_name(r.rank)}/{s}"
                        for r in nodes for s in r.skipped_outputs)
        return RunResult(
            image=plan.image,
            exit_code=EXIT_TIMEOUT if timed_out else (failed.exit_code if failed else 0),
            timed_out=timed_out,
            oom_killed=bool(failed and failed.oom_killed) or (n == 1 and nodes[0].oom_killed),
            duration_s=round(time.monotonic() - started, 3),
            output=str(plan.output) if plan.output else None,
            skipped_outputs=skipped,
            memory_limit=plan.limits.memory,
            nodes=tuple(nodes),
            failed_node=first_failed,
            output_limit=plan.limits.output,
        )
    finally:
        # Containers first (a network with endpoints cannot go), then the network,
        # then the mounts their /out lived on.
        _each(lambda name: engine.discard_container(name, in_flight=name not in created),
              requested)
        if network_requested:
            # By name: a Ctrl-C may land while the Engine is still creating it.
            _remove_network(engine, NodeNetwork.name_for(run_id),
                            maybe_in_flight=network is None)
        for box in boxes:
            close_outbox(box)


def _who(rank: int, nodes: int) -> str:
    return f"{node_name(rank)}'s " if nodes > 1 else "the job's "


def _each(action: Callable[[str], None], names: Iterable[str]) -> None:
    """``action`` on every name at once (all nodes start, stop and go together);
    the first error is raised once all are done."""
    items = list(names)
    if len(items) <= 1:
        for name in items:
            action(name)
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        for future in [pool.submit(action, name) for name in items]:
            future.result()


def _start(engine: Engine, name: str) -> None:
    try:
        engine.start_container(name)
    except EngineError as exc:
        raise RunError(f"cannot start the job's container {name}: {exc.message}") from exc


def _kill(engine: Engine, name: str) -> None:
    with contextlib.suppress(EngineError):
        engine.kill_container(name)


def _wait_all(engine: Engine, names: Sequence[str], timeout: int
              ) -> tuple[dict[int, int], int | None, set[int], bool]:
    """Wait for every node: (exit codes, first failing rank, ranks bake stopped, timed out).

    The first node to exit non-zero stops the others at once; at the job's timeout
    every node still running is stopped.  The main thread waits on a queue, so a
    Ctrl-C or SIGTERM lands at once.
    """
    exits: queue.Queue[tuple[int, int | None]] = queue.Queue()

    def wait(rank: int) -> None:
        try:
            exits.put((rank, engine.wait_container(names[rank], timeout=timeout + 60)))
        except (EngineError, OSError):
            exits.put((rank, None))

    def watch(rank: int) -> None:
        threading.Thread(target=wait, args=(rank,), daemon=True).start()

    for rank in range(len(names)):
        watch(rank)
    deadline = time.monotonic() + timeout
    codes: dict[int, int] = {}
    first_failed: int | None = None
    stopped: set[int] = set()
    timed_out = False

    def stop_the_rest() -> None:
        rest = [rank for rank in range(len(names)) if rank not in codes]
        stopped.update(rest)
        _each(lambda name: _kill(engine, name), [names[rank] for rank in rest])

    while len(codes) < len(names):
        remaining = deadline - time.monotonic()
        if not timed_out and remaining <= 0:
            timed_out = True
            stop_the_rest()
        try:
            rank, code = exits.get(timeout=max(remaining, 0.05) if not timed_out else 30)
        except queue.Empty:
            if timed_out:
                break  # the engine did not report the killed nodes: inspect says the rest
            continue
        if code is None:
            # The wait itself failed (a dropped connection): ask the engine, wait again.
            try:
                state = engine.inspect_container(names[rank])
            except EngineError:
                continue  # gone: the timeout or the others decide
            if state is not None and state.running:
                watch(rank)
                continue
            code = state.exit_code if state is not None else 1
        codes[rank] = code
        if code != 0 and first_failed is None and not timed_out and rank not in stopped:
            first_failed = rank
            stop_the_rest()
    return codes, first_failed, stopped, timed_out


def _follow(engine: Engine, names: Sequence[str], stdout: IO[bytes] | None,
            stderr: IO[bytes] | None) -> list[threading.Thread]:
    """Stream every node's output; with N > 1, line by line with the node's name."""
    sinks = (stdout if stdout is not None else _stdbuffer("stdout"),
             stderr if stderr is not None else _stdbuffer("stderr"))
    locks = (threading.Lock(), threading.Lock())
    pumps = []
    for name, prefix in zip(names, prefixes(len(names)), strict=True):
        writers: dict[int, _Raw | _Lines] = {
            stream: _Lines(sinks[stream - 1], prefix, locks[stream - 1]) if prefix
            else _Raw(sinks[stream - 1]) for stream in (1, 2)}
        t = threading.Thread(target=_pump, args=(engine, name, writers), daemon=True)
        t.start()
        pumps.append(t)
    return pumps


class _Raw:
    """A single node's output: passed through byte for byte, as it comes."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink

    def write(self, chunk: bytes) -> None:
        self.sink.write(chunk)
        self.sink.flush()

    def close(self) -> None:
        pass


class _Lines:
    """One node's stream into a sink every node shares: whole lines, each prefixed."""

    LONGEST = 64 << 10  # a line longer than this is cut, so one node cannot hold the rest

    def __init__(self, sink: IO[bytes], prefix: bytes, lock: threading.Lock) -> None:
        self.sink, self.prefix, self.lock = sink, prefix, lock
        self.partial = b""

    def write(self, chunk: bytes) -> None:
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        while len(self.partial) > self.LONGEST:
            lines.append(self.partial[:self.LONGEST])
            self.partial = self.partial[self.LONGEST:]
        if lines:
            self._emit(lines)

    def close(self) -> None:
        if self.partial:
            self._emit([self.partial])
            self.partial = b""

    def _emit(self, lines: list[bytes]) -> None:
        with self.lock:
            self.sink.write(b"".join(self.prefix + line + b"\n" for line in lines))
            self.sink.flush()


def _pump(engine: Engine, name: str, writers: dict[int, _Raw | _Lines]) -> None:
    """One node's stdout and stderr, from one followed log, each to its writer."""
    try:
        for stream, chunk in engine.logs(name, stdout=True, stderr=True, follow=True):
            if stream in writers:
                writers[stream].write(chunk)
    except (EngineError, OSError):  # the container may vanish under us; output is best effort
        pass
    finally:
        for writer in writers.values():
            with contextlib.suppress(OSError, ValueError):
                writer.close()


def _remove_network(engine: Engine, name: str, *, maybe_in_flight: bool = False) -> None:
    for attempt in range(20):
        try:
            if engine.remove_network(name) or not maybe_in_flight or attempt >= 9:
                return
        except EngineError as exc:
            if exc.unreachable:
                return
            # "has active endpoints": a container's removal is still being finished.
        time.sleep(0.1)


def _create_network(engine: Engine, plan: RunPlan, run_id: str, owner: str) -> NodeNetwork:
    """Create the job's network on a free subnet, after making sure bake's rules guard it."""
    try:
        lockdown.ensure_node_rules()
    except BakeError as exc:
        raise RunError(f"a job of {plan.nodes} nodes needs bake's firewall rules for job "
                       f"networks, and they are not in place: {exc.message}",
                       hint="run bake as root: it installs them itself") from exc
    taken = _taken_subnets(engine)
    prefix = NodeNetwork.prefix_for(plan.network)
    for _ in range(8):
        network = NodeNetwork.for_run(run_id, pick_subnet(taken, prefix=prefix), owner=owner,
                                      driver=plan.network)
        try:
            engine.create_network(network.create_args())
            return network
        except EngineError as exc:
            if "overlap" not in exc.message.lower():
                hint = ("an overlay network needs an engine that manages a Docker Swarm "
                        "(docs/multi-node.md)" if plan.network == "overlay" else None)
                raise RunError(f"cannot create the job's network: {exc.message}",
                               hint=hint) from exc
            taken.append(network.subnet)  # another run took it a moment ago: another one
    raise RunError("cannot find a free address range for the job's network",
                   hint=f"too many networks overlap {network.subnet}'s pool; remove unused ones")


def _prove_closed(engine: Engine, plan: RunPlan, network: NodeNetwork, owner: str) -> None:
    """A canary on the job's own network shows that no address of the host answers
    (or a proof made under the same firewall rules a moment ago stands)."""
    proof = lockdown.prove_nodes_recent(
        engine, plan.image, JOB_PYTHON, network.name, network.gateway,
        network.address(network.canary_host), owner=owner, network_options=network.shape())
    if not proof.enforced:
        raise RunError(f"the job's network is not closed: {proof.detail}",
                       hint="check `iptables -S BAKE-NODES-FWD` and that nothing else "
                       "accepts traffic from bkn-* bridges")


def _taken_subnets(engine: Engine) -> list[str]:
    """What a job's network must not overlap: the host's routes and the engine's networks."""
    taken: list[str] = []
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            taken += host_routes(fh.read())
    except OSError:
        pass
    with contextlib.suppress(EngineError):
        for net in engine.networks():
            for config in (net.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet"):
                    taken.append(str(config["Subnet"]))
    return taken


def sweep(engine: Engine, orphan: Callable[[str], bool]) -> None:
    """Remove what a bake killed with SIGKILL left: its containers, networks and mounts,
    found by bake's own labels; never those of a bake that is still alive."""
    try:
        for found in engine.containers(label=OWNER_LABEL):
            if orphan((found.get("Labels") or {}).get(OWNER_LABEL, "")):
                engine.discard_container(str(found["Id"]), in_flight=False)
        for net in engine.networks(label=OWNER_LABEL):
            if orphan((net.get("Labels") or {}).get(OWNER_LABEL, "")):
                _remove_network(engine, str(net["Id"]))
    except EngineError:
        pass  # a sweep that cannot run now runs next time
    sweep_outboxes(orphan)


def _stdbuffer(name: str) -> IO[bytes]:
    stream: IO[bytes] = (sys.stdout if name == "stdout" else sys.stderr).buffer
    return stream


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

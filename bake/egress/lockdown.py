"""Host confinement of build steps: firewall rules, and a canary that proves them.

``lock`` puts two chains of bake's own in front of the engine's rules::

    INPUT       -> BAKE-EGRESS-IN:   from the build bridge, only bake's proxy ports
    DOCKER-USER -> BAKE-EGRESS-FWD:  from the build bridge, nothing is forwarded

REJECT, not DROP, so that a blocked attempt fails at once instead of hanging a
build step until its own timeout.  ``unlock`` removes exactly those chains and
jumps.  :func:`prove` shows the state from inside a container on the bridge:
a direct connection to a host listener must fail and the proxy must answer,
and the forwarding chain must be in place.

Build steps cannot join a custom network with the engine's built-in BuildKit
(ENVIRONMENT.md), so the confinement is of the default bridge as a whole.

The networks of multi-node jobs (``bake/nodes.py``) get two chains of their own,
matched by their bridges' name prefix, so one set of rules covers every job::

    INPUT       -> BAKE-NODES-IN:    from a node bridge, nothing reaches the host
    DOCKER-USER -> BAKE-NODES-FWD:   bridged between one job's nodes: accepted;
                                     anything else from or to a node bridge: dropped

DROP, not REJECT, here: the host has no address on a node bridge, so a reject
would leave by another interface.  :func:`ensure_node_rules` installs them (they
touch nothing but bake's own bridges, so ``bake run`` may add them itself), and
:func:`prove_nodes` shows from a canary on a job's network that the host, on every
one of its addresses, does not answer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import proc
from ..engine import Engine
from ..errors import BakeError, EgressError, EngineError, UsageError
from ..nodes import BRIDGE_PREFIX, NODE_DNS, OWNER_LABEL
from ..state import state_dir
from .policy import EgressPolicy
from .proxy import ProxyLimits, RunningProxy, start_proxy
from .relay import IndexRelay

__all__ = [
    "PROXY_PORTS",
    "Neighbour",
    "Proof",
    "bridge_neighbours",
    "describe_neighbours",
    "ensure_node_rules",
    "host_addresses",
    "lock",
    "neighbours_note",
    "node_rules_present",
    "prove",
    "prove_nodes_recent",
    "start_build_proxy",
    "status",
    "unlock",
]

# Build proxies listen on one of these ports of the bridge's gateway address;
# the lock lets the bridge reach exactly this range on the host.
PROXY_PORTS = range(39100, 39164)
CHAIN_IN = "BAKE-EGRESS-IN"
CHAIN_FWD = "BAKE-EGRESS-FWD"
_CANARY_TIMEOUT = 3.0


@dataclass(frozen=True)
class Proof:
    enforced: bool
    detail: str
    checks: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"enforced": self.enforced, "detail": self.detail, "checks": self.checks}


@dataclass(frozen=True)
class Neighbour:
    """A container on the default bridge that is not bake's: the lock confines it too."""

    name: str
    state: str  # "running", "exited", "created", ...
    image: str = ""


# bake's own containers: the egress canary (on the bridge for a second) and the jobs
# of `bake run` (network none, or a network of their own).
_BAKE_NAME_PREFIXES = ("bake-canary-", "bake-job-")


def bridge_neighbours(engine: Engine) -> list[Neighbour]:
    """The containers attached to the default bridge that are not bake's, by name."""
    found = []
    for container in engine.containers(all=True):
        networks = ((container.get("NetworkSettings") or {}).get("Networks") or {})
        mode = str((container.get("HostConfig") or {}).get("NetworkMode") or "")
        if "bridge" not in networks and mode not in ("bridge", "default"):
            continue
        names = [str(n).lstrip("/") for n in container.get("Names") or []]
        name = names[0] if names else str(container.get("Id", ""))[:12]
        labels = container.get("Labels") or {}
        if "bake.job" in labels or name.startswith(_BAKE_NAME_PREFIXES):
            continue
        found.append(Neighbour(name, str(container.get("State") or "unknown"),
                               str(container.get("Image") or "")))
    return sorted(found, key=lambda n: n.name)


def describe_neighbours(neighbours: list[Neighbour], bridge: str, *, locked: bool) -> str:
    """What the lock does (or would do) to the seller's own containers on the bridge.  Pure."""
    if not neighbours:
        return f"no containers on {bridge} but bake's"
    ports = f"{PROXY_PORTS.start}-{PROXY_PORTS.stop - 1}"
    listed = ", ".join(
        n.name if n.state == "running" else f"{n.name} ({n.state}; confined once started)"
        for n in neighbours)
    count = f"{len(neighbours)} container{'s' if len(neighbours) > 1 else ''}"
    verb = "are confined by the lock too" if locked else "would be confined by `bake egress lock`"
    return (
        f"{count} on {bridge} that {'are' if len(neighbours) > 1 else 'is'} not bake's {verb}: "
        f"{listed}. Under the lock they reach only TCP ports {ports} on this host (bake's "
        "proxies): no internet, no DNS, no other container, no other host port; "
        "their published ports answer connections from this host only. To keep their "
        "network, move them to a network of their own (docker network create NET; "
        "docker network connect NET NAME; docker network disconnect bridge NAME)"
    )


def neighbours_note(engine: Engine, *, locked: bool) -> str:
    """:func:`describe_neighbours` for this engine's bridge; never raises for a broken engine."""
    try:
        bridge = engine.bridge_name()
        return describe_neighbours(bridge_neighbours(engine), bridge, locked=locked)
    except EngineError as exc:
        return f"cannot list the containers on the default bridge: {exc.message}"


def _tables() -> list[str]:
    found = [t for t in ("iptables", "ip6tables") if shutil.which(t)]
    if "iptables" not in found:
        raise UsageError("iptables is not installed",
                         hint="install it (apt-get install iptables) and run as root")
    return found


def _ipt(table: str, *args: str, check: bool = True) -> proc.Completed:
    try:
        answer = proc.run([table, "-w", *args])
    except OSError as exc:
        raise BakeError(f"cannot run {table}: {exc.strerror or exc}",
                        hint="install iptables and run as root") from exc
    if check and not answer.ok:
        reason = answer.last_line()
        hint = "run as root" if "ermission" in reason else None
        raise BakeError(f"{table} {' '.join(args)} failed: {reason}", hint=hint)
    return answer


def _rules(bridge: str, table: str) -> dict[str, list[list[str]]]:
    """The rules ``lock`` installs.  Pure."""
    reject_tcp = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]
    reject_other = ["-j", "REJECT"]
    ports = f"{PROXY_PORTS.start}:{PROXY_PORTS.stop - 1}"
    return {
        CHAIN_IN: [
            ["-i", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-i", bridge, "-p", "tcp", "--dport", ports, "-j", "ACCEPT"],
            ["-i", bridge, *reject_tcp],
            ["-i", bridge, *reject_other],
        ],
        CHAIN_FWD: [
            ["-i", bridge, *reject_tcp],
            ["-i", bridge, *reject_other],
        ],
    }


_PARENT = {CHAIN_IN: "INPUT", CHAIN_FWD: "DOCKER-USER"}


def lock(engine: Engine) -> str:
    """Put bake's rules in place, in one commit per table: locking a locked host again (each
    ``bake egress lock``, each bootstrap) never leaves a moment without them."""
    bridge = engine.bridge_name()
    for table in _tables():
        chains = _rules(bridge, table)
        # dockerd makes DOCKER-USER at start; an engine started with --iptables=false does
        # not, and then forwarding is ours to guard.
        new_parent = _ipt(table, "-n", "-L", "DOCKER-USER", check=False).returncode != 0
        jumps = [chain for chain in chains
                 if _ipt(table, "-C", _PARENT[chain], "-j", chain, check=False).returncode != 0]
        _restore(table, _restore_text(chains, new_parent=new_parent, jumps=jumps))
    return (f"locked: containers on {bridge} reach only bake's proxy ports "
            f"{PROXY_PORTS.start}-{PROXY_PORTS.stop - 1} on the host; nothing is forwarded\n"
            + neighbours_note(engine, locked=True))


def _restore_text(chains: dict[str, list[list[str]]], *, new_parent: bool,
                  jumps: list[str]) -> str:
    """``iptables-restore --noflush`` input that puts ``chains`` in place in one commit.  Pure.

    A chain the input declares is made, or emptied, within the same commit that fills it
    again: no rule of the filter table but these changes, and nothing sees them half done.
    """
    lines = ["*filter"]
    if new_parent:
        lines.append(":DOCKER-USER - [0:0]")
    lines += [f":{chain} - [0:0]" for chain in chains]
    for chain, rules in chains.items():
        lines += [" ".join(["-A", chain, *rule]) for rule in rules]
    if new_parent:
        lines.append("-I FORWARD 1 -j DOCKER-USER")
    lines += [f"-I {_PARENT[chain]} 1 -j {chain}" for chain in jumps]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _restore(table: str, text: str) -> None:
    tool = f"{table}-restore"
    try:
        answer = proc.run([tool, "-w", "--noflush"], input=text)
    except OSError as exc:
        raise BakeError(f"cannot run {tool}: {exc.strerror or exc}",
                        hint="install iptables and run as root") from exc
    if not answer.ok:
        reason = answer.last_line()
        raise BakeError(f"{tool} could not put bake's rules in place: {reason}",
                        hint="run as root" if "ermission" in reason else None)


def unlock() -> str:
    removed = 0
    for table in _tables():
        for chain, parent in _PARENT.items():
            while _ipt(table, "-D", parent, "-j", chain, check=False).returncode == 0:
                removed += 1
            if _ipt(table, "-n", "-L", chain, check=False).returncode == 0:
                _ipt(table, "-F", chain)
                _ipt(table, "-X", chain)
    return "unlocked: bake's egress rules removed" if removed else "was not locked"


def locked_rules_present(engine: Engine) -> bool:
    try:
        bridge = engine.bridge_name()
        for chain, rules in _rules(bridge, "iptables").items():
            if not _ipt("iptables", "-C", _PARENT[chain], "-j", chain, check=False).ok:
                return False
            for rule in rules:
                if not _ipt("iptables", "-C", chain, *rule, check=False).ok:
                    return False
    except (BakeError, OSError):
        return False
    return True


def start_build_proxy(policy: EgressPolicy, gateway: str, *, log_path: Path | None,
                      limits: ProxyLimits, relay: IndexRelay | None = None) -> RunningProxy:
    """Start a proxy on the bridge gateway, on the first free port of :data:`PROXY_PORTS`."""
    last: Exception | None = None
    for port in PROXY_PORTS:
        try:
            return start_proxy(policy, host=gateway, port=port, log_path=log_path, limits=limits,
                               relay=relay)
        except EgressError as exc:
            last = exc
    raise EgressError(
        f"no free port for the egress proxy on {gateway} ({PROXY_PORTS.start}-"
        f"{PROXY_PORTS.stop - 1}): {last}",
        hint="too many builds at once, or another program holds those ports",
    )


_CANARY = rf"""
import json, socket, sys
gw, direct, proxy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def attempt(port, payload=None):
    s = socket.socket(); s.settimeout({_CANARY_TIMEOUT})
    try:
        s.connect((gw, port))
        if payload is None:
            return "connected"
        s.sendall(payload)
        return s.recv(64).decode("latin-1")
    except OSError as exc:
        return "failed: " + type(exc).__name__
    finally:
        s.close()
print(json.dumps({{"direct": attempt(direct),
                  "proxy": attempt(proxy, b"CONNECT bake-canary.invalid:443 HTTP/1.1\r\n\r\n")}}))
"""


def _canary_output(engine: Engine, image: str, what: str, config: dict[str, Any]
                   ) -> dict[str, Any] | Proof:
    """Run a canary container to its end (60 s at most) as nobody, with none of the
    seller's environment: the JSON object it printed last, or a failed :class:`Proof`
    saying why."""
    # A name of our own lets the finally clause remove the canary even when a Ctrl-C
    # or SIGTERM lands after the Engine created it but before create returned its id.
    name = f"bake-canary-{uuid.uuid4().hex[:16]}"
    created = False
    try:
        ident = engine.create_container(name, {
            "Image": image,
            "User": "65534:65534",
            "Env": [],  # nothing of the seller's environment, no proxy settings
            **config,
        })
        created = True
        engine.start_container(ident)
        try:
            code = engine.wait_container(ident, timeout=60)
        except TimeoutError:
            return Proof(False, f"the {what} in {image} did not finish within 60 s")
        if code != 0:
            return Proof(False, f"the {what} failed to run in {image}: exit {code}")
        output = engine.container_output(ident)
    except EngineError as exc:
        raise EngineError(f"cannot run the {what} in {image}: {exc.message}",
                          hint=exc.hint) from exc
    finally:
        engine.discard_container(name, in_flight=not created)
    try:
        checks = json.loads(output.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Proof(False, f"the {what} printed nothing readable")
    return checks if isinstance(checks, dict) else Proof(False, f"the {what} printed no object")


def prove(engine: Engine, image: str, proxy: RunningProxy) -> Proof:
    """Run the canary in a container on the bridge, next to a live proxy."""
    rules = locked_rules_present(engine)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((proxy.host, 0))
        listener.listen(8)
        direct_port = listener.getsockname()[1]
        output = _canary_output(engine, image, "egress canary", {
            "Cmd": ["python3", "-c", _CANARY, proxy.host, str(direct_port), str(proxy.port)],
            "HostConfig": {"NetworkMode": "bridge", "CapDrop": ["ALL"],
                           "SecurityOpt": ["no-new-privileges"]},
        })
    finally:
        listener.close()
    if isinstance(output, Proof):
        return output
    checks = output
    checks["forward_rules"] = rules
    direct_blocked = str(checks.get("direct", "")).startswith("failed")
    proxy_answers = str(checks.get("proxy", "")).startswith("HTTP/1.")
    if direct_blocked and proxy_answers and rules:
        return Proof(True, "direct connections fail, the proxy answers, forwarding is rejected",
                     checks)
    why = []
    if not direct_blocked:
        why.append("a direct connection from a container to the host succeeded")
    if not proxy_answers:
        why.append(f"the proxy did not answer ({checks.get('proxy')})")
    if not rules:
        why.append("bake's forwarding rules are not installed")
    return Proof(False, "; ".join(why), checks)


PROOF_TTL = 600.0  # seconds a canary's proof stands while the firewall is unchanged


def _firewall_fingerprint(engine: Engine, gateway: str) -> str | None:
    """A digest of every rule that decides what the bridge can reach (None: unreadable)."""
    digest = hashlib.sha256(f"{engine.bridge_name()} {gateway} {PROXY_PORTS}".encode())
    for table in ("iptables", "ip6tables"):
        if not shutil.which(table):
            continue
        try:
            rules = _ipt(table, "-S", check=False)
        except BakeError:
            return None
        if not rules.ok:
            return None
        digest.update(rules.stdout.encode())
    return digest.hexdigest()


def prove_recent(engine: Engine, image: str, gateway: str) -> Proof:
    """:func:`prove`, or a proof that a canary made under the very same firewall rules.

    A canary costs a container start (about 0.3 s); a build of a small job takes
    a few seconds.  The proof it gives depends on the firewall rules, the bridge
    and the proxy ports, all in the fingerprint; while they are unchanged, and for
    at most :data:`PROOF_TTL`, a positive proof stands.  A failed proof is never
    kept: the next build tries again.
    """
    record = state_dir() / "egress-proof.json"
    fingerprint = _firewall_fingerprint(engine, gateway)
    if fingerprint is not None:
        try:
            kept = json.loads(record.read_text())
            if (kept.get("fingerprint") == fingerprint
                    and 0 <= time.time() - float(kept["at"]) < PROOF_TTL
                    and locked_rules_present(engine)):
                when = time.strftime("%H:%M:%S", time.localtime(float(kept["at"])))
                return Proof(True, f"{kept['detail']} (canary at {when}, same firewall rules)",
                             dict(kept.get("checks", {}), cached=True))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    deny_all = EgressPolicy.from_settings([], [], [], own_addresses=[gateway])
    with start_build_proxy(deny_all, gateway, log_path=None, limits=ProxyLimits()) as proxy:
        proof = prove(engine, image, proxy)
    if proof.enforced and fingerprint is not None:
        record.write_text(json.dumps({"fingerprint": fingerprint, "at": time.time(),
                                      "detail": proof.detail, "checks": proof.checks}))
    else:
        record.unlink(missing_ok=True)
    return proof


def status(engine: Engine, image: str) -> Proof:
    """Prove the host's state with a deny-all proxy and a canary container in ``image``."""
    if engine.inspect_image(image) is None:
        raise UsageError(f"the canary image {image} is not on this engine",
                         hint="pass --image with any local image that has python3")
    gateway = engine.bridge_gateway()
    policy = EgressPolicy.from_settings([], [], [], own_addresses=[gateway])
    with start_build_proxy(policy, gateway, log_path=None, limits=ProxyLimits()) as proxy:
        return prove(engine, image, proxy)


# -- the networks of multi-node jobs -----------------------------------------------------------

CHAIN_NODES_IN = "BAKE-NODES-IN"
CHAIN_NODES_FWD = "BAKE-NODES-FWD"
_NODE_PARENT = {CHAIN_NODES_IN: "INPUT", CHAIN_NODES_FWD: "DOCKER-USER"}


def _node_rules(prefix: str) -> dict[str, list[list[str]]]:
    """The rules for every bridge whose name starts with ``prefix``.  Pure."""
    bridges = f"{prefix}+"
    return {
        CHAIN_NODES_IN: [["-i", bridges, "-j", "DROP"]],
        CHAIN_NODES_FWD: [
            # Frames bridged between two ports of one bridge: one job's nodes.  Routed
            # traffic between two node bridges is never "bridged", so it is dropped below.
            ["-i", bridges, "-o", bridges, "-m", "physdev", "--physdev-is-bridged",
             "-j", "ACCEPT"],
            ["-i", bridges, "-j", "DROP"],
            ["-o", bridges, "-j", "DROP"],
        ],
    }


def node_rules_present() -> bool:
    """Are the node chains, their rules and their jumps in place (both tables)?"""
    rules = _node_rules(BRIDGE_PREFIX)
    try:
        for table in _tables():
            for chain, chain_rules in rules.items():
                if _ipt(table, "-C", _NODE_PARENT[chain], "-j", chain, check=False).returncode:
                    return False
                for rule in chain_rules:
                    if _ipt(table, "-C", chain, *rule, check=False).returncode:
                        return False
    except (BakeError, OSError):
        return False
    return True


def ensure_node_rules() -> None:
    """Install the node chains where they are missing; never flushes, so that a run
    starting at the same moment never sees them empty."""
    if node_rules_present():
        return
    rules = _node_rules(BRIDGE_PREFIX)
    for table in _tables():
        for chain, chain_rules in rules.items():
            parent = _NODE_PARENT[chain]
            if _ipt(table, "-n", "-L", parent, check=False).returncode != 0:
                # An engine started with --iptables=false makes no DOCKER-USER chain.
                _ipt(table, "-N", parent, check=False)
                _ipt(table, "-I", "FORWARD", "1", "-j", parent)
            if _ipt(table, "-n", "-L", chain, check=False).returncode != 0:
                _ipt(table, "-N", chain, check=False)
            for rule in chain_rules:
                if _ipt(table, "-C", chain, *rule, check=False).returncode != 0:
                    _ipt(table, "-A", chain, *rule)
            if _ipt(table, "-C", parent, "-j", chain, check=False).returncode != 0:
                _ipt(table, "-I", parent, "1", "-j", chain)
    if not node_rules_present():
        raise EgressError("bake's firewall rules for job networks did not take",
                          hint="check `iptables -S BAKE-NODES-FWD` as root")


def _node_fingerprint(extra: str) -> str | None:
    """A digest of every rule that decides what a node bridge reaches (None: unreadable).

    Not the whole table: the engine adds rules for every network it creates, bake's
    own job networks included, and those do not change what a node reaches.
    """
    digest = hashlib.sha256(extra.encode())
    try:
        tables = _tables()
    except BakeError:
        return None
    for table in tables:
        for chain in ("INPUT", "DOCKER-USER", CHAIN_NODES_IN, CHAIN_NODES_FWD):
            answer = _ipt(table, "-S", chain, check=False)
            if not answer.ok:
                return None
            digest.update(answer.stdout.encode())
        answer = _ipt(table, "-S", "FORWARD", check=False)
        if not answer.ok:
            return None
        # The policy and what runs before the jump to DOCKER-USER.
        for line in answer.stdout.splitlines():
            digest.update(line.encode())
            if line.endswith("-j DOCKER-USER"):
                break
    return digest.hexdigest()


def host_addresses() -> list[str]:
    """Every address of this host but loopback and link-local ones: the canary's targets."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL":
            address = previous.strip().removeprefix("|-- ")
            if not address.startswith("127."):
                found.add(address)
    try:
        inet6 = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        inet6 = []
    for line in inet6:
        fields = line.split()
        if not fields:
            continue
        v6 = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        if not (v6.is_loopback or v6.is_link_local):
            found.add(str(v6))
    return sorted(found)


# Plenty for a listener that answers; an address no one holds fails by the neighbour
# lookup's own timeout (3 s) otherwise.
_NODE_CANARY_TIMEOUT = 1.5
_NODE_CANARY = rf"""
import json, socket, sys, threading
targets, port, me = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
results = {{}}
def attempt(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        s = socket.socket(family)
    except OSError as exc:
        results[address] = "failed: " + type(exc).__name__
        return
    s.settimeout({_NODE_CANARY_TIMEOUT})
    try:
        s.connect((address, port))
        results[address] = "connected"
    except OSError as exc:
        results[address] = "failed: " + type(exc).__name__
    finally:
        s.close()
    try:
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.sendto(b"bake-node-canary", (address, port))
        u.close()
    except OSError:
        pass
own = socket.socket()
own.bind((me, 0))
own.listen(1)
threads = [threading.Thread(target=attempt, args=(a,)) for a in targets]
for t in threads:
    t.start()
control = socket.socket()
control.settimeout({_NODE_CANARY_TIMEOUT})
try:
    control.connect(own.getsockname())
    control_result = "connected"
except OSError as exc:
    control_result = "failed: " + type(exc).__name__
for t in threads:
    t.join()
print(json.dumps({{"targets": results, "control": control_result}}))
"""


class _HostListeners:
    """TCP and UDP listeners on every address of the host, on one port: the bait."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        tcp4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp4.bind(("0.0.0.0", 0))
        self.port = int(tcp4.getsockname()[1])
        self._sockets.append(tcp4)
        for family, kind, address in ((socket.AF_INET6, socket.SOCK_STREAM, "::"),
                                      (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0"),
                                      (socket.AF_INET6, socket.SOCK_DGRAM, "::")):
            sock = socket.socket(family, kind)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, self.port))
            except OSError:
                sock.close()  # no IPv6 on this host, or the port is taken there
                continue
            self._sockets.append(sock)
        for sock in self._sockets:
            if sock.type == socket.SOCK_STREAM:
                sock.listen(16)
            sock.settimeout(0.2)
            threading.Thread(target=self._watch, args=(sock,), daemon=True).start()

    def _watch(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                if sock.type == socket.SOCK_STREAM:
                    conn, peer = sock.accept()
                    conn.close()
                    self.arrived.append(f"tcp from {peer[0]}")
                else:
                    _, peer = sock.recvfrom(512)
                    self.arrived.append(f"udp from {peer[0]}")
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            sock.close()


def prove_nodes(engine: Engine, image: str, python: str, network: str, gateway: str,
                canary_address: str, *, owner: str = "") -> Proof:
    """A canary on a job's network tries the host on every address (and the network's
    gateway address) over TCP and UDP; nothing may arrive, and the canary must reach
    its own address on that network (so that its failures are the network's)."""
    rules = node_rules_present()
    bait = _HostListeners()
    targets = [gateway, *host_addresses()]
    try:
        output = _canary_output(engine, image, "node canary", {
            "Cmd": [python, "-c", _NODE_CANARY, json.dumps(targets), str(bait.port),
                    canary_address],
            # The owner label lets a later run sweep it if this bake is killed.
            "Labels": {"bake.canary": "nodes", OWNER_LABEL: owner},
            "HostConfig": {"NetworkMode": network, "CapDrop": ["ALL"], "Dns": [NODE_DNS],
                           "SecurityOpt": ["no-new-privileges"], "ReadonlyRootfs": True},
            "NetworkingConfig": {"EndpointsConfig": {
                network: {"IPAMConfig": {"IPv4Address": canary_address}}}},
        })
    finally:
        bait.close()
    if isinstance(output, Proof):
        return output
    checks = output
    checks["arrived"] = bait.arrived
    checks["node_rules"] = rules
    reached = sorted(a for a, r in checks.get("targets", {}).items() if not r.startswith("failed"))
    why = []
    if bait.arrived or reached:
        why.append("a node reached the host (" + ", ".join(reached + bait.arrived) + ")")
    if checks.get("control") != "connected":
        why.append(f"the canary could not reach its own address ({checks.get('control')})")
    if not rules:
        why.append("bake's firewall rules for job networks are not installed")
    if why:
        return Proof(False, "; ".join(why), checks)
    return Proof(True, f"no address of the host answers a node ({len(targets)} tried)", checks)


def prove_nodes_recent(engine: Engine, image: str, python: str, network: str, gateway: str,
                       canary_address: str, *, owner: str, network_options: str) -> Proof:
    """:func:`prove_nodes`, or a positive proof made under the very same rules and network
    options less than :data:`PROOF_TTL` ago (a canary costs about two seconds: a
    container start, and attempts on addresses no one holds, which time out)."""
    record = state_dir() / "nodes-proof.json"
    fingerprint = _node_fingerprint(network_options)
    if fingerprint is not None:
        try:
            kept = json.loads(record.read_text())
            if (kept.get("fingerprint") == fingerprint
                    and 0 <= time.time() - float(kept["at"]) < PROOF_TTL):
                return Proof(True, str(kept["detail"]), dict(kept.get("checks", {}), cached=True))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    proof = prove_nodes(engine, image, python, network, gateway, canary_address, owner=owner)
    if proof.enforced and fingerprint is not None:
        record.write_text(json.dumps({"fingerprint": fingerprint, "at": time.time(),
                                      "detail": proof.detail, "checks": proof.checks}))
    else:
        record.unlink(missing_ok=True)
    return proof

"""A job of N nodes as a plan (pure): names, addresses, environment, hosts, network.

Every node is the single job's hardened container (``runner.container_config``)
plus what this module adds: a hostname (``node-<rank>``), a hosts file naming
every node, the environment distributed code expects, and, for N > 1, a place
on a network of the job's own::

    node-0 10.250.x.2 ─┐
    node-1 10.250.x.3 ─┼─ bridge bkn-<run> (--internal, no host address, DNS kept in the job)
    node-N 10.250.x.N+1┘

Why the network looks the way it does (each point is attacked by a test):

* ``--internal``: the engine adds no route out and no masquerading.
* ``com.docker.network.bridge.inhibit_ipv4``: the host gets no address on the
  bridge.  A plain ``--internal`` bridge gives the host the gateway address, and
  a host service listening on all addresses is reachable through it.
* ``dns = 127.0.0.1``: the engine's embedded DNS server answers the nodes' names
  itself and forwards everything else to the container's own loopback, where
  nothing listens.  Without a DNS setting of its own, Engine 20.10 forwards a
  node's lookups, even on an ``--internal`` network, through the *host's*
  resolver when that resolver is on loopback (systemd-resolved's 127.0.0.53),
  from the host's namespace: any name a node asks for would leave the machine
  (tests/integration/test_nodes.py shows it on an engine that sees such a host).
* The bridge is named ``bkn-...`` so that bake's own firewall rules
  (``egress.lockdown``, the only iptables user) drop anything a node sends to
  the host or routes elsewhere, whatever the engine's own rules do.

The seam for more than one machine is :class:`NodeNetwork`'s ``driver`` (a plan's
``network``): a Docker Swarm overlay (``--internal``, attachable) instead of the
bridge, with the same fixed addresses, hosts files, resolver and environment.
It runs on a one-node swarm (tests/integration/test_nodes.py); placing nodes on
several engines is the step left (docs/multi-node.md).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import MAX_NODES

__all__ = [
    "BRIDGE_PREFIX",
    "MASTER_PORT",
    "MAX_NODES",
    "NodeNetwork",
    "Owner",
    "is_orphan",
    "node_env",
    "node_hosts",
    "node_name",
    "pick_subnet",
]

MASTER_PORT = 29500  # torch.distributed's default
# The node networks' address pool: one /27 per job (16 nodes, the network, the
# unused gateway address, the canary and the broadcast address fit in 32).
NODE_POOL = ipaddress.IPv4Network("10.250.0.0/16")
NODE_PREFIX = 27
# A Swarm overlay also hands out addresses of its own (a load balancer endpoint per
# engine on the network) from the pool's dynamic range: twice the room, and the
# dynamic range kept to the upper half, clear of the nodes' fixed addresses.
OVERLAY_PREFIX = 26
# Interface names are at most 15 bytes: "bkn-" and 11 hex digits of the run id.
BRIDGE_PREFIX = "bkn-"
CANARY_HOST = 30  # the canary's host number in the job's /27, after every node
# Where a node's resolver forwards the names it does not know: its own loopback.
NODE_DNS = "127.0.0.1"
# The engine's resolver never answers a name it cannot forward: glibc would wait
# 2 x 5 s for each.  One try of one second, so a job that asks for an outside
# name fails in a second instead of hanging.
NODE_DNS_OPTIONS = ("timeout:1", "attempts:1")

RUN_LABEL = "bake.run"
OWNER_LABEL = "bake.owner"
NODE_LABEL = "bake.node"


def node_name(rank: int) -> str:
    return f"node-{rank}"


@dataclass(frozen=True)
class NodeNetwork:
    """A network of one job's own.  ``driver`` is the seam for more than one machine:
    ``bridge`` (one engine) or ``overlay`` (a Docker Swarm, attachable)."""

    name: str
    subnet: str
    bridge: str = ""
    driver: str = "bridge"
    labels: tuple[tuple[str, str], ...] = ()
    ip_range: str = ""  # where the engine may pick addresses itself (an overlay's endpoints)

    @classmethod
    def for_run(cls, run_id: str, subnet: str, *, owner: str, driver: str = "bridge"
                ) -> NodeNetwork:
        labels = ((RUN_LABEL, run_id), (OWNER_LABEL, owner))
        if driver == "bridge":
            return cls(cls.name_for(run_id), subnet, f"{BRIDGE_PREFIX}{run_id[:11]}", driver,
                       labels)
        if driver != "overlay":
            raise ValueError(f"no node network driver {driver!r}")
        upper = list(ipaddress.IPv4Network(subnet).subnets(prefixlen_diff=1))[1]
        return cls(cls.name_for(run_id), subnet, "", driver, labels, str(upper))

    @staticmethod
    def prefix_for(driver: str) -> int:
        return OVERLAY_PREFIX if driver == "overlay" else NODE_PREFIX

    @staticmethod
    def name_for(run_id: str) -> str:
        return f"bake-nodes-{run_id}"

    @property
    def gateway(self) -> str:
        """The address the engine calls the gateway; with no host address on the
        bridge, nobody holds it (the canary checks that nothing answers there)."""
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    canary_host = CANARY_HOST

    def address(self, host: int) -> str:
        net = ipaddress.IPv4Network(self.subnet)
        if not 2 <= host < net.num_addresses - 1:
            raise ValueError(f"host {host} is outside {self.subnet}")
        return str(net.network_address + host)

    def node_address(self, rank: int) -> str:
        """Node ``rank``'s address: host numbers from 2 (1 is the engine's gateway
        address, which nothing holds when the host has no address on the bridge)."""
        return self.address(rank + 2)

    def create_args(self) -> dict[str, Any]:
        """The Engine API's network settings (``POST /networks/create``).  Pure."""
        options: dict[str, str] = {}
        if self.driver == "bridge":
            options = {
                "com.docker.network.bridge.name": self.bridge,
                # No host address on the bridge: nothing of the host's is on-link.
                "com.docker.network.bridge.inhibit_ipv4": "true",
                "com.docker.network.bridge.enable_ip_masquerade": "false",
                "com.docker.network.bridge.enable_icc": "true",
            }
        pool: dict[str, str] = {"Subnet": self.subnet}
        if self.ip_range:
            pool["IPRange"] = self.ip_range
        return {
            "Name": self.name,
            "Driver": self.driver,
            "Internal": True,
            # An overlay must be attachable for plain containers (not services) to join.
            "Attachable": self.driver == "overlay",
            "EnableIPv6": False,
            "Options": options,
            "Labels": dict(self.labels),
            "CheckDuplicate": True,
            "IPAM": {"Driver": "default", "Config": [pool]},
        }

    def shape(self) -> str:
        """What the network's closure depends on, the same for every run (its name and
        address range are not): a canary's proof stands for every network of this shape."""
        args = self.create_args()
        options = dict(args["Options"])
        if "com.docker.network.bridge.name" in options:
            options["com.docker.network.bridge.name"] = f"{BRIDGE_PREFIX}*"
        return json.dumps({"driver": args["Driver"], "internal": args["Internal"],
                           "options": options, "dns": NODE_DNS, "dns_options": NODE_DNS_OPTIONS},
                          sort_keys=True)


def node_env(rank: int, nodes: int) -> dict[str, str]:
    """The conventions torchrun and ``init_process_group("env://")`` read; one process
    per node, so WORLD_SIZE = NNODES and RANK = NODE_RANK."""
    return {
        "MASTER_ADDR": node_name(0),
        "MASTER_PORT": str(MASTER_PORT),
        "NNODES": str(nodes),
        "NODE_RANK": str(rank),
        "WORLD_SIZE": str(nodes),
        "RANK": str(rank),
        "LOCAL_RANK": "0",
    }


def node_hosts(network: NodeNetwork | None, nodes: int) -> dict[str, str]:
    """The hosts-file entries every node gets: each node's name and address.

    A single node has no network: its own name is its loopback, so that gloo and
    c10d resolve the hostname without asking any DNS server.
    """
    if network is None:
        return {node_name(0): "127.0.0.1"}
    return {node_name(rank): network.node_address(rank) for rank in range(nodes)}


def node_settings(rank: int, nodes: int, network: NodeNetwork | None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a node's container adds to the single job's hardened settings, in the Engine
    API's words: (container settings, host settings).  Pure."""
    host: dict[str, Any] = {
        "ExtraHosts": [f"{name}:{address}"
                       for name, address in node_hosts(network, nodes).items()],
        "Dns": [NODE_DNS],
        "DnsOptions": list(NODE_DNS_OPTIONS),
        "NetworkMode": network.name if network is not None else "none",
    }
    container: dict[str, Any] = {"Hostname": node_name(rank)}
    if network is not None:
        container["NetworkingConfig"] = {"EndpointsConfig": {
            network.name: {"IPAMConfig": {"IPv4Address": network.node_address(rank)}},
        }}
    return container, host


def pick_subnet(taken: Iterable[str], *, prefix: int = NODE_PREFIX,
                rng: random.Random | None = None) -> str:
    """A subnet of :data:`NODE_POOL` (a /27 by default) that overlaps none of ``taken`` (the
    host's routes and addresses, the engine's networks).  Random, so that two runs starting at once
    rarely ask for the same one; the engine refuses an overlap, and the caller retries."""
    busy = []
    for text in taken:
        try:
            busy.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    candidates = list(NODE_POOL.subnets(new_prefix=prefix))
    (rng or random.Random()).shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in busy if other.version == 4):
            return str(net)
    raise LookupError(f"no free /{prefix} left in {NODE_POOL}")


def host_routes(route_table: str) -> list[str]:
    """The IPv4 destinations in ``/proc/net/route`` (the default route excluded)."""
    found = []
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest = socket.inet_ntoa(int(fields[1], 16).to_bytes(4, "little"))
            mask = socket.inet_ntoa(int(fields[7], 16).to_bytes(4, "little"))
        except (ValueError, OverflowError):
            continue
        if dest != "0.0.0.0":
            found.append(f"{dest}/{mask}")
    return found


# -- who owns a run's containers, network and staging -----------------------------------------
# A bake killed with SIGKILL leaves them behind; the next run sweeps them, but never
# those of a bake that is still alive, on this machine or on another one sharing the
# engine.  A pid alone is not enough: pids are reused (so the process's start time
# is part of the label), the machine may have rebooted (boot id), and another
# container or host may run a bake with the same pid (pid namespace, machine id).


@dataclass(frozen=True)
class Owner:
    machine: str
    boot: str
    pidns: str
    pid: int
    start: str

    def label(self) -> str:
        return f"{self.machine}/{self.boot}/{self.pidns}/{self.pid}/{self.start}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.split("/")
        if len(parts) != 5 or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]), parts[4])


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), or None when there is no such pid."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def current_owner() -> Owner:
    pid = os.getpid()
    try:
        pidns = os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        pidns = "?"
    machine = (_read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")
               or socket.gethostname())
    return Owner(machine=machine.replace("/", "_"),
                 boot=_read("/proc/sys/kernel/random/boot_id") or "?",
                 pidns=pidns, pid=pid, start=process_start(pid) or "?")


def is_orphan(label: str, me: Owner,
              start_of: Callable[[int], str | None] = process_start) -> bool:
    """Is the bake that labelled something dead, so that it may be swept?  Only a
    bake of this machine and pid namespace can be judged; anything else is left alone."""
    owner = Owner.parse(label)
    if owner is None or owner.machine != me.machine or owner.pidns != me.pidns:
        return False
    if owner.boot != me.boot:
        return True  # the machine rebooted since: that bake is gone
    if owner == me:
        return False
    return start_of(owner.pid) != owner.start


def prefixes(nodes: int) -> Sequence[bytes]:
    """What starts each line of a node's output: nothing for a single node (its output
    passes through byte for byte), ``node-<rank> | `` otherwise."""
    if nodes == 1:
        return (b"",)
    width = len(node_name(nodes - 1))
    return tuple(f"{node_name(rank):<{width}} | ".encode() for rank in range(nodes))

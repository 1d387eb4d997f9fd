"""The plan of a job of N nodes, without an engine: settings, env, hosts, network, lifecycle."""

from __future__ import annotations

import io
import ipaddress
import threading
import time

import pytest

from bake.egress.lockdown import _node_rules
from bake.errors import UsageError
from bake.nodes import (
    BRIDGE_PREFIX,
    NODE_POOL,
    NodeNetwork,
    Owner,
    host_routes,
    is_orphan,
    node_env,
    node_hosts,
    node_settings,
    pick_subnet,
    prefixes,
)
from bake.runner import RunPlan, RunResult, _Lines, _wait_all, container_config
from bake.spec import MAX_NODES, RunLimits

RUN = "0123456789abcdef"


def network(subnet: str = "10.250.7.32/27") -> NodeNetwork:
    return NodeNetwork.for_run(RUN, subnet, owner="m/b/p/1/2")


def test_every_node_gets_the_conventions_of_distributed_code() -> None:
    assert node_env(2, 3) == {"MASTER_ADDR": "node-0", "MASTER_PORT": "29500", "NNODES": "3",
                              "NODE_RANK": "2", "WORLD_SIZE": "3", "RANK": "2",
                              "LOCAL_RANK": "0"}


def test_the_hosts_file_names_every_node_and_a_single_node_is_its_loopback() -> None:
    assert node_hosts(None, 1) == {"node-0": "127.0.0.1"}
    assert node_hosts(network(), 3) == {"node-0": "10.250.7.34", "node-1": "10.250.7.35",
                                        "node-2": "10.250.7.36"}


def test_the_network_is_internal_with_no_host_address() -> None:
    net = network()
    args = net.create_args()
    assert args["Internal"] is True and args["EnableIPv6"] is False
    assert args["Driver"] == "bridge" and args["Attachable"] is False
    options = args["Options"]
    assert options["com.docker.network.bridge.inhibit_ipv4"] == "true"
    assert options["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    # The firewall rules find the bridge by its name; interface names have 15 bytes at most.
    bridge = options["com.docker.network.bridge.name"]
    assert bridge.startswith(BRIDGE_PREFIX) and len(bridge) <= 15 and bridge == net.bridge
    assert args["IPAM"]["Config"] == [{"Subnet": "10.250.7.32/27"}]
    assert args["Labels"]["bake.run"] == RUN


def test_an_overlay_network_is_the_seam_for_many_machines() -> None:
    assert NodeNetwork.prefix_for("overlay") == 26 and NodeNetwork.prefix_for("bridge") == 27
    net = NodeNetwork.for_run(RUN, "10.250.7.64/26", owner="o", driver="overlay")
    args = net.create_args()
    assert args["Driver"] == "overlay" and args["Attachable"] is True
    assert args["Internal"] is True and args["Options"] == {} and net.bridge == ""
    # The swarm picks its own endpoints' addresses in the upper half; the nodes' fixed
    # addresses and the canary's stay below it.
    assert args["IPAM"]["Config"] == [{"Subnet": "10.250.7.64/26", "IPRange": "10.250.7.96/27"}]
    fixed = [net.node_address(r) for r in range(MAX_NODES)] + [net.address(net.canary_host)]
    assert all(ipaddress.IPv4Address(a) < ipaddress.IPv4Address("10.250.7.96") for a in fixed)
    with pytest.raises(ValueError):
        NodeNetwork.for_run(RUN, "10.250.7.64/26", owner="o", driver="macvlan")


def test_addresses_fit_the_subnet_for_every_node_and_the_canary() -> None:
    net = network()
    subnet = ipaddress.IPv4Network(net.subnet)
    used = [net.node_address(rank) for rank in range(MAX_NODES)]
    used.append(net.address(net.canary_host))
    assert len(set(used)) == MAX_NODES + 1
    assert all(ipaddress.IPv4Address(a) in subnet for a in used)
    assert net.gateway == "10.250.7.33" and net.gateway not in used
    with pytest.raises(ValueError):
        net.address(31)  # the broadcast address


def test_a_proof_stands_for_every_network_of_the_same_shape() -> None:
    assert network("10.250.7.32/27").shape() == \
        NodeNetwork.for_run("f" * 16, "10.250.9.0/27", owner="x").shape()


def test_node_settings_one_node_has_no_network_and_n_nodes_one_of_their_own() -> None:
    one, one_host = node_settings(0, 1, None)
    assert one_host["NetworkMode"] == "none" and one["Hostname"] == "node-0"
    assert "NetworkingConfig" not in one
    assert one_host["ExtraHosts"] == ["node-0:127.0.0.1"]
    net = network()
    two, two_host = node_settings(1, 2, net)
    assert two_host["NetworkMode"] == net.name and two["Hostname"] == "node-1"
    assert two_host["ExtraHosts"] == ["node-0:10.250.7.34", "node-1:10.250.7.35"]
    assert two["NetworkingConfig"] == {"EndpointsConfig": {
        net.name: {"IPAMConfig": {"IPv4Address": "10.250.7.35"}}}}
    for host in (one_host, two_host):
        # The engine's resolver forwards to the node's own loopback, and gives up fast.
        assert host["Dns"] == ["127.0.0.1"]
        assert host["DnsOptions"] == ["timeout:1", "attempts:1"]


def test_every_node_is_hardened_exactly_like_a_single_job() -> None:
    limits = RunLimits(memory=64 << 20, cpus=0.5, pids=32, timeout=5, shm=1 << 20, tmp=8 << 20,
                       nodes=3)
    plan = RunPlan("img", ("python",), (("A", "1"), ("RANK", "99")), limits, key="k")
    single = container_config(RunPlan("img", ("python",), (("A", "1"),),
                                      RunLimits(memory=64 << 20, cpus=0.5, pids=32, timeout=5,
                                                shm=1 << 20, tmp=8 << 20), key="k"),
                              user="10001:10001", out_dir=None)
    node = container_config(plan, user="10001:10001", out_dir="/stage/out", rank=2,
                            network=network(), run_id=RUN, owner="m/b/p/1/2")
    node_only = {"Env", "Labels", "NetworkingConfig", "Hostname"}
    host_only = {"NetworkMode", "ExtraHosts", "Binds"}
    for key, value in single.items():
        if key not in node_only and key != "HostConfig":
            assert node[key] == value, key
    for key, value in single["HostConfig"].items():
        if key not in host_only:
            assert node["HostConfig"][key] == value, key
    env = dict(item.split("=", 1) for item in node["Env"])
    assert env["A"] == "1" and env["RANK"] == "2"  # the job's shape wins over the spec's env
    assert node["Labels"] == {"bake.job": "k", "bake.run": RUN, "bake.node": "2",
                              "bake.owner": "m/b/p/1/2"}
    assert node["HostConfig"]["Binds"] == ["/stage/out:/out:rw"]
    for key in ("Privileged", "CapAdd", "Devices", "PidMode", "UsernsMode", "Sysctls",
                "PortBindings", "PublishAllPorts"):
        assert key not in node["HostConfig"]


def test_nodes_out_of_range_are_refused() -> None:
    plan = RunPlan("img", ("x",))
    assert plan.with_nodes(None) is plan and plan.with_nodes(16).nodes == 16
    for bad in (0, 17, -1):
        with pytest.raises(UsageError, match="--nodes"):
            plan.with_nodes(bad)


def test_a_subnet_is_picked_clear_of_the_hosts_routes_and_the_engines_networks() -> None:
    all_but_one = [str(n) for n in NODE_POOL.subnets(new_prefix=27)][1:]
    assert pick_subnet(all_but_one) == "10.250.0.0/27"
    assert pick_subnet(["10.250.0.0/17", "not a network", "fd00::/8"]).startswith("10.250.")
    picked = ipaddress.IPv4Network(pick_subnet(["10.250.0.0/17"]))
    assert not picked.overlaps(ipaddress.IPv4Network("10.250.0.0/17"))
    with pytest.raises(LookupError):
        pick_subnet(["10.0.0.0/8"])


def test_host_routes_are_read_from_proc_net_route() -> None:
    table = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
             "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
             "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
             "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
             "garbage\n")
    assert host_routes(table) == ["192.0.2.0/255.255.255.0", "172.17.0.0/255.255.0.0"]


ME = Owner("machine", "boot", "4026531836", 100, "5000")


@pytest.mark.parametrize(("label", "starts", "orphan"), [
    (ME.label(), {100: "5000"}, False),  # this very bake
    ("machine/boot/4026531836/200/7000", {200: "7000"}, False),  # another live bake
    ("machine/boot/4026531836/200/7000", {200: "9999"}, True),  # its pid was reused
    ("machine/boot/4026531836/200/7000", {}, True),  # it is gone
    ("machine/old-boot/4026531836/200/7000", {200: "7000"}, True),  # the machine rebooted
    ("other/boot/4026531836/200/7000", {}, False),  # another machine's: not ours to judge
    ("machine/boot/4026532000/200/7000", {}, False),  # another pid namespace's
    ("garbage", {}, False),
    ("", {}, False),
])
def test_only_what_a_dead_bake_of_this_machine_left_is_swept(label: str, starts: dict[int, str],
                                                              orphan: bool) -> None:
    assert is_orphan(label, ME, start_of=starts.get) is orphan


def test_owner_labels_round_trip() -> None:
    assert Owner.parse(ME.label()) == ME


def test_a_single_nodes_output_is_not_prefixed_and_n_nodes_line_up() -> None:
    assert prefixes(1) == (b"",)
    assert prefixes(2) == (b"node-0 | ", b"node-1 | ")
    assert prefixes(12)[0] == b"node-0  | " and prefixes(12)[11] == b"node-11 | "


def test_lines_are_whole_and_prefixed_whatever_the_chunks() -> None:
    sink = io.BytesIO()
    lines = _Lines(sink, b"node-1 | ", threading.Lock())
    for chunk in (b"hel", b"lo\nwor", b"ld\n\nno newline at the end"):
        lines.write(chunk)
    lines.close()
    assert sink.getvalue() == (b"node-1 | hello\nnode-1 | world\nnode-1 | \n"
                               b"node-1 | no newline at the end\n")
    long = io.BytesIO()
    cut = _Lines(long, b"p ", threading.Lock())
    cut.write(b"x" * (_Lines.LONGEST * 2 + 5))
    cut.close()
    assert long.getvalue().count(b"p ") == 3


class _State:
    def __init__(self, running: bool, exit_code: int) -> None:
        self.running, self.exit_code = running, exit_code


class _Nodes:
    """A fake engine: node ``rank`` exits with ``codes[rank]`` after ``delays[rank]`` seconds,
    or when killed (137)."""

    def __init__(self, codes: list[int], delays: list[float]) -> None:
        self.codes, self.delays = codes, delays
        self.killed: list[str] = []
        self.done = {f"n{r}": threading.Event() for r in range(len(codes))}

    def wait_container(self, name: str, timeout: float) -> int:
        rank = int(name[1:])
        if self.done[name].wait(self.delays[rank]):
            return 137
        return self.codes[rank]

    def kill_container(self, name: str) -> None:
        self.killed.append(name)
        self.done[name].set()


def test_the_first_failing_node_stops_the_others_at_once() -> None:
    engine = _Nodes([0, 3, 0], [0.05, 0.2, 30])
    started = time.monotonic()
    codes, first, stopped, timed_out = _wait_all(engine, ["n0", "n1", "n2"], timeout=60)
    assert time.monotonic() - started < 5
    assert first == 1 and codes[1] == 3 and not timed_out
    assert stopped == {2} and engine.killed == ["n2"]  # node 0 had already ended well


def test_the_timeout_stops_every_node_still_running() -> None:
    engine = _Nodes([0, 0], [0.05, 30])
    codes, first, stopped, timed_out = _wait_all(engine, ["n0", "n1"], timeout=1)
    assert timed_out and first is None and stopped == {1} and codes[0] == 0


def test_nodes_that_all_succeed_fail_nothing() -> None:
    codes, first, stopped, timed_out = _wait_all(_Nodes([0, 0], [0.01, 0.1]), ["n0", "n1"],
                                                 timeout=30)
    assert codes == {0: 0, 1: 0} and first is None and stopped == set() and not timed_out


def test_json_keeps_the_old_keys_and_adds_every_node() -> None:
    from bake.runner import NodeResult

    result = RunResult(image="i", exit_code=3, timed_out=False, oom_killed=False, duration_s=1.0,
                       nodes=(NodeResult(0, 137, stopped=True), NodeResult(1, 3)), failed_node=1)
    data = result.to_json()
    for key in ("image", "exit_code", "timed_out", "oom_killed", "duration_s", "output",
                "skipped_outputs"):
        assert key in data
    assert [n["exit_code"] for n in data["nodes"]] == [137, 3]  # type: ignore[index]
    assert data["failed_node"] == 1 and result.reason == "node-1 exited 3"


def test_node_rules_drop_and_never_reject() -> None:
    """A reject would be sent by the host from an address that is not on the node bridge,
    so it would leave by another interface; the host stays silent instead."""
    rules = _node_rules("bkn-")
    flat = [rule for chain in rules.values() for rule in chain]
    assert all("REJECT" not in rule for rule in flat)
    accepts = [rule for rule in flat if rule[-1] == "ACCEPT"]
    assert accepts == [["-i", "bkn-+", "-o", "bkn-+", "-m", "physdev", "--physdev-is-bridged",
                        "-j", "ACCEPT"]]
    assert rules["BAKE-NODES-IN"] == [["-i", "bkn-+", "-j", "DROP"]]


class _Dropped(_Nodes):
    """Node 1's first wait loses its connection; the engine then says it runs or ended."""

    def __init__(self, running: bool) -> None:
        super().__init__([0, 4], [0.05, 0.1])
        self.running, self.dropped = running, False

    def wait_container(self, name: str, timeout: float) -> int:
        if name == "n1" and not self.dropped:
            self.dropped = True
            raise ConnectionResetError("dropped")
        return super().wait_container(name, timeout)

    def inspect_container(self, name: str) -> _State:
        return _State(self.running, 4)


@pytest.mark.parametrize("running", [True, False], ids=["still-running", "ended"])
def test_a_dropped_wait_asks_the_engine_instead_of_waiting_for_the_timeout(running: bool) -> None:
    started = time.monotonic()
    codes, first, _, timed_out = _wait_all(_Dropped(running), ["n0", "n1"], timeout=60)
    assert time.monotonic() - started < 5 and not timed_out
    assert codes[1] == 4 and first == 1

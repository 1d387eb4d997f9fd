"""Multi-node jobs on a real Engine: the nodes reach each other, and nothing else.

One image for the module (a job whose one file, ``node.py``, does what its
argument says), built offline; spec files in the same folder give it different
``[run]`` settings without changing the key.  A node prints its findings as JSON
after ``RESULT``; with N > 1 every line bake passes on starts with the node's name.

Every probe targets an address of this machine: the host's own addresses (where
listeners of the test's own wait on all addresses), the address the engine calls
the job network's gateway, bake's proxy on the docker0 gateway, another job's
nodes, and a network namespace the test makes.  Nothing may arrive anywhere.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CA_BUNDLE, Host

NODE = r'''
import json, os, socket, struct, sys, threading, time

PORT = 40000
rank, nodes = int(os.environ["NODE_RANK"]), int(os.environ["NNODES"])

def result(value):
    print("RESULT " + json.dumps(value), flush=True)

def conventions():
    names = {}
    for r in range(nodes):
        try:
            names[f"node-{r}"] = socket.gethostbyname(f"node-{r}")
        except OSError as exc:
            names[f"node-{r}"] = "failed: " + type(exc).__name__
    try:
        own = socket.gethostbyname(socket.gethostname())
    except OSError as exc:
        own = "failed: " + type(exc).__name__
    keys = ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "WORLD_SIZE", "RANK")
    return {"env": {k: os.environ.get(k) for k in keys}, "hostname": socket.gethostname(),
            "own": own, "names": names}

def exchange():
    """Every node sends every other node a message over TCP and reads theirs."""
    got = {}
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", PORT))
    server.listen(16)
    def serve():
        for _ in range(nodes - 1):
            conn, _ = server.accept()
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            sender, _, body = data.partition(b":")
            got[int(sender)] = len(body)
            conn.close()
    t = threading.Thread(target=serve)
    t.start()
    for peer in range(nodes):
        if peer == rank:
            continue
        deadline = time.time() + 30
        while True:
            try:
                c = socket.create_connection((f"node-{peer}", PORT), timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        c.sendall(f"{rank}:".encode() + bytes(100000 * (rank + 1)))
        c.close()
    t.join(60)
    return {"received": {str(k): v for k, v in sorted(got.items())}, **conventions()}

def gateway():
    for line in open("/proc/net/route").readlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(f[2], 16)))
    return None

QUERY = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
         b"\x0bbake-canary\x07example\x00\x00\x01\x00\x01")

def tcp(address, port):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        s = socket.socket(family)
    except OSError as exc:
        return "failed: " + type(exc).__name__
    s.settimeout(3)
    try:
        s.connect((address, port))
        s.sendall(b"escaped")
        return "connected"
    except OSError as exc:
        return "failed: " + type(exc).__name__
    finally:
        s.close()

def udp(address, port, payload=b"escaped"):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(payload, (address, port))
        return "answered " + repr(s.recv(512)[:20])
    except OSError as exc:
        return "failed: " + type(exc).__name__

def probe(targets):
    """targets: {"tcp": [[addr, port], ...], "udp": [...], "dns_servers": [...], "names": [...]}"""
    gw = gateway()
    tcp_targets = [tuple(t) for t in targets["tcp"]]
    udp_targets = [tuple(t) for t in targets["udp"]]
    servers = list(targets["dns_servers"]) + ["127.0.0.11"]
    if gw:
        tcp_targets += [(gw, p) for p in targets["gateway_ports"]]
        udp_targets += [(gw, p) for p in targets["gateway_ports"]]
        servers.append(gw)
    found = {}
    def record(key, fn, *args):
        found[key] = fn(*args)
    threads = [threading.Thread(target=record, args=(f"tcp {a}:{p}", tcp, a, p))
               for a, p in tcp_targets + [(s, 53) for s in servers]]
    threads += [threading.Thread(target=record, args=(f"udp {a}:{p}", udp, a, p))
                for a, p in udp_targets]
    threads += [threading.Thread(target=record, args=(f"dns {s}", udp, s, 53, QUERY))
                for s in servers]
    for t in threads:
        t.start()
    for name in targets["names"]:
        try:
            found[f"name {name}"] = socket.getaddrinfo(name, 80)[0][4][0]
        except OSError as exc:
            found[f"name {name}"] = "failed: " + type(exc).__name__
    for t in threads:
        t.join()
    return {"gateway": gw, "found": found}

def listen():
    """Another job's node: listen, say where, and report anything that arrives."""
    s = socket.socket()
    s.bind(("0.0.0.0", PORT))
    s.listen(16)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", PORT))
    def udp_watch():
        while True:
            _, peer = u.recvfrom(512)
            print("ARRIVED udp", peer[0], flush=True)
    threading.Thread(target=udp_watch, daemon=True).start()
    print("LISTENING " + socket.gethostbyname(socket.gethostname()), flush=True)
    while True:
        _, peer = s.accept()
        print("ARRIVED tcp", peer[0], flush=True)

def fail(who, code):
    print("started", flush=True)
    if rank == int(who):
        time.sleep(0.5)
        sys.exit(int(code))
    time.sleep(300)

def sleep():
    print("sleeping", flush=True)
    time.sleep(300)

def write(how, size_mib):
    """Fill /out as a hostile job would; report how far the kernel let it go."""
    size, written, error = int(size_mib) << 20, 0, None
    try:
        if how == "fill":
            with open("/out/fill.bin", "wb") as fh:
                while written < size:
                    fh.write(b"x" * (1 << 20))
                    fh.flush()
                    os.fsync(fh.fileno())
                    written += 1 << 20
        elif how == "sparse":
            with open("/out/sparse.bin", "wb") as fh:
                fh.truncate(size)
            written = size
        elif how == "links":
            with open("/out/one.bin", "wb") as fh:
                fh.write(b"x" * (1 << 20))
            for i in range(int(size_mib) - 1):
                os.link("/out/one.bin", f"/out/link{i}")
            written = size
        elif how == "many":
            for i in range(size // 4096):
                open(f"/out/f{i}", "w").close()
                written += 4096
        elif how == "ok":
            with open("/out/result.bin", "wb") as fh:
                fh.write(b"r" * size)
            written = size
    except OSError as exc:
        error = exc.errno
    result({"written": written, "error": error})

what = sys.argv[1]
if what == "exchange":
    result(exchange())
elif what == "probe":
    result(probe(json.loads(sys.argv[2])))
elif what == "conventions":
    result(conventions())
elif what == "listen":
    listen()
elif what == "fail":
    fail(*sys.argv[2:4])
elif what == "sleep":
    sleep()
elif what == "write":
    write(*(sys.argv[2:4] if rank == 0 or len(sys.argv) < 6 else sys.argv[4:6]))
elif what == "exit":
    sys.exit(int(sys.argv[2]))
'''

SPEC = """\
name = "nodes"
[job]
files = ["node.py"]
command = ["python", "node.py"]
[run]
memory = "256m"
timeout = "{timeout}"
nodes = {nodes}
"""
SPECS = {"bake.toml": ("2m", 2), "three.toml": ("2m", 3), "one.toml": ("2m", 1),
         "short.toml": ("4s", 2)}
OUT_SPEC = SPEC.format(timeout="2m", nodes=1) + 'output = "8m"\n'


@pytest.fixture(scope="module")
def cluster(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The node job, built once (offline), and its seller host."""
    folder = tmp_path_factory.mktemp("nodes")
    host = Host(folder=folder / "seller", egress={"allow": [], "enforce": "warn"},
                build={"ca_bundle": CA_BUNDLE} if Path(CA_BUNDLE).is_file() else {})
    host.folder.mkdir()
    job = folder / "job"
    job.mkdir()
    (job / "node.py").write_text(f"# nonce {uuid.uuid4()}\n{NODE}")
    for name, (timeout, nodes) in SPECS.items():
        (job / name).write_text(SPEC.format(timeout=timeout, nodes=nodes))
    (job / "out.toml").write_text(OUT_SPEC)
    proc = host.bake("build", str(job / "bake.toml"), "--json", check=True)
    image = json.loads(proc.stdout)["image"]
    yield {"host": host, "job": job, "image": image, "key": image.rpartition(":")[2]}
    subprocess.run(["docker", "rmi", image], capture_output=True, check=False)


def run(cluster: dict[str, Any], *args: str, spec: str = "bake.toml", extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None, timeout: float = 240
        ) -> tuple[subprocess.CompletedProcess[str], dict[int, Any]]:
    host: Host = cluster["host"]
    proc = host.bake("run", str(cluster["job"] / spec), *extra, "--", *args, env=env,
                     timeout=timeout)
    # With --json, stdout holds bake's one object and the job's stdout goes to stderr.
    return proc, results(proc.stderr if "--json" in extra else proc.stdout)


def results(text: str) -> dict[int, Any]:
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(?:node-(\d+) +\| )?RESULT (.*)", line)
        if match:
            found[int(match.group(1) or 0)] = json.loads(match.group(2))
    return found


def leftovers(label: str) -> tuple[list[str], list[str]]:
    """Containers and networks that carry a label (``key=value``), running or not."""
    containers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                                capture_output=True, text=True, check=True).stdout.split()
    networks = subprocess.run(["docker", "network", "ls", "-q", "--filter", f"label={label}"],
                              capture_output=True, text=True, check=True).stdout.split()
    return containers, networks


@pytest.mark.parametrize("spec", ["bake.toml", "three.toml"], ids=["2-nodes", "3-nodes"])
def test_nodes_exchange_data_over_tcp(cluster: dict[str, Any], spec: str, tmp_path: Path) -> None:
    nodes = 2 if spec == "bake.toml" else 3
    proc, found = run(cluster, "exchange", spec=spec,
                      extra=("--json", "--output", str(tmp_path / "out")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(found) == list(range(nodes)), proc.stderr
    for rank, facts in found.items():
        peers = {str(r): 100000 * (r + 1) for r in range(nodes) if r != rank}
        assert facts["received"] == peers  # every byte from every other node
        assert facts["env"] == {"MASTER_ADDR": "node-0", "MASTER_PORT": "29500",
                                "NNODES": str(nodes), "NODE_RANK": str(rank),
                                "WORLD_SIZE": str(nodes), "RANK": str(rank)}
        assert facts["hostname"] == f"node-{rank}"
        assert facts["own"] == facts["names"][f"node-{rank}"]
        assert all(not a.startswith("failed") for a in facts["names"].values()), facts
    # --json: the old keys, and one entry per node
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["exit_code"] == 0 and outcome["timed_out"] is False
    assert [n["exit_code"] for n in outcome["nodes"]] == [0] * nodes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        [f"node-{r}" for r in range(nodes)]
    # the job's lines come prefixed with their node (stdout goes to stderr under --json)
    for rank in range(nodes):
        assert re.search(rf"^node-{rank} \| RESULT ", proc.stderr, re.MULTILINE)
    assert leftovers(f"bake.job={cluster['key']}") == ([], [])


def test_a_single_node_resolves_its_own_hostname(cluster: dict[str, Any]) -> None:
    """gloo and c10d resolve the hostname; on --network none it used to have no address."""
    proc, found = run(cluster, "conventions", spec="one.toml")
    assert proc.returncode == 0, proc.stderr
    facts = found[0]
    assert facts["hostname"] == "node-0" and facts["own"] == "127.0.0.1"
    assert facts["env"]["NNODES"] == "1" and facts["env"]["RANK"] == "0"
    # a single node's output is passed through as it is: no prefix
    assert proc.stdout.startswith("RESULT ")


class Bait:
    """TCP and UDP listeners on every address of this host, on one port and on 53."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.sockets: list[socket.socket] = []
        probe = socket.socket()
        probe.bind(("0.0.0.0", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        for port in (self.port, 53):
            for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    sock = socket.socket(family, kind)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    try:
                        sock.bind((address, port))
                    except OSError as exc:
                        pytest.fail(f"cannot listen on {address} port {port}: {exc}")
                    if kind == socket.SOCK_STREAM:
                        sock.listen(64)
                    sock.settimeout(0.2)
                    self.sockets.append(sock)
                    threading.Thread(target=self._watch, args=(sock, port), daemon=True).start()

    def _watch(self, sock: socket.socket, port: int) -> None:
        while True:
            try:
                if sock.type == socket.SOCK_STREAM:
                    conn, peer = sock.accept()
                    conn.close()
                    self.arrived.append(f"tcp {peer[0]} -> :{port}")
                else:
                    data, peer = sock.recvfrom(512)
                    self.arrived.append(f"udp {peer[0]} -> :{port} {data[:40]!r}")
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@contextlib.contextmanager
def outside_namespace() -> Iterator[tuple[str, list[str]]]:
    """A network namespace of the test's own, reached from the host over a veth pair,
    with a listener on TCP and UDP: an address on this machine that no job network has."""
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"bk-out-{tag}", f"bko{tag}", f"bki{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    listener = None
    try:
        subprocess.run(["ip", "link", "add", here, "type", "veth", "peer", "name", there],
                       check=True)
        subprocess.run(["ip", "link", "set", there, "netns", ns], check=True)
        subprocess.run(["ip", "addr", "add", "10.213.251.1/30", "dev", here], check=True)
        subprocess.run(["ip", "link", "set", here, "up"], check=True)
        for cmd in (["ip", "addr", "add", "10.213.251.2/30", "dev", there],
                    ["ip", "link", "set", there, "up"], ["ip", "link", "set", "lo", "up"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", "-c", OUTSIDE_LISTENER],
            stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        arrived: list[str] = []
        reader = threading.Thread(target=lambda: arrived.extend(listener.stdout or []),  # type: ignore
                                  daemon=True)
        reader.start()
        yield "10.213.251.2", arrived
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
            if listener.stdout is not None:
                with contextlib.suppress(NameError):
                    reader.join(timeout=5)
                listener.stdout.close()
        subprocess.run(["ip", "link", "del", here], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


OUTSIDE_LISTENER = r"""
import socket, threading
t = socket.socket(); t.bind(("0.0.0.0", 40000)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 40000))
def watch_udp():
    while True:
        _, peer = u.recvfrom(512); print("udp", peer[0], flush=True)
threading.Thread(target=watch_udp, daemon=True).start()
print("ready", flush=True)
while True:
    _, peer = t.accept(); print("tcp", peer[0], flush=True)
"""


def host_addresses() -> list[str]:
    from bake.egress.lockdown import host_addresses as every_address

    return every_address()


def test_a_node_reaches_nothing_but_its_peers(cluster: dict[str, Any]) -> None:
    """From every node of a job: the host on every address (and through the network's
    gateway address), bake's proxy, another running job's nodes, a namespace elsewhere on
    this machine, DNS servers and names: nothing answers, nothing arrives."""
    from bake.egress.lockdown import start_build_proxy
    from bake.egress.policy import EgressPolicy
    from bake.egress.proxy import ProxyLimits
    from bake.engine import Engine

    host: Host = cluster["host"]
    docker0 = Engine.from_env().bridge_gateway()
    bait = Bait()
    other = subprocess.Popen(
        [sys.executable, "-m", "bake", "--config", str(host.config), "run",
         str(cluster["job"] / "bake.toml"), "--", "listen"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    policy = EgressPolicy.from_settings(["pypi.org"], [], [], own_addresses=[docker0])
    proxy = start_build_proxy(policy, docker0, log_path=None, limits=ProxyLimits())
    try:
        assert other.stdout is not None
        other_nodes = []
        while len(other_nodes) < 2:
            line = other.stdout.readline()
            assert line, other.stderr.read() if other.stderr else "the other job ended"
            if "LISTENING" in line:
                other_nodes.append(line.split()[-1])
        other_lines: list[str] = []
        threading.Thread(target=lambda: other_lines.extend(other.stdout or []),  # type: ignore
                         daemon=True).start()
        with outside_namespace() as (outside, outside_arrived):
            addresses = host_addresses()
            assert docker0 in addresses and outside not in addresses
            targets = {
                "tcp": [[a, bait.port] for a in addresses]
                + [[docker0, proxy.port], [outside, 40000]]
                + [[a, 40000] for a in other_nodes],
                "udp": [[a, bait.port] for a in addresses]
                + [[outside, 40000]] + [[a, 40000] for a in other_nodes],
                "gateway_ports": [bait.port, proxy.port],
                "dns_servers": addresses,
                "names": ["bake-canary.example.com", "bake-canary-bare", "node-0.example",
                          "localhost.bake-canary.example", f"{uuid.uuid4().hex}.example.org"],
            }
            proc, found = run(cluster, "probe", json.dumps(targets), spec="three.toml")
            time.sleep(1)  # anything in flight lands before we look
            assert outside_arrived == [], outside_arrived
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert sorted(found) == [0, 1, 2]
        for rank, facts in found.items():
            # 127.0.0.11 is the engine's resolver inside the node's own namespace: it may
            # answer (that no name resolves and nothing reaches a DNS listener is the point).
            reached = {k: v for k, v in facts["found"].items()
                       if not v.startswith("failed") and "127.0.0.11" not in k}
            assert reached == {}, (rank, reached)
            assert facts["gateway"] is None or facts["gateway"].startswith("10.250.")
            assert any(k.startswith("tcp 10.213.251.2") for k in facts["found"])
        assert bait.arrived == [], bait.arrived
        assert [line for line in other_lines if "ARRIVED" in line] == []
    finally:
        proxy.close()
        bait.close()
        other.send_signal(signal.SIGTERM)
        other.communicate(timeout=60)
    assert other.returncode == 143


def test_the_first_failing_node_stops_the_others(cluster: dict[str, Any]) -> None:
    started = time.monotonic()
    proc, _ = run(cluster, "fail", "1", "7", spec="three.toml", extra=("--json",))
    assert proc.returncode == 7, proc.stdout + proc.stderr[-3000:]
    assert time.monotonic() - started < 60  # the others (sleeping 300 s) were stopped
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["failed_node"] == 1 and outcome["exit_code"] == 7
    by_node = {n["node"]: n for n in outcome["nodes"]}
    assert by_node[1]["exit_code"] == 7 and by_node[1]["stopped"] is False
    assert by_node[0]["stopped"] is True and by_node[2]["stopped"] is True
    assert "node-1 exited 7" in proc.stderr
    assert leftovers(f"bake.job={cluster['key']}") == ([], [])


def test_all_nodes_succeeding_is_zero_and_a_single_failure_is_its_code(
        cluster: dict[str, Any]) -> None:
    proc, _ = run(cluster, "exit", "0")
    assert proc.returncode == 0, proc.stderr
    proc, _ = run(cluster, "exit", "5", spec="one.toml")
    assert proc.returncode == 5, proc.stderr


def test_the_jobs_timeout_stops_every_node(cluster: dict[str, Any]) -> None:
    proc, _ = run(cluster, "sleep", spec="short.toml", extra=("--json",))
    assert proc.returncode == 124, proc.stdout + proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["timed_out"] is True
    assert all(n["stopped"] for n in outcome["nodes"])
    assert leftovers(f"bake.job={cluster['key']}") == ([], [])


def start(cluster: dict[str, Any], *args: str, nodes: int = 2,
          extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """A bake run in the background, returned once every node has said it is sleeping."""
    host: Host = cluster["host"]
    proc = subprocess.Popen([sys.executable, "-m", "bake", "--config", str(host.config), "run",
                             str(cluster["job"] / "bake.toml"), "--nodes", str(nodes), *extra,
                             "--", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    seen = 0
    while seen < nodes:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "bake ended"
        seen += "sleeping" in line
    return proc


def owned_by(pid: int) -> tuple[list[str], list[str]]:
    """The containers and networks a bake process labelled as its own."""
    found: tuple[list[str], list[str]] = ([], [])
    for kind, index in (("container", 0), ("network", 1)):
        ls = ["docker", "ps", "-a"] if kind == "container" else ["docker", "network", "ls"]
        ids = subprocess.run([*ls, "-q", "--filter", "label=bake.owner"], capture_output=True,
                             text=True, check=True).stdout.split()
        for ident in ids:
            label = subprocess.run(["docker", "inspect", "-f",
                                    '{{index .Config.Labels "bake.owner"}}'
                                    if kind == "container" else
                                    '{{index .Labels "bake.owner"}}', ident],
                                   capture_output=True, text=True, check=False).stdout.strip()
            if label.split("/")[3:4] == [str(pid)]:
                found[index].append(ident)
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_leaves_no_container_and_no_network(cluster: dict[str, Any],
                                                     signum: int) -> None:
    proc = start(cluster, "sleep")
    try:
        containers, networks = owned_by(proc.pid)
        assert len(containers) == 2 and len(networks) == 1
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert owned_by(proc.pid) == ([], [])


def mounted_runs() -> list[str]:
    from bake.state import state_dir

    runs = str(state_dir() / "runs")
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if line.split()[4].startswith(runs)]


def test_a_killed_bake_is_swept_by_the_next_run_but_a_live_one_is_not(
        cluster: dict[str, Any], tmp_path: Path) -> None:
    alive = start(cluster, "sleep")
    killed = start(cluster, "sleep", nodes=3, extra=("--output", str(tmp_path / "out")))
    try:
        killed.kill()  # SIGKILL: no finally clause runs
        killed.communicate(timeout=30)
        left = owned_by(killed.pid)
        assert len(left[0]) == 3 and len(left[1]) == 1  # what the sweep is for
        assert len(mounted_runs()) == 3  # and each node's /out, still mounted
        proc, _ = run(cluster, "exit", "0", spec="one.toml")
        assert proc.returncode == 0, proc.stderr
        assert owned_by(killed.pid) == ([], [])
        assert mounted_runs() == []
        still = owned_by(alive.pid)
        assert len(still[0]) == 2 and len(still[1]) == 1  # never a live bake's
        for ident in still[0]:
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", ident],
                                   capture_output=True, text=True, check=True).stdout.strip()
            assert state == "true"
    finally:
        alive.send_signal(signal.SIGTERM)
        alive.communicate(timeout=60)
        if killed.poll() is None:
            killed.kill()
            killed.communicate(timeout=30)
    assert owned_by(alive.pid) == ([], [])


def test_no_lookup_leaves_through_a_resolver_on_the_hosts_loopback(
        cluster: dict[str, Any]) -> None:
    """On a host whose resolver is on loopback (systemd-resolved's 127.0.0.53), Engine
    20.10's embedded DNS forwards a container's lookups from the host's namespace, even
    on an --internal network: any name a node asked for would leave the machine.  A
    second engine sees such a resolv.conf; a DNS listener waits at 127.0.0.53."""
    from tests.machines import loaded_from_host, second_engine

    arrived: list[str] = []
    sockets = []
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        sock = socket.socket(socket.AF_INET, kind)
        sock.bind(("127.0.0.53", 53))
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        sock.settimeout(0.2)
        sockets.append(sock)

    def watch(sock: socket.socket) -> None:
        while True:
            try:
                if sock.type == socket.SOCK_STREAM:
                    conn, _ = sock.accept()
                    conn.close()
                    arrived.append("tcp")
                else:
                    data, _ = sock.recvfrom(512)
                    arrived.append(repr(data[12:60]))
            except TimeoutError:
                continue
            except OSError:
                return

    for sock in sockets:
        threading.Thread(target=watch, args=(sock,), daemon=True).start()
    host: Host = cluster["host"]
    targets = {"tcp": [], "udp": [], "gateway_ports": [], "dns_servers": [],
               "names": ["bake-canary-leak.example.com", "bake-canary-bare"]}
    try:
        with second_engine(loaded_from_host(cluster["image"]), label="nodes-dns",
                           resolv_conf="nameserver 127.0.0.53\n") as sock_path:
            proc = host.bake("run", cluster["image"], "--nodes", "2", "--", "probe",
                             json.dumps(targets), env={"DOCKER_HOST": sock_path}, timeout=300)
            time.sleep(1)
    finally:
        for sock in sockets:
            sock.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = results(proc.stdout)
    assert sorted(found) == [0, 1]
    for facts in found.values():
        assert all(v.startswith("failed") for k, v in facts["found"].items()
                   if k.startswith("name ")), facts
    assert arrived == [], arrived


def loop_devices() -> list[str]:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.parametrize(("how", "mib"), [("fill", 4096), ("sparse", 65536), ("links", 12),
                                          ("many", 12)])
def test_out_past_its_limit_keeps_nothing_and_costs_the_host_little(
        cluster: dict[str, Any], tmp_path: Path, how: str, mib: int) -> None:
    from bake.outbox import fs_size
    from bake.state import state_dir

    before = loop_devices()
    dest = tmp_path / "out"
    proc, found = run(cluster, "write", how, str(mib), spec="out.toml",
                      extra=("--output", str(dest), "--json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    wrote = found[0]
    if how == "fill":
        # The kernel stopped it past the limit (so the measure sees it), not far past.
        assert wrote["error"] == 28 and 8 << 20 < wrote["written"] <= fs_size(8 << 20)
    else:
        assert wrote["error"] is None  # the tricks themselves fit in the filesystem
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["output_over_limit"] is True and outcome["nodes"][0]["output_over_limit"]
    assert list(dest.iterdir()) == []
    notes = [line for line in proc.stderr.splitlines() if "[run] output" in line]
    assert notes == ["bake: the job left more than 8 MiB in /out ([run] output): nothing of it "
                     "was kept"], proc.stderr[-2000:]
    assert list((state_dir() / "runs").iterdir()) == []  # unmounted and removed
    assert loop_devices() == before


def test_out_within_its_limit_is_kept_per_node(cluster: dict[str, Any], tmp_path: Path) -> None:
    dest = tmp_path / "out"
    # node-0 writes 3 MiB (kept), node-1 12 MiB (past the limit: nothing of it kept)
    proc, _ = run(cluster, "write", "ok", "3", "ok", "12", spec="out.toml",
                  extra=("--output", str(dest), "--nodes", "2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert (dest / "node-0" / "result.bin").stat().st_size == 3 << 20
    assert list((dest / "node-1").iterdir()) == []
    assert "node-1 left more than 8 MiB in /out ([run] output): nothing of it was kept" \
        in proc.stderr


def test_the_node_network_can_be_a_swarm_overlay(cluster: dict[str, Any]) -> None:
    """The seam for nodes on several machines: the same job on an --internal, attachable
    overlay of a Docker Swarm (a one-node swarm of a second engine: `swarm init` would
    change the engine every other test uses).  The nodes exchange data; the host, on
    every address, does not answer them."""
    from io import BytesIO

    from bake.engine import Engine
    from bake.runner import image_job, run_job
    from tests.machines import docker, loaded_from_host, second_engine

    def links() -> str:
        return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                              check=True).stdout

    # swarm init makes a docker_gwbridge on the host; the test removes only its own.
    assert "docker_gwbridge" not in links(), "this host already has a docker_gwbridge"
    bait = Bait()
    try:
        with second_engine(loaded_from_host(cluster["image"]), label="swarm") as sock:
            bridge = docker("network", "inspect", "bridge", "-f",
                            '{{index .Options "com.docker.network.bridge.name"}}',
                            host=sock).stdout.strip()
            address = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge],
                                     capture_output=True, text=True,
                                     check=True).stdout.split()[3].split("/")[0]
            docker("swarm", "init", "--advertise-addr", address, "--listen-addr",
                   f"{address}:2377", host=sock)
            try:
                engine = Engine.from_env({"DOCKER_HOST": sock})
                targets = {"tcp": [[a, bait.port] for a in host_addresses()],
                           "udp": [[a, bait.port] for a in host_addresses()],
                           "gateway_ports": [bait.port], "dns_servers": host_addresses(),
                           "names": ["bake-canary.example.com"]}
                outcomes = {}
                for what in (("exchange",), ("probe", json.dumps(targets))):
                    plan = image_job(engine, cluster["image"], args=what).with_nodes(2)
                    sink = BytesIO()
                    result = run_job(engine, replace(plan, network="overlay"), stdout=sink,
                                     stderr=sink)
                    text = sink.getvalue().decode()
                    assert result.exit_code == 0, text[-3000:]
                    outcomes[what[0]] = results(text)
                # A swarm removes a network a moment after the API call returns.
                deadline = time.monotonic() + 30
                while left := docker("network", "ls", "-q", "--filter", "label=bake.owner",
                                     host=sock).stdout.split():
                    assert time.monotonic() < deadline, left
                    time.sleep(0.5)
            finally:
                docker("swarm", "leave", "--force", host=sock, check=False)
                docker("network", "rm", "docker_gwbridge", host=sock, check=False)
                if "docker_gwbridge" in links():
                    subprocess.run(["ip", "link", "del", "docker_gwbridge"], check=False)
    finally:
        bait.close()
    exchanged = outcomes["exchange"]
    assert sorted(exchanged) == [0, 1]
    assert exchanged[0]["received"] == {"1": 200000} and exchanged[1]["received"] == {"0": 100000}
    for rank, facts in outcomes["probe"].items():
        reached = {k: v for k, v in facts["found"].items()
                   if not v.startswith("failed") and "127.0.0.11" not in k}
        assert reached == {}, (rank, reached)
    assert bait.arrived == [], bait.arrived


def test_an_output_folder_bake_cannot_make_fails_before_the_job_starts(
        cluster: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    proc, found = run(cluster, "exit", "0", spec="one.toml",
                      extra=("--output", str(tmp_path / "file" / "out")))
    assert proc.returncode == 125 and found == {}
    assert "cannot use" in proc.stderr and "Traceback" not in proc.stderr

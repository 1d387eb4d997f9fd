"""Throughput of bake's egress proxy against a direct download, and 200 tunnels at once.

    python bench/bench_proxy.py [--size-mib 512] [--rounds 3] [--tunnels 200]

Everything stays on loopback: an HTTPS server (self-signed certificate made
with the ``openssl`` CLI) on 127.0.0.2, the proxy on 127.0.0.1.  The server and
the client run as separate processes, so that the proxy's thread competes with
them for CPUs, not for one interpreter's GIL -- the same arrangement a build
has.  tinyproxy, when installed, runs the same download as a reference.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bake.egress.policy import EgressPolicy
from bake.egress.proxy import ProxyLimits, start_proxy

SERVER_HOST = "127.0.0.2"  # not the proxy's own address, which the policy refuses
SERVER_NAME = "bench.test"
TINYPROXY = Path("/usr/bin/tinyproxy")

# An HTTPS server answering "GET /<n>" with n bytes; one thread per connection.
SERVER = r"""
import socket, ssl, sys, threading
cert, key, host = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.create_server((host, 0), backlog=1024)
print(listener.getsockname()[1], flush=True)
chunk = bytes(1 << 20)

def serve(raw):
    try:
        with ctx.wrap_socket(raw, server_side=True) as conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            size = int(head.split(b" ", 2)[1][1:])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % size)
            view = memoryview(chunk)
            while size > 0:
                n = min(size, len(chunk))
                conn.sendall(view[:n])
                size -= n
    except OSError:
        pass

while True:
    raw, _ = listener.accept()
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
"""

# A client: downloads <size> bytes, directly (proxy "-") or through a CONNECT
# proxy to <tunnel_host>, and prints the seconds it took; with <count> > 1, runs
# that many at once and prints how many got every byte.  <kind> "http.client"
# is pip's own HTTP stack (pip -> urllib3 -> http.client); "raw" is a bare
# ssl socket reading into one buffer, the cheapest client Python has, so the
# hardest case for a proxy on a CPU-bound machine.
CLIENT = r"""
import http.client, socket, ssl, sys, threading, time
kind, ca, host, port, proxy, tunnel_host, size, count = sys.argv[1:9]
port, size, count = int(port), int(size), int(count)
ctx = ssl.create_default_context(cafile=ca)

def fetch_http_client():
    if proxy == "-":
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=60)
    else:
        phost, pport = proxy.rsplit(":", 1)
        conn = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=60)
        conn.set_tunnel(tunnel_host, port)
    try:
        conn.request("GET", "/%d" % size)
        response = conn.getresponse()
        buf = bytearray(1 << 20)
        body = 0
        while n := response.readinto(buf):
            body += n
        return body
    finally:
        conn.close()

def fetch_raw():
    if proxy == "-":
        raw = socket.create_connection((host, port), timeout=60)
        name = host
    else:
        phost, pport = proxy.rsplit(":", 1)
        raw = socket.create_connection((phost, int(pport)), timeout=60)
        target = ("%s:%d" % (tunnel_host, port)).encode()
        raw.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = raw.recv(4096)
            if not data:
                raise OSError("proxy closed: %r" % answer)
            answer += data
        if not answer.split(b" ", 2)[1] == b"200":
            raise OSError("proxy said %r" % answer[:60])
        name = tunnel_host
    with ctx.wrap_socket(raw, server_hostname=name) as conn:
        conn.sendall(b"GET /%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, name.encode()))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        got = 0
        while b"\r\n\r\n" not in bytes(buf[:got]):
            got += conn.recv_into(view[got:])
        body = got - (bytes(buf[:got]).find(b"\r\n\r\n") + 4)
        while body < size:
            n = conn.recv_into(view)
            if not n:
                break
            body += n
        return body

fetch = fetch_raw if kind == "raw" else fetch_http_client
if count == 1:
    start, cpu = time.perf_counter(), time.process_time()
    body = fetch()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(elapsed if body == size else -1, cpu)
else:
    ok = []
    barrier = threading.Barrier(count)
    def one():
        try:
            barrier.wait(timeout=30)
            if fetch() == size:
                ok.append(1)
        except Exception as exc:
            sys.stderr.write("tunnel failed: %s\n" % exc)
    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(len(ok), 0)
"""


@dataclasses.dataclass
class Setup:
    tmp: Path
    cert: Path
    server_port: int
    server_pid: int


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


@contextmanager
def https_server() -> Iterator[Setup]:
    with tempfile.TemporaryDirectory(prefix="bake-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "1", "-subj", f"/CN={SERVER_NAME}",
             "-addext", f"subjectAltName=DNS:{SERVER_NAME},IP:{SERVER_HOST}"],
            check=True, capture_output=True,
        )
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(cert), str(key), SERVER_HOST],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            yield Setup(tmp, cert, port, server.pid)
        finally:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()


@contextmanager
def openssl_server(setup: Setup, size: int) -> Iterator[Setup]:
    """``openssl s_server -WWW`` serving one sparse file: a C server, one connection at a time."""
    www = setup.tmp / "www"
    www.mkdir(exist_ok=True)
    with (www / str(size)).open("wb") as f:
        f.truncate(size)  # sparse: reading it costs page-cache lookups, not disk
    port = free_port(SERVER_HOST)
    server = subprocess.Popen(
        ["openssl", "s_server", "-quiet", "-WWW", "-http_server_binmode",
         "-accept", f"{SERVER_HOST}:{port}", "-cert", str(setup.cert),
         "-key", str(setup.tmp / "key.pem")],
        cwd=www, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(SERVER_HOST, port)
        yield dataclasses.replace(setup, server_port=port, server_pid=server.pid)
    finally:
        server.kill()
        server.wait()


@dataclasses.dataclass
class Run:
    seconds: float  # the client's own timing of the download
    client_cpu: float
    server_cpu: float
    proxy_cpu: float | None


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc), 0.0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_client(setup: Setup, kind: str, proxy: str, tunnel_host: str, size: int,
               count: int = 1, proxy_cpu: Callable[[], float] | None = None) -> Run:
    before = (process_cpu(setup.server_pid), proxy_cpu() if proxy_cpu else 0.0)
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, kind, str(setup.cert), SERVER_HOST,
         str(setup.server_port), proxy, tunnel_host, str(size), str(count)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    seconds, client_cpu = out.stdout.split()
    return Run(
        seconds=float(seconds),
        client_cpu=float(client_cpu),  # measured by the client around the download only
        server_cpu=process_cpu(setup.server_pid) - before[0],
        proxy_cpu=proxy_cpu() - before[1] if proxy_cpu else None,
    )


@contextmanager
def tinyproxy(setup: Setup) -> Iterator[tuple[str, int]]:
    port = free_port("127.0.0.1")
    conf = setup.tmp / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 512\nAllow 127.0.0.1\n"
        f"ConnectPort {setup.server_port}\nLogLevel Critical\n"
        f"LogFile \"{setup.tmp / 'tinyproxy.log'}\"\n"
    )
    proc = subprocess.Popen([str(TINYPROXY), "-d", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening("127.0.0.1", port)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait()


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6 if seconds > 0 else 0.0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def compare(setup: Setup, kind: str, size: int, rounds: int, bake_addr: str,
            tiny: tuple[str, int] | None) -> dict[str, list[Run]]:
    """Interleaved rounds of direct / bake / tinyproxy, so drifting load hits each alike."""
    runs: dict[str, list[Run]] = {"direct": [], "bake": []}
    if tiny:
        runs["tinyproxy"] = []
    for _ in range(rounds):
        runs["direct"].append(run_client(setup, kind, "-", "-", size))
        # The proxy is a thread of this process, whose main thread only waits.
        runs["bake"].append(run_client(setup, kind, bake_addr, SERVER_NAME, size,
                                       proxy_cpu=own_cpu))
        if tiny:
            # tinyproxy resolves names itself, so it gets the address.
            runs["tinyproxy"].append(run_client(setup, kind, tiny[0], SERVER_HOST, size,
                                                proxy_cpu=lambda: process_cpu(tiny[1])))
    return runs


def report(kind: str, size: int, runs: dict[str, list[Run]]) -> dict[str, float]:
    if any(r.seconds < 0 for rs in runs.values() for r in rs):
        raise SystemExit("a download came back short")
    gib = size / 2**30
    best = {name: mb_per_s(size, min(r.seconds for r in rs)) for name, rs in runs.items()}
    print(f"client {kind}: {size // 2**20} MiB over TLS, best of {len(runs['direct'])} "
          "interleaved rounds; CPU seconds per GiB (median)")
    print(f"{'':>10} {'MB/s':>8} {'ratio':>6} {'client':>7} {'server':>7} {'proxy':>7}")
    for name, rs in runs.items():
        proxy_cpu = [r.proxy_cpu for r in rs if r.proxy_cpu is not None]
        proxy_col = f"{median(proxy_cpu) / gib:7.2f}" if proxy_cpu else f"{'-':>7}"
        print(f"{name:>10} {best[name]:8.0f} {best[name] / best['direct']:6.2f} "
              f"{median([r.client_cpu for r in rs]) / gib:7.2f} "
              f"{median([r.server_cpu for r in rs]) / gib:7.2f} {proxy_col}")
    return {name: rate / best["direct"] for name, rate in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5, help="best of this many per path")
    parser.add_argument("--client", choices=["http.client", "raw", "both"], default="both")
    parser.add_argument("--server", choices=["python", "openssl", "both"], default="both")
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--tunnel-kib", type=int, default=256, help="bytes per concurrent tunnel")
    args = parser.parse_args()
    size = args.size_mib * 2**20
    kinds = ["http.client", "raw"] if args.client == "both" else [args.client]
    servers = ["python", "openssl"] if args.server == "both" else [args.server]

    async def resolve(host: str, port: int) -> list[str]:
        return [SERVER_HOST]  # bench.test is ours; no DNS

    ratios: dict[str, dict[str, float]] = {}
    with https_server() as python_setup:
        for server in servers:
            with contextlib.ExitStack() as stack:
                setup = (python_setup if server == "python"
                         else stack.enter_context(openssl_server(python_setup, size)))
                policy = dataclasses.replace(
                    EgressPolicy.from_settings([SERVER_NAME], [], [f"{SERVER_HOST}/32"]),
                    connect_ports=frozenset({setup.server_port}),
                )
                proxy = stack.enter_context(start_proxy(policy, host="127.0.0.1", resolver=resolve))
                tiny = stack.enter_context(_maybe_tinyproxy(setup))
                bake_addr = f"{proxy.host}:{proxy.port}"
                for kind in kinds:
                    print(f"server {server}, ", end="")
                    runs = compare(setup, kind, size, args.rounds, bake_addr, tiny)
                    ratios[f"{server}/{kind}"] = report(kind, size, runs)
                    print()

        # Many tunnels at once: the threaded Python server takes them all together.
        policy = dataclasses.replace(
            EgressPolicy.from_settings([SERVER_NAME], [], [f"{SERVER_HOST}/32"]),
            connect_ports=frozenset({python_setup.server_port}),
        )
        limits = ProxyLimits(max_tunnels=max(256, args.tunnels))
        with start_proxy(policy, host="127.0.0.1", limits=limits, resolver=resolve) as proxy:
            start = time.perf_counter()
            ok = int(run_client(python_setup, "raw", f"{proxy.host}:{proxy.port}", SERVER_NAME,
                                args.tunnel_kib * 1024, args.tunnels).seconds)
            print(f"concurrent tunnels through bake: {ok}/{args.tunnels} succeeded "
                  f"({args.tunnel_kib} KiB each, {time.perf_counter() - start:.1f} s); "
                  f"{proxy.stats().one_line()}")
    parts = []
    for name, r in ratios.items():
        tiny_part = f" (tinyproxy {r['tinyproxy']:.2f})" if "tinyproxy" in r else ""
        parts.append(f"{name} {r['bake']:.2f}{tiny_part}")
    print(f"summary: bake/direct throughput {', '.join(parts)}; goal >= 0.80; "
          f"{ok}/{args.tunnels} concurrent tunnels ok")
    return 0 if ok == args.tunnels else 1


@contextmanager
def _maybe_tinyproxy(setup: Setup) -> Iterator[tuple[str, int] | None]:
    if TINYPROXY.exists() and os.access(TINYPROXY, os.X_OK):
        with tinyproxy(setup) as found:
            yield found
    else:
        yield None


if __name__ == "__main__":
    sys.exit(main())

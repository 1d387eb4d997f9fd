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
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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

# A client: downloads <size> bytes, directly or through a CONNECT proxy, and
# prints the seconds it took; with <count> > 1, runs that many at once (each
# <size> bytes) and prints how many got every byte.
CLIENT = r"""
import socket, ssl, sys, threading, time
ca, name, host, port, proxy, target, size, count = sys.argv[1:9]
port, size, count = int(port), int(size), int(count)
ctx = ssl.create_default_context(cafile=ca)

def fetch():
    if proxy == "-":
        raw = socket.create_connection((host, port), timeout=60)
    else:
        phost, pport = proxy.rsplit(":", 1)
        raw = socket.create_connection((phost, int(pport)), timeout=60)
        raw.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = raw.recv(4096)
            if not data:
                raise OSError("proxy closed: %r" % answer)
            answer += data
        if not answer.startswith(b"HTTP/1.1 200") and not answer.startswith(b"HTTP/1.0 200"):
            raise OSError("proxy said %r" % answer[:60])
    with ctx.wrap_socket(raw, server_hostname=name) as conn:
        conn.sendall(b"GET /%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, name.encode()))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        got = conn.recv_into(view)
        head_end = bytes(buf[:got]).find(b"\r\n\r\n") + 4
        body = got - head_end
        while body < size:
            n = conn.recv_into(view)
            if not n:
                break
            body += n
        return body

if count == 1:
    start = time.perf_counter()
    body = fetch()
    elapsed = time.perf_counter() - start
    print(elapsed if body == size else -1)
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
    print(len(ok))
"""


@dataclasses.dataclass
class Setup:
    tmp: Path
    cert: Path
    server_port: int


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
            yield Setup(tmp, cert, port)
        finally:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()


def run_client(setup: Setup, proxy: str, target: str, size: int, count: int = 1) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(setup.cert), SERVER_NAME, SERVER_HOST,
         str(setup.server_port), proxy, target, str(size), str(count)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return float(out.stdout.strip())


@contextmanager
def tinyproxy(setup: Setup) -> Iterator[str]:
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
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6 if seconds > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many per path")
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--tunnel-kib", type=int, default=256, help="bytes per concurrent tunnel")
    args = parser.parse_args()
    size = args.size_mib * 2**20

    async def resolve(host: str, port: int) -> list[str]:
        return [SERVER_HOST]  # bench.test is ours; no DNS

    with https_server() as setup:
        policy = dataclasses.replace(
            EgressPolicy.from_settings([SERVER_NAME], [], [f"{SERVER_HOST}/32"]),
            connect_ports=frozenset({setup.server_port}),
        )
        target = f"{SERVER_NAME}:{setup.server_port}"
        limits = ProxyLimits(max_tunnels=max(256, args.tunnels))
        paths: dict[str, list[float]] = {"direct": [], "bake": [], "tinyproxy": []}
        with start_proxy(policy, host="127.0.0.1", limits=limits, resolver=resolve) as proxy, \
                _maybe_tinyproxy(setup) as tiny:
            bake_addr = f"{proxy.host}:{proxy.port}"
            tiny_target = f"{SERVER_HOST}:{setup.server_port}"
            for _ in range(args.rounds):
                # Interleaved, so that drifting machine load hits every path alike.
                paths["direct"].append(run_client(setup, "-", "-", size))
                paths["bake"].append(run_client(setup, bake_addr, target, size))
                if tiny:
                    paths["tinyproxy"].append(run_client(setup, tiny, tiny_target, size))
            if any(t < 0 for ts in paths.values() for t in ts):
                print("a download came back short", file=sys.stderr)
                return 1
            best = {k: mb_per_s(size, min(v)) for k, v in paths.items() if v}
            for name, rate in best.items():
                print(f"{name:>9}: {rate:8.1f} MB/s  (best of {args.rounds}, {args.size_mib} MiB)")
            ratio = best["bake"] / best["direct"]
            print(f"bake/direct ratio: {ratio:.2f} (goal >= 0.80)")
            tiny_ratio = best["tinyproxy"] / best["direct"] if "tinyproxy" in best else None
            if tiny_ratio is not None:
                print(f"tinyproxy/direct ratio: {tiny_ratio:.2f}")

            start = time.perf_counter()
            ok = int(run_client(setup, bake_addr, target, args.tunnel_kib * 1024, args.tunnels))
            print(f"concurrent tunnels: {ok}/{args.tunnels} succeeded "
                  f"in {time.perf_counter() - start:.1f} s")
            stats = proxy.stats()
        tiny_part = f", tinyproxy {tiny_ratio:.2f}" if tiny_ratio is not None else ""
        print(f"summary: bake {best['bake']:.0f} MB/s vs direct {best['direct']:.0f} MB/s "
              f"= {ratio:.2f}{tiny_part}; {ok}/{args.tunnels} concurrent tunnels ok; "
              f"{stats.one_line()}")
        return 0 if ratio >= 0.8 and ok == args.tunnels else 1


@contextmanager
def _maybe_tinyproxy(setup: Setup) -> Iterator[str | None]:
    if TINYPROXY.exists() and os.access(TINYPROXY, os.X_OK) and shutil.which("openssl"):
        with tinyproxy(setup) as addr:
            yield addr
    else:
        yield None


if __name__ == "__main__":
    sys.exit(main())

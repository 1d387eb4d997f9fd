"""Issue 13 item 1.1 for real: a resolver with a search domain, in a namespace of our own.

``unshare --net --mount`` gives a network namespace with only loopback and a
private mount of ``/etc/resolv.conf`` naming a DNS server on 127.0.0.1 and
``search bake-search.test``.  That server knows nothing under the allowed
``*.allowed.test`` and answers every ``*.bake-search.test`` name with 127.0.0.2,
where a trap listens.  The proxy runs there with the system resolver: a CONNECT
to a nonexistent ``nothing.allowed.test`` must fail to resolve, not reach the
trap as ``nothing.allowed.test.bake-search.test``.  Nothing leaves the namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import dataclasses, json, socket, struct, sys, threading
from bake.egress.policy import EgressPolicy
from bake.egress.proxy import start_proxy

queries = []

def dns_server(sock):
    while True:
        data, peer = sock.recvfrom(512)
        ident, flags, qd = struct.unpack("!HHH", data[:6])
        at, labels = 12, []
        while data[at]:
            labels.append(data[at + 1:at + 1 + data[at]].decode())
            at += 1 + data[at]
        qtype = struct.unpack("!H", data[at + 1:at + 3])[0]
        question = data[12:at + 5]
        name = ".".join(labels).lower()
        queries.append((name, qtype))
        if name.endswith(".bake-search.test") and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.2")
            head = struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0)
        elif name.endswith(".bake-search.test"):
            answer, head = b"", struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0)
        else:  # NXDOMAIN
            answer, head = b"", struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0)
        sock.sendto(head + question + answer, peer)

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
threading.Thread(target=dns_server, args=(udp,), daemon=True).start()
trap = socket.create_server(("127.0.0.2", 8443))

# What the resolver does with a relative name here: the search domain applies.
try:
    relative = sorted({i[4][0] for i in socket.getaddrinfo("nothing.allowed.test", 443)})
except OSError as exc:
    relative = "failed: %s" % exc

policy = EgressPolicy.from_settings(["*.allowed.test"], [], ["127.0.0.2/32"])
policy = dataclasses.replace(policy, connect_ports=frozenset({443, 8443}))
queries.clear()
with start_proxy(policy, host="127.0.0.1") as proxy:
    s = socket.create_connection((proxy.host, proxy.port), timeout=10)
    s.sendall(b"CONNECT nothing.allowed.test:8443 HTTP/1.1\r\n\r\n")
    answer = s.recv(200).decode("latin-1").split("\r\n")[0]
    s.close()
trap.settimeout(0.2)
try:
    trap.accept()
    trapped = True
except OSError:
    trapped = False
print(json.dumps({"relative": relative, "proxy": answer, "trapped": trapped,
                  "queries": sorted({q for q, _ in queries})}))
'''


def test_search_domains_never_turn_an_allowed_suffix_into_another_name(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("needs unshare and ip (util-linux, iproute2) and root")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nsearch bake-search.test\n"
                      "options timeout:1 attempts:1\n")
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-c",
         f"ip link set lo up && ip addr add 127.0.0.2/8 dev lo 2>/dev/null; "
         f"mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=120, cwd=repo, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The resolver here does apply the search domain to a relative name...
    assert result["relative"] == ["127.0.0.2"], result
    # ...and the proxy, asking for the absolute name, never does.
    assert result["proxy"].startswith("HTTP/1.1 502"), result
    assert result["trapped"] is False
    assert result["queries"] == ["nothing.allowed.test"], result

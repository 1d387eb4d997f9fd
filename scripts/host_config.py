"""Print the seller config this host needs (used by scripts/bootstrap).

Two facts of a host's network matter to bake's egress proxy: whether the
allowlisted names resolve to non-public addresses (a gateway in a private or
documentation range: those must be named in ``egress.allow_cidrs``), and whether
TLS is intercepted by a CA found only in the host's bundle (``build.ca_bundle``,
mounted into setup steps, never baked).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from bake.settings import DEFAULT_ALLOW

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def main() -> None:
    cidrs: set[str] = set()
    for name in DEFAULT_ALLOW:
        if name.startswith("*"):
            continue
        try:
            infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                cidrs.add(f"{address}/{address.max_prefixlen}")
    print("# Made by scripts/bootstrap for this host.")
    print("[egress]")
    print("allow_cidrs = [" + ", ".join(f'"{c}"' for c in sorted(cidrs)) + "]")
    print("[build]")
    if HOST_BUNDLE.is_file():
        print(f'ca_bundle = "{HOST_BUNDLE}"')


if __name__ == "__main__":
    main()

"""Print the seller config this host needs (used by scripts/bootstrap).

Two facts of a host's network matter to bake's egress proxy: whether the
allowlisted names resolve to addresses the proxy refuses (a gateway in a private
or documentation range: those must be named in ``egress.allow_cidrs``), and
whether TLS is intercepted by a CA found only in the host's bundle
(``build.ca_bundle``, mounted into setup steps, never baked).
"""

from __future__ import annotations

from pathlib import Path

from bake.doctor import refused_addresses
from bake.settings import Settings

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def main() -> None:
    refused = refused_addresses(Settings())
    cidrs = sorted({f"{a}/{32 if '.' in a else 128}" for found in refused.values() for a in found})
    print("# Made by scripts/bootstrap for this host.")
    print("[egress]")
    print("allow_cidrs = [" + ", ".join(f'"{c}"' for c in cidrs) + "]")
    print("[build]")
    if HOST_BUNDLE.is_file():
        print(f'ca_bundle = "{HOST_BUNDLE}"')


if __name__ == "__main__":
    main()

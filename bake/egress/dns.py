"""How the egress proxy turns an allowed name into addresses: exactly that name, nothing else.

``getaddrinfo("x.example.net")`` lets the resolver try ``x.example.net.<search
domain>`` when the name itself does not exist, a name the allowlist never
named.  So the name is looked up *absolute*, with a trailing dot, for which no
search domain applies.  glibc's hosts-file backend does not match a name with a
trailing dot (``getent hosts localhost.`` finds nothing on Debian 12), so the
hosts file is read here first, by exact name, as ``hosts: files dns`` would;
search domains never apply to it either.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

__all__ = ["HOSTS_FILE", "hosts_file_addresses", "resolve_absolute"]

HOSTS_FILE = Path("/etc/hosts")


def hosts_file_addresses(name: str, path: Path = HOSTS_FILE) -> list[str]:
    """The addresses ``path`` lists for exactly ``name`` (any case), in file order."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    wanted = name.removesuffix(".").lower()
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or wanted not in (f.lower() for f in fields[1:]):
            continue
        try:
            address = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return found


def resolve_absolute(name: str, port: int) -> list[str]:
    """``name``'s addresses: from the hosts file, else from DNS as an absolute name.

    Blocking (getaddrinfo); raises :class:`OSError` when the name does not resolve.
    """
    listed = hosts_file_addresses(name, HOSTS_FILE)
    if listed:
        return listed
    infos = socket.getaddrinfo(name.removesuffix(".") + ".", port, 0, socket.SOCK_STREAM)
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
    return addresses

"""Who setup steps may reach: the allowlist and the address rules, as pure functions.

The proxy asks three questions, in this order, and never does I/O to answer them:

1. :meth:`EgressPolicy.check_connect` / :meth:`EgressPolicy.check_http` -- is the
   *name* in the request target allowed?  Decided before any DNS lookup, so a
   denied name is never resolved (a lookup alone can leak data to its owner).
2. The proxy resolves the name (an injectable :data:`Resolver`).
3. :meth:`EgressPolicy.check_address` -- is each resolved *address* one we may
   dial?  Non-public addresses are refused unless the seller listed them in
   ``egress.allow_cidrs``; that stops an allowed name that resolves (or is
   rebound) to loopback, the cloud metadata service or the build host itself.

Host names are compared in one canonical form: lower case, one trailing dot
stripped, IDNA 2008 ASCII as UTS 46 maps it (the ``idna`` package: what pip,
requests and browsers send; the standard library's codec is IDNA 2003, which
turns ``faß.de`` into ``fass.de``, another domain), every label checked
against the letters-digits-hyphen rule.  A name with a character that UTS 46
would silently drop (soft hyphen, zero-width space, joiners, variation
selectors) is refused, and so is one whose encoding does not round-trip.
The proxy resolves the *absolute* name (a trailing dot), so a resolver's search
domains can never turn an allowed ``*.suffix`` into a name nobody allowed.

Anything that a resolver or a browser would read as
a number (``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``, ``[::1]``) is an
IP literal and is refused: the allowlist is about names.  Only an explicit
``egress.allow_http`` origin may name an address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from bake.errors import ConfigError

__all__ = [
    "CONNECT_PORT",
    "Decision",
    "EgressPolicy",
    "HttpTarget",
    "Resolver",
    "normalize_host",
    "parse_http_target",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``await resolver(host, port)`` -> the addresses ``host`` resolves to, in the
#: order to try them.  The proxy's default uses ``loop.getaddrinfo``; tests pass
#: a stub that records its calls.
Resolver = Callable[[str, int], Awaitable[list[str]]]

#: The only port CONNECT may reach: package indexes and the Hub speak HTTPS.
CONNECT_PORT = 443


@dataclass(frozen=True)
class Decision:
    """The answer to one question; ``reason`` is a short word for the egress log."""

    allowed: bool
    reason: str
    host: str = ""
    port: int = 0
    address: str = ""
    #: Which rule decided an address check ("loopback", "own-address",
    #: "nat64-embedded-private", ...); empty for name checks.
    detail: str = ""


@dataclass(frozen=True)
class HttpTarget:
    """An absolute-form plain-HTTP request target, split strictly."""

    host: str  # canonical: a normalised name, a dotted quad, or a compressed IPv6
    port: int
    path: str  # origin-form: starts with "/"
    is_address: bool  # host is an IP literal


class _HostError(ValueError):
    """A host that is not an acceptable name; ``reason`` is the Decision reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# RFC 1123 label: letters, digits, hyphen; not starting or ending with a hyphen.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# WHATWG URL "ends in a number": a last label that parses as an IPv4 number
# (decimal, octal with a leading 0, hex with 0x) makes the whole host an IPv4
# address to browsers and to inet_aton, so "127.1" and "0x7f.1" are addresses.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
# Authority of a CONNECT target or an absolute URL: a bracketed IPv6 literal or
# a run of name characters, then a port of ASCII digits only.  The explicit
# classes (with re.ASCII) keep out what int() would accept: "+443", "4_43", "٤٤٣".
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?", re.ASCII)
_PORT = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)
_DOTTED_QUAD = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}", re.ASCII)
# Visible ASCII: what may appear in a request target (RFC 9112 forbids the rest).
_VISIBLE = re.compile(r"[\x21-\x7e]*", re.ASCII)


def normalize_host(raw: str) -> str:
    """Return ``raw`` as a canonical ASCII host name, or raise :class:`ValueError`.

    Lower case, one trailing dot stripped, IDNA 2008 / UTS 46 encoded, every
    label valid.  IP literals and numeric hosts raise too, with
    ``reason == "ip-literal"``.
    """
    name = raw.removesuffix(".")
    if not name:
        raise _HostError("bad-host", "empty host name")
    if name.startswith("[") or ":" in name:
        raise _HostError("ip-literal", f"{raw!r} is an IP address, not a host name")
    if name.isascii() and "xn--" not in name.lower():
        ascii_name = name.lower()  # the common case: no IDNA at all (and no idna import)
    else:
        ascii_name = _idna_encode(raw, name)
    labels = ascii_name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise _HostError("ip-literal", f"{raw!r} is a numeric address, not a host name")
    if len(ascii_name) > 253:
        raise _HostError("bad-host", f"{raw!r} is longer than 253 characters")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise _HostError("bad-host", f"{raw!r} has an invalid label {label!r}")
    return ascii_name


# Invisible joiners: valid IDNA 2008 in a few scripts' contexts, but an allowlist
# entry or a request host has no business holding a character nobody can see.
_JOINERS = frozenset("\u200c\u200d")


def _idna_encode(raw: str, name: str) -> str:
    """IDNA 2008 with UTS 46 mapping (non-transitional: ``faß.de`` is ``xn--fa-hia.de``).

    Refuses characters UTS 46 maps to nothing and invisible joiners, and any name
    whose encoding does not round-trip: each label as written (after mapping)
    must be what decoding its ASCII form gives back, so that two spellings
    never name one host.
    """
    # Only here: a name with non-ASCII or "xn--" labels; every lookup loads this module.
    import idna  # noqa: PLC0415

    for char in name:
        if char in _JOINERS or (not char.isascii() and _uts46_drops(char)):
            raise _HostError("bad-host", f"{raw!r} has an invisible character U+{ord(char):04X}; "
                             "write the name without it")
    try:
        mapped = idna.uts46_remap(name, std3_rules=True, transitional=False)
        ascii_name = idna.encode(mapped, uts46=False).decode("ascii")
        back = idna.decode(ascii_name)
        again = idna.encode(back, uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise _HostError("bad-host", f"{raw!r} is not a valid IDNA 2008 host name ({exc})") from exc
    parts = mapped.split("."), ascii_name.split("."), back.split(".")
    if again != ascii_name or len({len(p) for p in parts}) != 1:
        raise _HostError("bad-host", f"{raw!r} does not round-trip through IDNA 2008 "
                         f"({mapped!r} -> {ascii_name!r} -> {back!r} -> {again!r})")
    for written, a_label, u_label in zip(*parts, strict=True):
        if written != (a_label if written.isascii() else u_label):
            raise _HostError("bad-host", f"{raw!r} does not round-trip through IDNA 2008 "
                             f"({written!r} -> {a_label!r} -> {u_label!r})")
    return ascii_name


def _uts46_drops(char: str) -> bool:
    """Whether UTS 46 maps ``char`` to nothing (it would vanish from the name)."""
    import idna  # noqa: PLC0415 - as above

    try:
        return idna.uts46_remap(char, std3_rules=False, transitional=False) == ""
    except (idna.IDNAError, ValueError, UnicodeError):
        return False  # disallowed outright: encoding refuses it with its own message


def parse_http_target(url: str) -> HttpTarget:
    """Split an absolute ``http://host[:port][/path]`` target; raise ``ValueError`` if odd.

    Strict on purpose: no userinfo, no fragment, no empty port, only visible
    ASCII.  ``urllib.parse`` is lenient in ways that let two parsers disagree.
    """
    if not url.isascii() or not _VISIBLE.fullmatch(url):
        raise _HostError("bad-url", "the request target has characters outside visible ASCII")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "http":
        raise _HostError("bad-url", f"{url!r} is not an absolute http:// URL")
    cut = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if at != -1:
            cut = min(cut, at)
    authority, path = rest[:cut], rest[cut:]
    if "#" in path:
        raise _HostError("bad-url", "a request target has no fragment")
    if path.startswith("?"):
        path = "/" + path
    path = path or "/"
    if "@" in authority:
        raise _HostError("bad-authority", "userinfo in the request target is refused")
    match = _HOST_PORT.fullmatch(authority)
    if match is None:
        raise _HostError("bad-authority", f"{authority!r} is not host[:port]")
    host_text, port_text = match.group(1), match.group(2)
    if port_text is None:
        if authority.endswith(":"):
            raise _HostError("bad-authority", "empty port")
        port = 80
    elif _PORT.fullmatch(port_text) and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise _HostError("bad-port", f"{port_text!r} is not a port")
    if host_text.startswith("["):
        try:
            v6 = ipaddress.IPv6Address(host_text[1:-1])
        except ValueError as exc:
            raise _HostError("bad-host", f"{host_text!r} is not an IPv6 address") from exc
        return HttpTarget(v6.compressed, port, path, is_address=True)
    if _DOTTED_QUAD.fullmatch(host_text):
        try:
            v4 = ipaddress.IPv4Address(host_text)
        except ValueError as exc:
            raise _HostError("bad-host", f"{host_text!r} is not an IPv4 address") from exc
        return HttpTarget(str(v4), port, path, is_address=True)
    # Every other numeric spelling (127.1, 0x7f.1, 2130706433) raises "ip-literal".
    return HttpTarget(normalize_host(host_text), port, path, is_address=False)


def _net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


# Addresses nobody may dial, whatever allow_cidrs says: they are not a single
# remote host ("0.0.0.0" even reaches the local host on Linux), or they are IPv6
# spellings of IPv4 addresses that would bypass the IPv4 rules.
_ALWAYS_DENIED: tuple[tuple[IPNetwork, str], ...] = (
    (_net("0.0.0.0/8"), "unspecified"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("255.255.255.255/32"), "broadcast"),
    (_net("::/128"), "unspecified"),
    (_net("ff00::/8"), "multicast"),
    (_net("::ffff:0:0/96"), "ipv4-mapped"),
)
# Deprecated IPv4-compatible addresses (::a.b.c.d), except :: and ::1 themselves.
_V4_COMPATIBLE = _net("::/96")


def _always_denied(addr: IPAddress) -> str | None:
    if addr.version == 6 and addr in _V4_COMPATIBLE and int(addr) > 1:
        return "ipv4-compatible"
    return _lookup(addr, _ALWAYS_DENIED)

# Non-public IPv4 ranges (IANA special-purpose registry).  Explicit rather than
# ipaddress.is_global, whose answers changed between Python releases and which
# does not look inside NAT64/6to4/Teredo addresses.
_V4_NON_PUBLIC: tuple[tuple[IPNetwork, str], ...] = (
    (_net("10.0.0.0/8"), "private"),
    (_net("100.64.0.0/10"), "cgnat"),
    (_net("127.0.0.0/8"), "loopback"),
    (_net("169.254.0.0/16"), "link-local"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.0.0.0/24"), "reserved"),  # IETF protocol assignments
    (_net("192.0.2.0/24"), "documentation"),
    (_net("192.88.99.0/24"), "reserved"),  # deprecated 6to4 relay anycast
    (_net("192.168.0.0/16"), "private"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("198.51.100.0/24"), "documentation"),
    (_net("203.0.113.0/24"), "documentation"),
    (_net("240.0.0.0/4"), "reserved"),
)

# IPv6 prefixes that carry an IPv4 destination: judged by the embedded address,
# by every IPv4 rule (bake's own addresses, the always-denied and non-public
# ranges, allow_cidrs' IPv4 entries), and never let through by an IPv6
# allow_cidrs entry that happens to cover the prefix.
_NAT64 = _net("64:ff9b::/96")
_SIX_TO_FOUR = _net("2002::/16")
_TEREDO = _net("2001::/32")
_V4_MAPPED = _net("::ffff:0:0/96")
#: allow_cidrs entries inside these are refused: their addresses are IPv4 ones.
_EMBEDDING_PREFIXES: tuple[tuple[IPNetwork, str], ...] = (
    (_NAT64, "NAT64 (64:ff9b::/96)"),
    (_SIX_TO_FOUR, "6to4 (2002::/16)"),
    (_TEREDO, "Teredo (2001::/32)"),
    (_V4_MAPPED, "IPv4-mapped (::ffff:0:0/96)"),
)

_V6_NON_PUBLIC: tuple[tuple[IPNetwork, str], ...] = (
    (_net("::1/128"), "loopback"),
    (_net("64:ff9b:1::/48"), "nat64-local"),  # RFC 8215 local-use translation
    (_net("100::/64"), "discard"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("3fff::/20"), "documentation"),  # RFC 9637
    (_net("2001:2::/48"), "benchmarking"),
    (_net("2001::/23"), "reserved"),  # IETF protocol assignments (after Teredo)
    (_net("fc00::/7"), "unique-local"),
    (_net("fe80::/10"), "link-local"),
    (_net("fec0::/10"), "site-local"),
)
# Only 2000::/3 is allocated as global unicast; everything else is reserved.
_V6_GLOBAL_UNICAST = _net("2000::/3")


def _lookup(addr: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    for network, category in table:
        if addr.version == network.version and addr in network:
            return category
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """The seller's egress settings, validated and in canonical form.

    Build one with :meth:`from_settings`; the fields are the parsed values.
    """

    allow_names: frozenset[str] = frozenset()
    #: Suffixes of ``*.suffix`` entries, stored with their leading dot so that a
    #: plain ``endswith`` respects label boundaries.
    allow_suffixes: tuple[str, ...] = ()
    http_origins: frozenset[tuple[str, int]] = frozenset()
    #: ``allow_http`` origins written as an address: (address, port) pairs.
    http_origin_addresses: frozenset[tuple[IPAddress, int]] = frozenset()
    allow_cidrs: tuple[IPNetwork, ...] = ()
    own_addresses: frozenset[IPAddress] = frozenset()
    #: Ports CONNECT may reach.  Always {443} from settings; tests and benchmarks
    #: replace it to reach an unprivileged loopback server.
    connect_ports: frozenset[int] = frozenset({CONNECT_PORT})

    @classmethod
    def from_settings(
        cls,
        allow: Sequence[str],
        allow_http: Sequence[str],
        allow_cidrs: Sequence[str],
        own_addresses: Iterable[str] = (),
    ) -> EgressPolicy:
        """Validate the ``[egress]`` settings; raise :class:`ConfigError` naming a bad entry."""
        names: set[str] = set()
        suffixes: set[str] = set()
        for entry in _entries(allow, "egress.allow"):
            wildcard = entry.startswith("*.")
            if "*" in entry[2 if wildcard else 0 :]:
                raise ConfigError(
                    f"{entry!r}: a wildcard may only be a leading '*.'",
                    field="egress.allow",
                    hint='write "*.hf.co" to allow every name under hf.co',
                )
            try:
                name = normalize_host(entry[2:] if wildcard else entry)
            except _HostError as exc:
                hint = (
                    'name plain-HTTP origins in egress.allow_http, e.g. "http://10.0.0.5:3141"'
                    if exc.reason == "ip-literal"
                    else 'use a host name ("pypi.org") or "*.suffix" ("*.hf.co")'
                )
                raise ConfigError(str(exc), field="egress.allow", hint=hint) from None
            if wildcard:
                if "." not in name:
                    raise ConfigError(
                        f"{entry!r} would allow a whole top-level domain",
                        field="egress.allow",
                        hint="name a registered domain, e.g. \"*.hf.co\"",
                    )
                suffixes.add("." + name)
            else:
                names.add(name)

        origins: set[tuple[str, int]] = set()
        origin_addresses: set[tuple[IPAddress, int]] = set()
        for entry in _entries(allow_http, "egress.allow_http"):
            try:
                target = parse_http_target(entry)
            except _HostError as exc:
                raise ConfigError(
                    f"{entry!r}: {exc}",
                    field="egress.allow_http",
                    hint='write an origin such as "http://10.0.0.5:3141"',
                ) from None
            if target.path != "/":
                raise ConfigError(
                    f"{entry!r} has a path; an origin is scheme, host and port only",
                    field="egress.allow_http",
                    hint='write "http://10.0.0.5:3141", without a path',
                )
            if target.is_address:
                address = ipaddress.ip_address(target.host)
                if (category := _always_denied(address)) is not None:
                    raise ConfigError(
                        f"{entry!r} names a {category} address, which cannot be an origin",
                        field="egress.allow_http",
                    )
                origin_addresses.add((address, target.port))
            origins.add((target.host, target.port))

        networks: list[IPNetwork] = []
        for entry in _entries(allow_cidrs, "egress.allow_cidrs"):
            try:
                network = ipaddress.ip_network(entry, strict=True)
            except ValueError as exc:
                raise ConfigError(
                    f"{entry!r} is not a network ({exc})",
                    field="egress.allow_cidrs",
                    hint='write a network with its host bits zero, e.g. "203.0.113.0/24"',
                ) from None
            if network.prefixlen == 0:
                raise ConfigError(
                    f"{entry!r} covers every address and would switch the address check off",
                    field="egress.allow_cidrs",
                    hint="list only the ranges your allowed hosts resolve to",
                )
            for prefix, kind in _EMBEDDING_PREFIXES:
                if (isinstance(network, ipaddress.IPv6Network)
                        and isinstance(prefix, ipaddress.IPv6Network)
                        and network.subnet_of(prefix)):
                    raise ConfigError(
                        f"{entry!r} lies in the {kind} range, whose addresses carry an IPv4 "
                        "address and are judged by it",
                        field="egress.allow_cidrs",
                        hint="list the IPv4 range your hosts really are in instead",
                    )
            networks.append(network)

        return cls(
            allow_names=frozenset(names),
            allow_suffixes=tuple(sorted(suffixes)),
            http_origins=frozenset(origins),
            http_origin_addresses=frozenset(origin_addresses),
            allow_cidrs=tuple(networks),
            own_addresses=_own(own_addresses),
        )

    @property
    def no_network(self) -> bool:
        """True when nothing is allowed: setup then runs with no network at all."""
        return not self.allow_names and not self.allow_suffixes and not self.http_origins

    def with_own_addresses(self, addresses: Iterable[str]) -> EgressPolicy:
        """This policy, also refusing ``addresses`` (where the proxy listens)."""
        return dataclasses.replace(self, own_addresses=self.own_addresses | _own(addresses))

    def allows_name(self, host: str) -> bool:
        """Whether the canonical name ``host`` is on the CONNECT allowlist."""
        return host in self.allow_names or host.endswith(self.allow_suffixes)

    def allows_lookup(self, host: str, port: int, *, http: bool) -> bool:
        """Whether the proxy may resolve ``host``: what it looks up is what was allowed."""
        if http:
            return (host, port) in self.http_origins
        return self.allows_name(host) and port in self.connect_ports

    def check_connect(self, authority: str) -> Decision:
        """Judge the ``host:port`` of a CONNECT request line, before any DNS."""
        if not authority.isascii() or "@" in authority:
            return Decision(False, "bad-authority")
        match = _HOST_PORT.fullmatch(authority)
        if match is None or match.group(2) is None:
            return Decision(False, "bad-authority")
        host_text, port_text = match.group(1), match.group(2)
        port = int(port_text) if _PORT.fullmatch(port_text) else 0
        if host_text.startswith("["):
            return Decision(False, "ip-literal", host=host_text, port=port)
        try:
            host = normalize_host(host_text)
        except _HostError as exc:
            return Decision(False, exc.reason, host=host_text.lower(), port=port)
        if not self.allows_name(host):
            return Decision(False, "not-allowlisted", host=host, port=port)
        if port not in self.connect_ports:
            return Decision(False, "bad-port", host=host, port=port)
        return Decision(True, "allowlisted", host=host, port=port)

    def check_http(self, url: str) -> Decision:
        """Judge an absolute-form plain-HTTP target: only ``allow_http`` origins pass.

        When the origin names an address, ``address`` carries it: there is
        nothing to resolve.
        """
        try:
            target = parse_http_target(url)
        except _HostError as exc:
            return Decision(False, exc.reason)
        if (target.host, target.port) not in self.http_origins:
            return Decision(False, "not-allowlisted", host=target.host, port=target.port)
        address = target.host if target.is_address else ""
        return Decision(True, "allowlisted", host=target.host, port=target.port, address=address)

    def check_address(self, ip: str, *, origin: tuple[str, int] | None = None) -> Decision:
        """Judge one resolved address.

        ``origin`` is the (host, port) of an ``allow_http`` request target.  An
        origin the seller wrote as an address passes whatever its range (the
        seller named it), but only as that (address, port) pair and only when
        the request names that address: a named origin that resolves to it, or
        the address on another port, is judged like any other address.
        """
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return Decision(False, "bad-address", address=ip)
        if origin is not None and origin[0] == str(addr) and (
                (addr, origin[1]) in self.http_origin_addresses):
            return Decision(True, "allow-http-origin", address=str(addr))
        allowed, detail = self._judge(addr)
        if allowed:
            reason = "allow-cidrs" if detail == "allow-cidrs" else "public-address"
            return Decision(True, reason, address=str(addr), detail=detail)
        return Decision(False, "non-public-address", address=str(addr), detail=detail)

    def _judge(self, addr: IPAddress) -> tuple[bool, str]:
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            # A zone index only makes sense for link-local targets on this host.
            return False, "scoped-address"
        if (category := _always_denied(addr)) is not None:
            return False, category
        # The proxy's own addresses beat allow_cidrs: an allowed name resolving to
        # the build host would reach the host's services, which the firewall
        # keeps from build steps.
        if addr in self.own_addresses:
            return False, "own-address"
        if isinstance(addr, ipaddress.IPv6Address) and (embedded := _embedded_v4(addr)):
            # Before allow_cidrs: an entry covering 64:ff9b::/96 must not let
            # 64:ff9b::ac11:1 (our own 172.17.0.1) or the metadata address through.
            verdicts = []
            for kind, v4 in embedded:
                allowed, detail = self._judge(v4)
                if not allowed:
                    return False, f"{kind}-embedded-{detail}"
                verdicts.append(detail)
            return True, "allow-cidrs" if "allow-cidrs" in verdicts else "public"
        if any(addr.version == n.version and addr in n for n in self.allow_cidrs):
            return True, "allow-cidrs"
        if isinstance(addr, ipaddress.IPv4Address):
            category = _lookup(addr, _V4_NON_PUBLIC)
            return (False, category) if category else (True, "public")
        return self._judge_v6(addr)

    def _judge_v6(self, addr: ipaddress.IPv6Address) -> tuple[bool, str]:
        if (category := _lookup(addr, _V6_NON_PUBLIC)) is not None:
            return False, category
        if addr not in _V6_GLOBAL_UNICAST:
            return False, "reserved"
        return True, "public"


def _embedded_v4(addr: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 destinations an IPv6 address carries (NAT64, Teredo, 6to4), if any."""
    if addr in _NAT64:
        return [("nat64", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))]
    if addr in _TEREDO and addr.teredo is not None:
        server, client = addr.teredo
        return [("teredo", server), ("teredo", client)]
    if addr in _SIX_TO_FOUR and addr.sixtofour is not None:
        return [("6to4", addr.sixtofour)]
    return []


def _own(addresses: Iterable[str]) -> frozenset[IPAddress]:
    """The proxy's own addresses; an IPv4-mapped one also as the IPv4 it spells."""
    out: set[IPAddress] = set()
    for text in addresses:
        addr = ipaddress.ip_address(text)
        out.add(addr)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            out.add(addr.ipv4_mapped)
    return frozenset(out)


def _entries(values: Sequence[str], field: str) -> list[str]:
    # A bare string would iterate as characters and allow "p", "y", ...
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise ConfigError("must be a list of strings", field=field)
    for value in values:
        if value != value.strip() or not value:
            raise ConfigError(f"{value!r} is empty or has surrounding spaces", field=field)
    return list(values)

"""The egress policy as a table of attacks: names, ports, literals, addresses."""

from __future__ import annotations

import pytest

from bake.egress.ledger import EgressLedger, EgressStats, summarize
from bake.egress.policy import EgressPolicy, normalize_host, parse_http_target
from bake.errors import ConfigError

SELLER = EgressPolicy.from_settings(
    allow=[
        "pypi.org",
        "files.pythonhosted.org",
        "huggingface.co",
        "*.huggingface.co",
        "hf.co",
        "*.hf.co",
        "Bücher.example.",
    ],
    allow_http=[
        "http://10.0.0.5:3141",
        "http://127.0.0.1:8000/",
        "http://mirror.internal",
        "http://[fd00::5]:8080",
    ],
    allow_cidrs=["203.0.113.0/24"],
    own_addresses=["172.17.0.1", "fd00::1"],
)


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "allowed", "reason"),
    [
        ("pypi.org:443", True, "allowlisted"),
        ("PyPI.ORG:443", True, "allowlisted"),  # case
        ("pypi.org.:443", True, "allowlisted"),  # one trailing dot
        ("cdn.hf.co:443", True, "allowlisted"),
        ("a.b.cdn.hf.co:443", True, "allowlisted"),
        ("xn--bcher-kva.example:443", True, "allowlisted"),  # the IDNA form of an allowed IDN
        # suffix confusion: label boundaries
        ("evilhf.co:443", False, "not-allowlisted"),
        ("hf.co.evil.test:443", False, "not-allowlisted"),
        ("pypi.org.evil.test:443", False, "not-allowlisted"),
        ("evilpypi.org:443", False, "not-allowlisted"),
        ("huggingface.co.:443", True, "allowlisted"),
        ("pypi.org..:443", False, "bad-host"),  # only one trailing dot
        (".pypi.org:443", False, "bad-host"),
        ("pypi-.org:443", False, "bad-host"),
        ("py_pi.org:443", False, "bad-host"),
        ("xn--a.hf.co:443", False, "bad-host"),  # punycode that does not decode
        ("files.pythonhosted.org:443", True, "allowlisted"),
        ("example.com:443", False, "not-allowlisted"),
        # ports: only 443, spelled in plain ASCII digits
        ("pypi.org:80", False, "bad-port"),
        ("pypi.org:22", False, "bad-port"),
        ("pypi.org:0443", False, "bad-port"),
        ("pypi.org:65979", False, "bad-port"),  # 443 + 65536
        ("pypi.org:+443", False, "bad-authority"),
        ("pypi.org:4_43", False, "bad-authority"),
        ("pypi.org:\u0664\u0664\u0663", False, "bad-authority"),  # Arabic-Indic digits
        ("pypi.org:\uff14\uff14\uff13", False, "bad-authority"),  # fullwidth digits
        ("pypi.org: 443", False, "bad-authority"),
        ("pypi.org:443 ", False, "bad-authority"),
        ("pypi.org", False, "bad-authority"),
        ("pypi.org:", False, "bad-authority"),
        # authority junk
        ("pypi.org:443@evil.test", False, "bad-authority"),
        ("user@pypi.org:443", False, "bad-authority"),
        ("user:pw@pypi.org:443", False, "bad-authority"),
        ("pypi.org:443/path", False, "bad-authority"),
        ("pypi.org:443:443", False, "bad-authority"),
        ("pypi.org%2f:443", False, "bad-authority"),
        ("pypi.org\t:443", False, "bad-authority"),
        ("ｐｙｐｉ.org:443", False, "bad-authority"),  # non-ASCII on the wire
        ("pypi.org\x00.evil:443", False, "bad-authority"),
        # IP literals in every notation
        ("127.0.0.1:443", False, "ip-literal"),
        ("203.0.113.80:443", False, "ip-literal"),
        ("2130706433:443", False, "ip-literal"),
        ("0x7f000001:443", False, "ip-literal"),
        ("0x7f.1:443", False, "ip-literal"),
        ("127.1:443", False, "ip-literal"),
        ("0177.0.0.1:443", False, "ip-literal"),
        ("127.0.0.1.:443", False, "ip-literal"),
        ("pypi.org.0x1:443", False, "ip-literal"),
        ("[::1]:443", False, "ip-literal"),
        ("[::ffff:127.0.0.1]:443", False, "ip-literal"),
    ],
)
def test_check_connect(authority: str, allowed: bool, reason: str) -> None:
    decision = SELLER.check_connect(authority)
    assert (decision.allowed, decision.reason) == (allowed, reason)
    if allowed:
        assert decision.port == 443
        assert decision.host == decision.host.lower().rstrip(".")


def test_wildcard_does_not_cover_its_own_apex() -> None:
    only_wild = EgressPolicy.from_settings(["*.hf.co"], [], [])
    assert only_wild.check_connect("cdn.hf.co:443").allowed
    assert only_wild.check_connect("hf.co:443").reason == "not-allowlisted"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("PyPI.Org", "pypi.org"),
        ("pypi.org.", "pypi.org"),
        ("Bücher.DE", "xn--bcher-kva.de"),
        ("ｐｙｐｉ。org", "pypi.org"),  # fullwidth letters and ideographic full stop (nameprep)
    ],
)
def test_normalize_host(raw: str, canonical: str) -> None:
    assert normalize_host(raw) == canonical


@pytest.mark.parametrize(
    ("url", "allowed", "reason", "address"),
    [
        ("http://10.0.0.5:3141/simple/six/", True, "allowlisted", "10.0.0.5"),
        ("http://127.0.0.1:8000/", True, "allowlisted", "127.0.0.1"),
        ("HTTP://127.0.0.1:8000/x?y=1", True, "allowlisted", "127.0.0.1"),
        ("http://mirror.internal/simple/", True, "allowlisted", ""),
        ("http://MIRROR.internal:80/", True, "allowlisted", ""),
        ("http://[fd00::5]:8080/", True, "allowlisted", "fd00::5"),
        ("http://10.0.0.5:3142/", False, "not-allowlisted", ""),  # other port
        ("http://10.0.0.6:3141/", False, "not-allowlisted", ""),
        ("http://pypi.org/simple/", False, "not-allowlisted", ""),  # CONNECT-only names
        ("http://mirror.internal:8080/", False, "not-allowlisted", ""),
        ("http://167772165:3141/", False, "ip-literal", ""),  # 10.0.0.5 as one number
        ("http://0xa000005:3141/", False, "ip-literal", ""),
        ("http://10.5:3141/", False, "ip-literal", ""),
        ("http://010.0.0.5:3141/", False, "ip-literal", ""),  # leading zero: octal to some
        ("http://user@10.0.0.5:3141/", False, "bad-authority", ""),
        ("http://10.0.0.5:3141@evil.test/", False, "bad-authority", ""),
        ("http://10.0.0.5:+3141/", False, "bad-authority", ""),
        ("http://10.0.0.5:/", False, "bad-authority", ""),
        ("http://10.0.0.5:3141/#frag", False, "bad-url", ""),
        ("https://pypi.org/", False, "bad-url", ""),
        ("ftp://10.0.0.5:3141/", False, "bad-url", ""),
        ("/simple/", False, "bad-url", ""),
        ("http://10.0.0.5:3141/a b", False, "bad-url", ""),
    ],
)
def test_check_http(url: str, allowed: bool, reason: str, address: str) -> None:
    decision = SELLER.check_http(url)
    assert (decision.allowed, decision.reason) == (allowed, reason)
    assert decision.address == address


def test_parse_http_target_makes_origin_form() -> None:
    assert parse_http_target("http://h.test:81/a/b?c=d").path == "/a/b?c=d"
    assert parse_http_target("http://h.test?q").path == "/?q"
    assert parse_http_target("http://h.test").path == "/"
    assert parse_http_target("http://h.test").port == 80


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed", "detail"),
    [
        ("8.8.8.8", True, "public"),
        ("151.101.0.223", True, "public"),
        ("2606:4700::6810:84e5", True, "public"),
        ("203.0.113.80", True, "allow-cidrs"),  # documentation range, listed by the seller
        ("127.0.0.1", False, "loopback"),
        ("127.255.255.254", False, "loopback"),
        ("10.1.2.3", False, "private"),
        ("172.16.0.1", False, "private"),
        ("172.31.255.255", False, "private"),
        ("192.168.1.1", False, "private"),
        ("169.254.169.254", False, "link-local"),  # cloud metadata
        ("100.64.0.1", False, "cgnat"),
        ("100.127.255.255", False, "cgnat"),
        ("0.0.0.0", False, "unspecified"),
        ("0.1.2.3", False, "unspecified"),
        ("224.0.0.1", False, "multicast"),
        ("239.255.255.250", False, "multicast"),
        ("240.0.0.1", False, "reserved"),
        ("255.255.255.255", False, "broadcast"),
        ("192.0.0.8", False, "reserved"),
        ("192.0.2.1", False, "documentation"),
        ("198.51.100.7", False, "documentation"),
        ("198.18.0.1", False, "benchmarking"),
        ("198.19.255.255", False, "benchmarking"),
        ("172.17.0.1", False, "own-address"),
        ("::", False, "unspecified"),
        ("::1", False, "loopback"),
        ("::ffff:127.0.0.1", False, "ipv4-mapped"),
        ("::ffff:8.8.8.8", False, "ipv4-mapped"),  # a v6 spelling of v4 is never dialled
        ("::127.0.0.1", False, "ipv4-compatible"),
        ("64:ff9b::7f00:1", False, "nat64-embedded-loopback"),
        ("64:ff9b::a9fe:a9fe", False, "nat64-embedded-link-local"),
        ("64:ff9b::808:808", True, "public"),
        ("64:ff9b:1::a00:1", False, "nat64-local"),
        ("2002:7f00:1::1", False, "6to4-embedded-loopback"),
        ("2002:c0a8:101::1", False, "6to4-embedded-private"),
        ("2002:808:808::1", True, "public"),
        # Teredo: server 65.54.227.120, client 192.0.2.45 (obfuscated in the last 32 bits)
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False, "teredo-embedded-documentation"),
        # Teredo with client 127.0.0.1: ~0x7f000001 = 0x80fffffe
        ("2001:0:4136:e378::80ff:fffe", False, "teredo-embedded-loopback"),
        ("2001:db8::1", False, "documentation"),
        ("3fff::1", False, "documentation"),
        ("2001:2::1", False, "benchmarking"),
        ("100::1", False, "discard"),
        ("fc00::1", False, "unique-local"),
        ("fd12:3456::1", False, "unique-local"),
        ("fd00::1", False, "own-address"),
        ("fe80::1", False, "link-local"),
        ("fe80::1%eth0", False, "scoped-address"),
        ("fec0::1", False, "site-local"),
        ("ff02::1", False, "multicast"),
        ("4000::1", False, "reserved"),  # outside 2000::/3
    ],
)
def test_check_address(address: str, allowed: bool, detail: str) -> None:
    decision = SELLER.check_address(address)
    assert (decision.allowed, decision.detail) == (allowed, detail)
    assert decision.reason == (
        "non-public-address"
        if not allowed
        else "allow-cidrs"
        if detail == "allow-cidrs"
        else "public-address"
    )


def test_allow_cidrs_override_but_never_for_own_or_unspecified() -> None:
    lax = EgressPolicy.from_settings(
        ["a.test"], [], ["127.0.0.0/8", "0.0.0.0/8", "10.0.0.0/8"], own_addresses=["10.0.0.1"]
    )
    assert lax.check_address("127.0.0.5").allowed
    assert lax.check_address("64:ff9b::7f00:5").allowed  # judged by its embedded address
    assert lax.check_address("10.0.0.1").detail == "own-address"
    assert lax.check_address("0.0.0.0").detail == "unspecified"
    assert lax.check_address("::ffff:127.0.0.5").detail == "ipv4-mapped"


def test_http_origin_addresses_pass_only_for_http_origins() -> None:
    assert SELLER.check_address("10.0.0.5", origin=("10.0.0.5", 3141)).allowed
    assert SELLER.check_address("10.0.0.5").detail == "private"  # not through CONNECT
    assert not SELLER.check_address("10.0.0.6", origin=("10.0.0.6", 3141)).allowed
    # A named origin still has its resolved address checked.
    assert not SELLER.check_address("169.254.169.254", origin=("mirror.internal", 80)).allowed


def test_bad_address_text_is_denied() -> None:
    assert SELLER.check_address("not-an-ip").reason == "bad-address"


def test_no_network() -> None:
    assert EgressPolicy.from_settings([], [], []).no_network
    assert EgressPolicy.from_settings([], [], ["203.0.113.0/24"]).no_network
    assert not EgressPolicy.from_settings(["pypi.org"], [], []).no_network
    assert not EgressPolicy.from_settings([], ["http://10.0.0.5:3141"], []).no_network


# --- bad settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "",
        " pypi.org",
        "pypi..org",
        "-pypi.org",
        "py_pi.org",
        "*",
        "*.com",
        "*.*.hf.co",
        "py*pi.org",
        "hf.*",
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "[::1]",
        "::1",
        "a" * 64 + ".com",
        "xn--a.com",
        "http://pypi.org",
        "pypi.org:443",
        "pypi.org/simple",
        "\u200b.com",
    ],
)
def test_bad_allow_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        EgressPolicy.from_settings(["pypi.org", entry], [], [])
    assert info.value.field == "egress.allow"
    if entry.strip():
        assert repr(entry) in str(info.value) or entry in str(info.value)


@pytest.mark.parametrize(
    "entry",
    [
        "https://10.0.0.5:3141",
        "http://10.0.0.5:3141/simple",
        "http://u@10.0.0.5",
        "http://10.0.0.5:0",
        "http://10.0.0.5:99999",
        "http://10.0.0.5:",
        "10.0.0.5:3141",
        "http://0.0.0.0:8000",
        "http://[::]:8000",
        "http://224.0.0.1/",
        "http://167772165/",
        "http://10.0.0.5:3141/?x",
    ],
)
def test_bad_allow_http_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        EgressPolicy.from_settings([], [entry], [])
    assert info.value.field == "egress.allow_http"
    assert repr(entry) in str(info.value)


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "0.0.0.0/0", "::/0", "ten/8", "10.0.0.0/33"])
def test_bad_allow_cidrs_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        EgressPolicy.from_settings([], [], [entry])
    assert info.value.field == "egress.allow_cidrs"
    assert repr(entry) in str(info.value)


def test_a_bare_string_is_not_a_list() -> None:
    with pytest.raises(ConfigError):
        EgressPolicy.from_settings("pypi.org", [], [])


# --- the ledger ------------------------------------------------------------------------------


def test_summarize_counts_and_skips_a_torn_line(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    log = Path(str(tmp_path)) / "egress.jsonl"
    ledger = EgressLedger(log)
    ledger.decision(client="c", allowed=True, reason="allowlisted", host="pypi.org", port=443)
    ledger.decision(client="c", allowed=False, reason="not-allowlisted", host="x.test", port=443)
    ledger.decision(client="c", allowed=False, reason="bad-port", host="pypi.org", port=22)
    ledger.tunnel(
        client="c",
        host="pypi.org",
        port=443,
        address="203.0.113.80",
        reason="closed",
        bytes_up=300_000,
        bytes_down=41_200_000,
        duration_s=1.5,
    )
    ledger.close()
    with log.open("a") as f:
        f.write('{"event": "decision", "decis')  # killed mid-line
    stats = summarize(log)
    assert stats == EgressStats(allowed=1, denied=2, bytes_up=300_000, bytes_down=41_200_000)
    assert stats == ledger.stats()
    assert stats.one_line() == "egress: 1 allowed, 2 denied, 41.2 MB in / 0.3 MB out"
    assert summarize(log.with_name("missing.jsonl")) == EgressStats()


# --- issue 13, item 1: four gaps, each with what was tried against it ------------------------

# Gap 2: an allow_cidrs entry that covers an embedding prefix (here supernets of them:
# entries inside one are refused below) must not decide for the IPv4 address inside.
OWN_V4 = "172.17.0.1"  # the proxy's own address on docker0
LAX_V6 = EgressPolicy.from_settings(
    ["a.test"], [], ["64:ff9b::/32", "2000::/3", "::/1"], own_addresses=[OWN_V4, "fd00::1"])


@pytest.mark.parametrize(
    ("address", "detail"),
    [
        # NAT64 (64:ff9b::/96): our own address, the metadata service, loopback, 0.0.0.0
        ("64:ff9b::ac11:1", "nat64-embedded-own-address"),
        ("64:ff9b::172.17.0.1", "nat64-embedded-own-address"),  # the dotted spelling
        ("64:ff9b::a9fe:a9fe", "nat64-embedded-link-local"),
        ("64:ff9b::7f00:1", "nat64-embedded-loopback"),
        ("64:ff9b::", "nat64-embedded-unspecified"),
        ("64:ff9b::a00:5", "nat64-embedded-private"),
        # 6to4 (2002::/16), covered by 2000::/3
        ("2002:ac11:1::", "6to4-embedded-own-address"),
        ("2002:ac11:1:ffff:ffff:ffff:ffff:ffff", "6to4-embedded-own-address"),
        ("2002:a9fe:a9fe::1", "6to4-embedded-link-local"),
        ("2002:7f00:1::1", "6to4-embedded-loopback"),
        # Teredo (2001::/32), covered by 2000::/3: client 172.17.0.1 is ~0xac110001
        ("2001:0:4136:e378:8000:63bf:53ee:fffe", "teredo-embedded-own-address"),
        ("2001:0:ac11:1:8000:63bf:f7ff:fff7", "teredo-embedded-own-address"),  # as server
        ("2001:0:4136:e378:8000:63bf:5601:5601", "teredo-embedded-link-local"),
        # IPv4-mapped and -compatible (covered by ::/1): never dialled at all
        ("::ffff:172.17.0.1", "ipv4-mapped"),
        ("::ffff:169.254.169.254", "ipv4-mapped"),
        ("::172.17.0.1", "ipv4-compatible"),
        ("::a9fe:a9fe", "ipv4-compatible"),
    ],
)
def test_own_and_denied_addresses_beat_allow_cidrs_in_every_spelling(address: str,
                                                                      detail: str) -> None:
    decision = LAX_V6.check_address(address)
    assert (decision.allowed, decision.detail) == (False, detail)


def test_an_embedded_address_is_judged_by_the_ipv4_rules_and_entries() -> None:
    assert LAX_V6.check_address("64:ff9b::808:808").allowed  # 8.8.8.8, public
    assert LAX_V6.check_address("2001:db8::1").detail == "allow-cidrs"  # not an embedding
    v4 = EgressPolicy.from_settings(["a.test"], [], ["172.16.0.0/12", "10.0.0.0/8"],
                                    own_addresses=[OWN_V4])
    assert v4.check_address("64:ff9b::a00:5").detail == "allow-cidrs"  # 10.0.0.5, listed
    assert v4.check_address("64:ff9b::ac11:2").detail == "allow-cidrs"  # 172.17.0.2
    assert v4.check_address("64:ff9b::ac11:1").detail == "nat64-embedded-own-address"
    assert v4.check_address("2002:ac11:1::").detail == "6to4-embedded-own-address"
    # An own address given as IPv4-mapped counts as the IPv4 address too.
    mapped = EgressPolicy.from_settings(["a.test"], [], ["172.16.0.0/12"],
                                        own_addresses=["::ffff:172.17.0.1"])
    assert mapped.check_address(OWN_V4).detail == "own-address"


@pytest.mark.parametrize("entry", ["64:ff9b::/96", "64:ff9b::ac11:0/112", "2002::/16",
                                   "2002:ac11::/32", "2001::/32", "2001:0:ac11::/48",
                                   "::ffff:0:0/96", "::ffff:ac11:0/112"])
def test_an_allow_cidrs_entry_inside_an_embedding_prefix_is_refused(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        EgressPolicy.from_settings([], [], [entry])
    assert info.value.field == "egress.allow_cidrs"
    assert repr(entry) in str(info.value) and "IPv4" in str(info.value)


# Gap 3: an allow_http origin written as an address is that (address, port) pair only.
def test_an_address_origin_is_an_address_and_port_pair() -> None:
    pol = EgressPolicy.from_settings(
        [], ["http://10.0.0.5:3141", "http://mirror.internal", "http://[fd00::5]:8080"], [])
    assert pol.check_address("10.0.0.5", origin=("10.0.0.5", 3141)).allowed
    assert pol.check_address("fd00::5", origin=("fd00::5", 8080)).allowed
    # The same address reached under a name-based origin, or on another port: judged
    # like any other address.
    for origin in [("mirror.internal", 80), ("10.0.0.5", 80), ("10.0.0.5", 3142)]:
        decision = pol.check_address("10.0.0.5", origin=origin)
        assert (decision.allowed, decision.detail) == (False, "private"), origin
    assert not pol.check_address("fd00::5", origin=("mirror.internal", 80)).allowed
    assert not pol.check_address("10.0.0.5").allowed  # CONNECT never


# Gap 4: IDNA 2008 / UTS 46 (the idna package), not the standard library's IDNA 2003.
@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2003 said fass.de: another domain
        ("FASS.de", "fass.de"),
        ("xn--fa-hia.de", "xn--fa-hia.de"),  # what pip and requests send for faß.de
        ("XN--FA-HIA.de.", "xn--fa-hia.de"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("ﬀ.de", "ff.de"),  # UTS 46 maps the ligature, as browsers do
        ("ｐｙｐｉ。org", "pypi.org"),
    ],
)
def test_idna_2008(raw: str, canonical: str) -> None:
    assert normalize_host(raw) == canonical


def test_an_idna_2008_entry_allows_the_name_clients_send() -> None:
    pol = EgressPolicy.from_settings(["faß.de", "xn--mnchen-3ya.example"], [], [])
    assert pol.check_connect("xn--fa-hia.de:443").allowed
    assert pol.check_connect("fass.de:443").reason == "not-allowlisted"
    assert pol.check_connect("xn--mnchen-3ya.example:443").allowed  # münchen


@pytest.mark.parametrize(
    "entry",
    [
        "a\u200db.example",  # zero width joiner
        "a\u200cb.example",  # zero width non-joiner
        "fa\u00adss.de",  # soft hyphen: UTS 46 drops it, leaving fass.de
        "pypi\u200b.org",  # zero width space
        "\ufeffpypi.org",  # byte order mark
        "pypi\u2060.org",  # word joiner
        "a\ufe0f.example",  # variation selector
        "a\u034fb.example",  # combining grapheme joiner
        "xn--a.example",  # punycode that does not decode
        "xn--fa-hia-.de",
    ],
)
def test_invisible_or_broken_idna_entries_are_refused(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        EgressPolicy.from_settings(["pypi.org", entry], [], [])
    assert info.value.field == "egress.allow"
    assert repr(entry) in str(info.value)


def test_an_entry_whose_encoding_does_not_round_trip_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import idna

    # idna 3.x round-trips every name it accepts; a release that did not would
    # make two spellings name one host.  The check must catch that.
    real = idna.decode
    monkeypatch.setattr(idna, "decode", lambda s, **kw: real(s, **kw).replace("ß", "ss"))
    with pytest.raises(ConfigError) as info:
        EgressPolicy.from_settings(["faß.de"], [], [])
    assert "round-trip" in str(info.value) and "'faß.de'" in str(info.value)


def test_the_fast_path_needs_no_idna() -> None:
    import subprocess
    import sys

    code = ("import sys; from bake.egress.policy import EgressPolicy; "
            "EgressPolicy.from_settings(['pypi.org', '*.hf.co'], ['http://10.0.0.5:3141'], []); "
            "print('idna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_a_bad_allow_entry_is_exit_2_naming_it(tmp_path: pytest.TempPathFactory) -> None:
    import subprocess
    import sys
    from pathlib import Path

    config = Path(str(tmp_path)) / "config.toml"
    config.write_text('[egress]\nallow = ["pypi.org", "fa\\u00adss.de"]\n')
    proc = subprocess.run([sys.executable, "-m", "bake", "--config", str(config), "proxy",
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "egress.allow" in proc.stderr and "U+00AD" in proc.stderr
    assert "Traceback" not in proc.stderr

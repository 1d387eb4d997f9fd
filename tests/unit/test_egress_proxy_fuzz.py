"""The proxy's request parser and target checks under hypothesis.

Whatever bytes a build step sends as a request head, the parser answers with a
request or a refusal (never another exception), and whatever it accepts for
CONNECT is an allowlisted name on port 443: the properties that the attack
table in test_egress_proxy.py checks case by case, here over generated input.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bake.egress.policy import EgressPolicy
from bake.egress.proxy import _parse_head, _Reject

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POLICY = EgressPolicy.from_settings(["pypi.org", "*.hf.co"], ["http://127.0.0.1:3141"], [])

_pieces = st.sampled_from([
    "CONNECT", "GET", " ", "  ", "\r\n", "\n", "\r", "\x00", ":", "443", "+443", "4_43",
    "pypi.org", "PyPI.org.", "evil.hf.co", "hf.co", "evilhf.co", "@", "HTTP/1.1", "HTTP/1.0",
    "HTTP/2", "Host", "Host: evil", "http://", "127.0.0.1", "[::1]", "0x7f.1", "2130706433",
    "\u0663", "\u00e9", "xn--", "%2e", "/", "?", "#", "\t",
])
_heads = st.one_of(
    st.binary(max_size=300),
    st.lists(_pieces, max_size=25).map(lambda parts: "".join(parts).encode("utf-8")),
)
_authorities = st.one_of(
    st.text(max_size=80),
    st.lists(_pieces, max_size=8).map("".join),
)


@FUZZ
@given(_heads)
def test_any_head_parses_or_is_refused(head: bytes) -> None:
    try:
        request = _parse_head(head)
    except _Reject as refusal:
        assert 400 <= refusal.status < 500
        return
    assert request.version in ("HTTP/1.1", "HTTP/1.0")
    assert " " not in request.target and request.target
    for name, value in request.headers:
        assert "\r" not in value and "\n" not in value and ":" not in name


@FUZZ
@given(_authorities)
def test_connect_allows_only_allowlisted_names_on_443(authority: str) -> None:
    decision = POLICY.check_connect(authority)
    if decision.allowed:
        assert decision.port == 443
        assert decision.host == "pypi.org" or decision.host.endswith(".hf.co")
        assert decision.host.isascii() and decision.host == decision.host.lower()
        assert authority.isascii() and authority.endswith(":443")


@FUZZ
@given(_authorities)
def test_plain_http_goes_only_to_the_named_origin(rest: str) -> None:
    decision = POLICY.check_http(f"http://{rest}")
    if decision.allowed:
        assert (decision.host, decision.port) == ("127.0.0.1", 3141)

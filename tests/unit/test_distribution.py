"""The Distribution protocol's plans: image names, manifest URLs, auth challenges, schemes.

Pure, no registry: the token flow against a loopback registry is in test_registry.py,
the real registry in tests/integration/test_registry.py.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from bake.cache.distribution import (
    MANIFEST_TYPES,
    ManifestRef,
    is_insecure,
    is_loopback,
    manifest_url,
    parse_challenge,
    split_image,
    token_url,
)
from bake.errors import RegistryError

KEY = "a" * 64


# --- names and URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "host", "name", "config_key"), [
    (f"127.0.0.1:5000/bake-test:{KEY}", "127.0.0.1:5000", "bake-test", "127.0.0.1:5000"),
    (f"registry.example.com/team/bake:{KEY}", "registry.example.com", "team/bake",
     "registry.example.com"),
    (f"localhost:5000/a/b/c:{KEY}", "localhost:5000", "a/b/c", "localhost:5000"),
    (f"bake:{KEY}", "registry-1.docker.io", "library/bake", "https://index.docker.io/v1/"),
    (f"team/bake:{KEY}", "registry-1.docker.io", "team/bake", "https://index.docker.io/v1/"),
    (f"docker.io/team/bake:{KEY}", "registry-1.docker.io", "team/bake",
     "https://index.docker.io/v1/"),
])
def test_split_image_reads_names_as_docker_does(image: str, host: str, name: str,
                                                config_key: str) -> None:
    assert split_image(image) == ManifestRef(host, name, KEY, config_key)


def test_manifest_url() -> None:
    ref = ManifestRef("127.0.0.1:5000", "team/bake", KEY, "127.0.0.1:5000")
    assert manifest_url("http", ref) == f"http://127.0.0.1:5000/v2/team/bake/manifests/{KEY}"


def test_manifest_types_cover_oci_and_docker_lists() -> None:
    assert "application/vnd.oci.image.index.v1+json" in MANIFEST_TYPES
    assert "application/vnd.docker.distribution.manifest.v2+json" in MANIFEST_TYPES
    assert "application/vnd.docker.distribution.manifest.list.v2+json" in MANIFEST_TYPES


# --- auth headers --------------------------------------------------------------------------------


def test_parse_bearer_challenge_with_commas_and_escapes() -> None:
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:team/bake:pull,push",error="insufficient \\"scope\\""')
    kind, params = parse_challenge(header)
    assert kind == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:team/bake:pull,push",
        "error": 'insufficient "scope"',
    }


def test_parse_basic_challenge() -> None:
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic",
                                                               {"realm": "Registry Realm"})


def test_token_url_keeps_the_realms_query_and_adds_service_and_scope() -> None:
    url = token_url({"realm": "https://auth.example.com/token?account=x", "service": "reg"},
                    "repository:team/bake:pull")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "auth.example.com", "/token")
    assert parse_qs(parts.query) == {"account": ["x"], "service": ["reg"],
                                     "scope": ["repository:team/bake:pull"]}


def test_token_url_refuses_a_realm_that_is_not_http() -> None:
    with pytest.raises(RegistryError, match="not an http"):
        token_url({"realm": "file:///etc/passwd"}, "repository:a:pull")


# --- plain HTTP or TLS -------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1:5000", True), ("127.9.9.9:80", True), ("localhost:5000", True),
    ("[::1]:5000", True), ("registry.example.com", False), ("10.0.0.5:5000", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_is_insecure_follows_the_engines_registry_config() -> None:
    cidrs = ["127.0.0.0/8", "10.20.0.0/16"]
    configs = {"mirror.internal:5000": {"Secure": False}, "docker.io": {"Secure": True}}
    assert is_insecure("mirror.internal:5000", [], cidrs, configs)
    assert is_insecure("reg.internal:5000", ["10.20.3.4"], cidrs, configs)
    assert not is_insecure("reg.example.com", ["93.184.216.34"], cidrs, configs)
    assert not is_insecure("docker.io", [], cidrs, configs)
    assert not is_insecure("x", ["not-an-address"], ["not-a-cidr"], {})

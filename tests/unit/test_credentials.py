"""Registry credentials found as the docker CLI finds them: config.json auths, helpers."""

from __future__ import annotations

import base64

from bake.cache.credentials import Credentials, credential_helper, credentials_from_config


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_from_docker_config_auths() -> None:
    config = {"auths": {
        "https://registry.example.com/v1/": {"auth": _auth("alice", "pa:ss")},
        "127.0.0.1:5000": {"auth": _auth("bob", "pw")},
        "https://index.docker.io/v1/": {"auth": _auth("carol", "hub")},
        "token.example.com": {"identitytoken": "refresh-me"},
    }}
    assert credentials_from_config(config, "registry.example.com") == Credentials("alice",
                                                                                  "pa:ss")
    assert credentials_from_config(config, "127.0.0.1:5000") == Credentials("bob", "pw")
    assert credentials_from_config(config, "https://index.docker.io/v1/") == Credentials(
        "carol", "hub")
    assert credentials_from_config(config, "token.example.com") == Credentials(
        identity_token="refresh-me")
    assert credentials_from_config(config, "elsewhere.example.com") is None
    assert credentials_from_config({}, "127.0.0.1:5000") is None
    assert credentials_from_config({"auths": {"x": {"auth": "%%%"}}}, "x") is None


def test_credential_helper_for_a_registry_beats_the_store() -> None:
    config = {"credHelpers": {"registry.example.com": "ecr-login"}, "credsStore": "pass"}
    assert credential_helper(config, "registry.example.com") == "ecr-login"
    assert credential_helper(config, "127.0.0.1:5000") == "pass"
    assert credential_helper({}, "127.0.0.1:5000") is None


def test_basic_header() -> None:
    assert Credentials("alice", "s3cret").basic() == "Basic " + _auth("alice", "s3cret")

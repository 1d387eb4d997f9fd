"""Registry credentials, found as the docker CLI finds them.

``$DOCKER_CONFIG/config.json`` (else ``~/.docker/config.json``): its ``auths``
entries, and the credential helpers it names (``credHelpers``, ``credsStore``),
asked with the protocol every Docker credential helper speaks.  The folder
comes from the settings (:class:`bake.settings.HostEnv`), read once.
:func:`credentials_from_config` and :func:`credential_helper` are pure.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import proc

__all__ = [
    "HUB_NAMES",
    "Credentials",
    "credential_helper",
    "credentials_from_config",
    "find_credentials",
    "read_docker_config",
]

_HELPER_TIMEOUT = 20.0
#: How Docker Hub is named in config.json and by the Registry API.
HUB_NAMES = frozenset({"index.docker.io", "docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    # an OAuth2 refresh token (``docker login`` with some registries)
    identity_token: str = field(default="", repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _config_host(key: str) -> str:
    """``https://host:5000/v1/`` and ``host:5000`` name the same registry in config.json."""
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0].lower()


def credentials_from_config(config: Mapping[str, Any], config_key: str) -> Credentials | None:
    """The ``auths`` entry of a parsed config.json for a registry (helpers are not run here)."""
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    want = _config_host(config_key)
    for key, entry in auths.items():
        host = _config_host(str(key))
        if not isinstance(entry, dict):
            continue
        if host != want and not (want in HUB_NAMES and host in HUB_NAMES):
            continue
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            return Credentials(username=str(entry.get("username") or ""), identity_token=token)
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                user, sep, password = (base64.b64decode(encoded, validate=True)
                                       .decode("utf-8").partition(":"))
            except (ValueError, UnicodeDecodeError):
                return None
            return Credentials(username=user, password=password) if sep else None
        if entry.get("username") and entry.get("password"):
            return Credentials(username=str(entry["username"]), password=str(entry["password"]))
    return None


def credential_helper(config: Mapping[str, Any], config_key: str) -> str | None:
    """The credential helper config.json names for a registry, if any."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        want = _config_host(config_key)
        for key, helper in helpers.items():
            if _config_host(str(key)) == want and isinstance(helper, str) and helper:
                return helper
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None



def read_docker_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_helper(helper: str, server: str) -> Credentials | None:
    """``docker-credential-<helper> get``: the protocol every Docker credential helper speaks."""
    try:
        answer = proc.run([f"docker-credential-{helper}", "get"], input=server,
                          timeout=_HELPER_TIMEOUT)
    except OSError:
        return None
    if not answer.ok:
        return None
    try:
        data = json.loads(answer.stdout)
    except ValueError:
        return None
    user, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    if not secret:
        return None
    if user == "<token>":  # how helpers hand back an identity token
        return Credentials(identity_token=secret)
    return Credentials(username=user, password=secret)


def find_credentials(config_dir: Path, config_key: str) -> Credentials | None:
    """The credentials the docker CLI would use for the registry ``config_key``."""
    config = read_docker_config(config_dir)
    helper = credential_helper(config, config_key)
    if helper:
        found = _run_helper(helper, config_key)
        if found is not None:
            return found
    return credentials_from_config(config, config_key)

"""The Distribution protocol (the Registry HTTP API v2): ask a registry for a manifest.

``bake build`` asks the registry on every local miss, so the question must be
cheap: :meth:`Distribution.ask` is one ``HEAD /v2/<name>/manifests/<tag>`` over
the standard library (plus the registry's token exchange when it asks for one),
never a pull attempt.  It speaks the scheme the engine would (plain HTTP for a
loopback or insecure registry, TLS otherwise) and answers the two auth
challenges registries make (``Basic``, and ``Bearer`` with a token service).

Plan, then execute: :func:`split_image`, :func:`manifest_url`,
:func:`parse_challenge`, :func:`token_url` and :func:`is_insecure` are pure and
tested without a registry.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, RegistryError
from ..reference import parse_image_ref
from .credentials import Credentials

__all__ = [
    "MANIFEST_TYPES",
    "Distribution",
    "ManifestRef",
    "Response",
    "is_insecure",
    "is_loopback",
    "manifest_url",
    "parse_challenge",
    "split_image",
    "token_url",
]

# Every manifest kind a pull can use: a registry answers 404 for a tag whose
# manifest type the client did not accept (Distribution does for schema 1).
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DOCKER_HUB = "docker.io"
_HUB_API = "registry-1.docker.io"
# How Docker names Docker Hub in config.json and to credential helpers.
_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_TIMEOUT = 10.0


# --- the plan: pure --------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRef:
    """Where an image's manifest lives: the Registry API's ``host``, ``name`` and ``tag``."""

    host: str  # "127.0.0.1:5000", "registry-1.docker.io"
    name: str  # "bake-test", "library/python"
    tag: str
    config_key: str  # how ~/.docker/config.json names this registry


def split_image(image: str) -> ManifestRef:
    """``registry:5000/team/bake:KEY`` -> its manifest's host, name and tag, as Docker reads it."""
    try:
        ref = parse_image_ref(image)
    except ValueError as exc:
        raise ConfigError(str(exc), field="registry.repository") from None
    tag = ref.tag or "latest"
    domain = ref.domain
    if domain is None or domain in (DOCKER_HUB, "index.docker.io", _HUB_API):
        path = ref.repository if domain is None else ref.repository.split("/", 1)[1]
        # Docker Hub's one-word names live under "library/".
        name = path if "/" in path else f"library/{path}"
        return ManifestRef(_HUB_API, name, tag, _HUB_CONFIG_KEY)
    name = ref.repository.split("/", 1)[1]
    return ManifestRef(domain, name, tag, domain)


def manifest_url(scheme: str, ref: ManifestRef) -> str:
    name = urllib.parse.quote(ref.name, safe="/")
    return f"{scheme}://{ref.host}/v2/{name}/manifests/{urllib.parse.quote(ref.tag, safe='')}"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="https://auth",service="reg",scope="a,b"`` -> ("bearer", {...}).

    RFC 7235 auth-params: quoted values may hold commas and escaped quotes.
    """
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest):
        value = match.group(2)
        value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group(3)
        params[match.group(1).lower()] = value
    return scheme.lower(), params


def token_url(params: Mapping[str, str], scope: str) -> str:
    """The token endpoint's URL for a ``Bearer`` challenge, asking for ``scope``."""
    realm = params.get("realm", "")
    parts = urllib.parse.urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RegistryError(
            f"the registry's token realm {realm!r} is not an http(s) URL",
            hint="the registry's auth set-up is broken; ask its operator",
        )
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query)]
    if params.get("service"):
        query.append(("service", params["service"]))
    query.append(("scope", scope))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))



def is_loopback(host: str) -> bool:
    name = _hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(
    host: str,
    addresses: Iterable[str],
    insecure_cidrs: Sequence[str],
    index_configs: Mapping[str, Any],
) -> bool:
    """Does the engine reach ``host`` without TLS (``docker info`` -> RegistryConfig)?"""
    entry = index_configs.get(host)
    if isinstance(entry, dict) and entry.get("Secure") is False:
        return True
    networks = []
    for cidr in insecure_cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if any(ip in net for net in networks):
            return True
    return False


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if ":" in host else host


# --- the execution: HTTP, helpers, the engine --------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _Unreachable(Exception):
    """The connection itself failed (refused, timed out, TLS): try the next scheme."""


def _http(method: str, url: str, headers: Mapping[str, str], *, verify: bool = True,
          data: bytes | None = None) -> Response:
    context = ssl.create_default_context()
    if not verify:
        # Only for registries the engine itself lists as insecure: it skips verification too.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=data, headers=dict(headers), method=method)
    try:
        with opener.open(request, timeout=_TIMEOUT) as response:
            return Response(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        return Response(exc.code, dict(exc.headers.items()) if exc.headers else {}, body)
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Unreachable(str(getattr(reason, "strerror", None) or reason)) from exc




def _addresses(hostname: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(hostname, None)})
    except OSError:
        return []


def header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def detail(response: Response) -> str:
    """The first error message of a Registry API error body, if it has one."""
    try:
        errors = json.loads(response.body).get("errors") or []
        message = errors[0].get("message") or errors[0].get("code")
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
    return f": {message}" if message else ""


def login_name(ref: ManifestRef) -> str:
    return "" if ref.host == _HUB_API else ref.host


class Distribution:
    """A client of registries' manifest endpoints, remembering what each one taught it.

    ``credentials(config_key)`` finds the login for a registry (the Docker
    config's); ``registry_config()`` is the engine's ``RegistryConfig`` (which
    registries it treats as insecure).  The scheme that answered and the token a
    challenge gave are kept for the next request; a registry that could not be
    reached is not dialled again by the same client (``unreachable`` says why).
    """

    def __init__(self, credentials: Callable[[str], Credentials | None],
                 registry_config: Callable[[], Mapping[str, Any]]) -> None:
        self._credentials = credentials
        self._registry_config = registry_config
        self._schemes: dict[str, tuple[tuple[str, bool], ...]] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        self.unreachable: dict[str, str] = {}

    def ask(self, ref: ManifestRef, method: str, headers: Mapping[str, str], *,
            scope: str) -> Response:
        """One manifest request, answering the registry's auth challenge once if it makes one.

        ``RegistryError(unreachable=True)`` when no scheme reaches the registry.
        """
        if ref.host in self.unreachable:
            raise _unreachable(self.unreachable[ref.host])
        last = ""
        for scheme, verify in self._scheme_order(ref.host):
            url = manifest_url(scheme, ref)
            try:
                token = self._tokens.get((ref.host, ref.name))
                sent = {**headers, **({"Authorization": token} if token else {})}
                response = _http(method, url, sent, verify=verify)
                if response.status == 401:
                    auth = self._authorize(ref, response, scope, verify)
                    if auth is not None:
                        response = _http(method, url, {**headers, "Authorization": auth},
                                         verify=verify)
                        if response.status < 400:
                            self._tokens[(ref.host, ref.name)] = auth
                # The scheme that answered is the one to use from now on.
                self._schemes[ref.host] = ((scheme, verify),)
                return response
            except _Unreachable as exc:
                last = f"{scheme}://{ref.host}: {exc}"
        self.unreachable[ref.host] = f"cannot reach the registry {ref.host} ({last})"
        raise _unreachable(self.unreachable[ref.host])

    def _scheme_order(self, host: str) -> tuple[tuple[str, bool], ...]:
        known = self._schemes.get(host)
        if known is not None:
            return known
        if is_loopback(host):
            # The engine treats 127.0.0.0/8 as insecure by default: a local
            # registry speaks plain HTTP, as Debian's docker-registry does.
            order: tuple[tuple[str, bool], ...] = (("http", True),)
        else:
            config = self._registry_config()
            insecure = is_insecure(
                host, _addresses(_hostname(host)),
                list(config.get("InsecureRegistryCIDRs") or []),
                dict(config.get("IndexConfigs") or {}),
            )
            # Insecure: the engine tries HTTPS without verification, then plain HTTP.
            order = (("https", False), ("http", True)) if insecure else (("https", True),)
        self._schemes[host] = order
        return order

    def _authorize(self, ref: ManifestRef, response: Response, scope: str,
                   verify: bool) -> str | None:
        """The Authorization header the registry's 401 challenge asks for, or None."""
        challenge = header(response.headers, "WWW-Authenticate")
        if not challenge:
            return None
        kind, params = parse_challenge(challenge)
        creds = self._credentials(ref.config_key)
        if kind == "basic":
            return creds.basic() if creds is not None and creds.password else None
        if kind != "bearer":
            return None
        wanted = f"repository:{ref.name}:{scope}"
        url = token_url(params, wanted)
        try:
            if creds is not None and creds.identity_token:
                # OAuth2 refresh-token grant, as `docker` does with an identity token.
                form = urllib.parse.urlencode({
                    "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "service": params.get("service", ""), "scope": wanted, "client_id": "bake",
                }).encode()
                answer = _http("POST", params["realm"], {
                    "Content-Type": "application/x-www-form-urlencoded"}, data=form,
                    verify=verify)
            else:
                headers = {"Authorization": creds.basic()} if creds and creds.password else {}
                answer = _http("GET", url, headers, verify=verify)
        except _Unreachable as exc:
            raise RegistryError(f"cannot reach the token service of {ref.host}: {exc}") from exc
        if answer.status != 200:
            raise RegistryError(
                f"the token service of {ref.host} refused access to {ref.name} "
                f"({answer.status}{detail(answer)})",
                hint=f"log in with `docker login {login_name(ref)}`: bake uses your Docker "
                "credentials",
            )
        try:
            data = json.loads(answer.body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service of {ref.host} answered without a token")
        return f"Bearer {token}"

    # -- pull ----------------------------------------------------------------------------



def _unreachable(message: str) -> RegistryError:
    return RegistryError(message, hint="is the registry up and its address right "
                         "(registry.repository)? `bake doctor` checks it", unreachable=True)

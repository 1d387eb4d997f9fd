"""The image registry: one manifest request to ask, the docker SDK to pull and push.

``bake build`` asks the registry on every local miss, so the question must be
cheap: :meth:`Registry.exists` is one ``HEAD /v2/<name>/manifests/<tag>`` over
the standard library (plus the registry's token exchange when it asks for one),
never a pull attempt.  Only a hit imports the docker SDK and pulls through the
engine, which then uses the engine's own TLS and mirror settings.

Credentials are the user's normal Docker ones (``$DOCKER_CONFIG/config.json``
or ``~/.docker/config.json``: ``auths``, ``credHelpers``, ``credsStore``); the
SDK reads the same file for pulls and pushes.

Plan, then execute: :func:`split_image`, :func:`manifest_url`,
:func:`parse_challenge`, :func:`token_url`, :func:`credentials_from_config`
and :func:`is_insecure` are pure and tested without a registry.

Failure policy (DESIGN.md): a registry that cannot be asked or cannot give the
image is a warning and a local build (:meth:`Registry.pull` returns ``False``);
a registry that refuses a push is a :class:`~bake.errors.RegistryError` raised
after the image is tagged locally, and the local image stays.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, EngineError, RegistryError
from ..reference import parse_image_ref

if TYPE_CHECKING:
    from ..pipeline import Reporter
    from ..settings import Settings
    from ..spec import JobSpec

__all__ = [
    "Credentials",
    "ManifestRef",
    "Registry",
    "credentials_from_config",
    "is_insecure",
    "manifest_url",
    "parse_challenge",
    "pull_spec",
    "push_spec",
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
_HELPER_TIMEOUT = 20.0
_KEY = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token (``docker login`` with some registries)

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
    hub_names = {"index.docker.io", "docker.io", _HUB_API}
    for key, entry in auths.items():
        host = _config_host(str(key))
        if not isinstance(entry, dict):
            continue
        if host != want and not (want in hub_names and host in hub_names):
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
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _Unreachable(Exception):
    """The connection itself failed (refused, timed out, TLS): try the next scheme."""


def _http(method: str, url: str, headers: Mapping[str, str], *, verify: bool = True,
          data: bytes | None = None) -> _Response:
    context = ssl.create_default_context()
    if not verify:
        # Only for registries the engine itself lists as insecure: it skips verification too.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=data, headers=dict(headers), method=method)
    try:
        with opener.open(request, timeout=_TIMEOUT) as response:
            return _Response(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        return _Response(exc.code, dict(exc.headers.items()) if exc.headers else {}, body)
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Unreachable(str(getattr(reason, "strerror", None) or reason)) from exc


def _docker_config() -> dict[str, Any]:
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_helper(helper: str, server: str) -> Credentials | None:
    """``docker-credential-<helper> get``: the protocol every Docker credential helper speaks."""
    try:
        proc = subprocess.run(
            [f"docker-credential-{helper}", "get"], input=server, capture_output=True,
            text=True, timeout=_HELPER_TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        return None
    user, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    if not secret:
        return None
    if user == "<token>":  # how helpers hand back an identity token
        return Credentials(identity_token=secret)
    return Credentials(username=user, password=secret)


def find_credentials(config_key: str) -> Credentials | None:
    config = _docker_config()
    helper = credential_helper(config, config_key)
    if helper:
        found = _run_helper(helper, config_key)
        if found is not None:
            return found
    return credentials_from_config(config, config_key)


def _engine_registry_config() -> dict[str, Any]:
    from .store import docker_client

    try:
        info = docker_client().info()
    except EngineError:
        return {}
    config = info.get("RegistryConfig") if isinstance(info, dict) else None
    return config if isinstance(config, dict) else {}


def _addresses(hostname: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(hostname, None)})
    except OSError:
        return []


class Registry:
    """The seller's registry (``registry.repository``), for images named ``<repo>:<key>``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = settings.registry.repository
        self._schemes: dict[str, tuple[tuple[str, bool], ...]] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        # Why the registry could not be asked in this build, if it could not.
        self.unreachable: str | None = None

    @classmethod
    def configured(cls, settings: Settings) -> Registry:
        if not settings.registry.repository:
            raise ConfigError(
                "is empty, so there is no registry to pull from or push to",
                field="registry.repository",
                source=str(settings.file) if settings.file else None,
                hint='set registry.repository = "registry.example.com/bake" in the seller config',
            )
        return cls(settings)

    # -- is it there? --------------------------------------------------------------------

    def exists(self, image: str) -> bool:
        """One manifest request: does the registry hold ``image``?  RegistryError if unsure."""
        ref = split_image(image)
        headers = {"Accept": ", ".join(MANIFEST_TYPES), "User-Agent": "bake"}
        response = self._ask(ref, "HEAD", headers, scope="pull")
        if response.status == 200:
            return True
        if response.status == 404:
            return False
        raise RegistryError(
            f"the registry {ref.host} answered {response.status} when asked for {image}"
            f"{_detail(response)}",
            hint=_status_hint(response.status, ref),
        )

    def _ask(self, ref: ManifestRef, method: str, headers: dict[str, str], *,
             scope: str) -> _Response:
        """One manifest request, answering the registry's auth challenge once if it makes one."""
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
        self.unreachable = f"cannot reach the registry {ref.host} ({last})"
        raise RegistryError(
            self.unreachable,
            hint="is the registry up and its address right (registry.repository)? "
            "`bake doctor` checks it",
        )

    def _scheme_order(self, host: str) -> tuple[tuple[str, bool], ...]:
        known = self._schemes.get(host)
        if known is not None:
            return known
        if is_loopback(host):
            # The engine treats 127.0.0.0/8 as insecure by default: a local
            # registry speaks plain HTTP, as Debian's docker-registry does.
            order: tuple[tuple[str, bool], ...] = (("http", True),)
        else:
            config = _engine_registry_config()
            insecure = is_insecure(
                host, _addresses(_hostname(host)),
                list(config.get("InsecureRegistryCIDRs") or []),
                dict(config.get("IndexConfigs") or {}),
            )
            # Insecure: the engine tries HTTPS without verification, then plain HTTP.
            order = (("https", False), ("http", True)) if insecure else (("https", True),)
        self._schemes[host] = order
        return order

    def _authorize(self, ref: ManifestRef, response: _Response, scope: str,
                   verify: bool) -> str | None:
        """The Authorization header the registry's 401 challenge asks for, or None."""
        challenge = _header(response.headers, "WWW-Authenticate")
        if not challenge:
            return None
        kind, params = parse_challenge(challenge)
        creds = find_credentials(ref.config_key)
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
                f"({answer.status}{_detail(answer)})",
                hint=f"log in with `docker login {_login_name(ref)}`: bake uses your Docker "
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

    def pull(self, image: str, reporter: Reporter) -> bool:
        """Pull ``image`` if the registry has it; any trouble is a warning and ``False``.

        The caller then builds: a registry must never be the reason a build fails.
        """
        try:
            if not self.exists(image):
                return False
        except RegistryError as exc:
            reporter.warn(f"{exc.message}; building locally instead")
            return False
        try:
            self.fetch(image, reporter)
        except (RegistryError, EngineError) as exc:
            reporter.warn(f"{exc.message}; building locally instead")
            return False
        return True

    def fetch(self, image: str, reporter: Reporter) -> None:
        """``docker pull`` through the engine, with progress; then check the image's key label."""
        import docker.errors

        from .store import docker_client, remove_image

        repository, _, tag = image.rpartition(":")
        reporter.stage(f"pulling {image} from the registry")
        client = docker_client()
        try:
            _follow(client.api.pull(repository, tag=tag, stream=True, decode=True), reporter)
            info = client.api.inspect_image(image)
        except docker.errors.APIError as exc:
            raise RegistryError(f"cannot pull {image}: {exc.explanation or exc}",
                                hint=_api_hint(str(exc.explanation or exc))) from exc
        except RegistryError as exc:
            raise RegistryError(f"cannot pull {image}: {exc.message}",
                                hint=_api_hint(exc.message)) from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"the Docker Engine failed to pull {image}: {exc}") from exc
        label = ((info.get("Config") or {}).get("Labels") or {}).get("bake.key")
        if _KEY.fullmatch(tag) and label != tag:
            # A tag can be overwritten by anyone with push rights: the label, written
            # by bake at build time, must name the same key, or the image is not ours.
            remove_image(image, force=True)
            raise RegistryError(
                f"the registry's {image} is labelled bake.key={label!r}, not its tag: "
                "it was not baked by bake for this key; removed it",
                hint="delete the tag from the registry; bake will build and push a good one",
            )

    # -- push ----------------------------------------------------------------------------

    def push(self, image: str, reporter: Reporter) -> bool:
        """Push ``image``; a refusal (auth, quota, read-only, any error) is a RegistryError.

        The image is already tagged on this engine and stays there.  A registry
        that cannot be reached at all (now, or earlier in the same build) is no
        refusal: the push is skipped with a warning and ``False``, since an
        unreachable registry is never the reason a build fails.
        """
        import docker.errors

        from .store import docker_client

        repository, _, tag = image.rpartition(":")
        host = split_image(image).host
        if self.unreachable is None:
            # One manifest request tells "down" from "refuses"; the answer itself
            # does not matter (a refusal shows up, clearer, in the push).
            with contextlib.suppress(RegistryError):
                self.exists(image)
        if self.unreachable is not None:
            reporter.warn(f"not pushed: {self.unreachable}; `bake push SPEC` publishes it later")
            return False
        reporter.stage(f"pushing {image} to the registry")
        client = docker_client()
        try:
            _follow(client.api.push(repository, tag=tag, stream=True, decode=True), reporter)
        except docker.errors.APIError as exc:
            raise RegistryError(
                f"the registry {host} refused the push of {image}: {exc.explanation or exc}; "
                "the image is kept on this engine",
                hint=_push_hint(str(exc.explanation or exc), host),
            ) from exc
        except RegistryError as exc:
            raise RegistryError(
                f"the registry {host} refused the push of {image}: {exc.message}; "
                "the image is kept on this engine",
                hint=_push_hint(exc.message, host),
            ) from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"the Docker Engine failed to push {image}: {exc}") from exc
        return True


def _follow(stream: Iterable[Any], reporter: Reporter) -> None:
    """Relay an engine progress stream as log lines; an ``error`` entry is a RegistryError.

    One line per layer and state ("Pulling fs layer", "Download complete"), not
    one per progress tick.
    """
    seen: set[tuple[str, str]] = set()
    for item in stream:
        if not isinstance(item, dict):
            continue
        if item.get("error"):
            detail = item.get("errorDetail") or {}
            raise RegistryError(str(detail.get("message") or item["error"]))
        status = str(item.get("status") or "")
        layer = str(item.get("id") or "")
        if not status or (layer, status) in seen:
            continue
        seen.add((layer, status))
        reporter.log(f"{layer}: {status}" if layer else status)


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return ""


def _detail(response: _Response) -> str:
    """The first error message of a Registry API error body, if it has one."""
    try:
        errors = json.loads(response.body).get("errors") or []
        message = errors[0].get("message") or errors[0].get("code")
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
    return f": {message}" if message else ""


def _login_name(ref: ManifestRef) -> str:
    return "" if ref.host == _HUB_API else ref.host


def _status_hint(status: int, ref: ManifestRef) -> str:
    if status in (401, 403):
        return (f"log in with `docker login {_login_name(ref)}`: bake uses your Docker "
                "credentials")
    if status == 429:
        return "the registry rate-limits this host; log in, or wait and try again"
    return "the registry may be overloaded or misconfigured; `bake doctor` checks it"


def _api_hint(text: str) -> str:
    text = text.lower()
    if "unauthorized" in text or "denied" in text or "authentication" in text:
        return "log in with `docker login`: bake uses your Docker credentials"
    return "check that the registry is up; `bake doctor` checks it"


def _push_hint(text: str, host: str) -> str:
    lower = text.lower()
    if any(word in lower for word in ("unauthorized", "authentication", "denied", "forbidden")):
        why = f"log in with `docker login {host}` (bake uses your Docker credentials)"
    elif any(word in lower for word in ("quota", "space", "storage", "too large")):
        why = "the registry is out of space or quota; free some or raise the quota"
    elif any(word in lower for word in ("unsupported", "read-only", "readonly",
                                         "method not allowed")):
        why = "the registry is read-only; ask its operator"
    else:
        why = "fix the registry"
    return f"{why}, then `bake push SPEC`; or set registry.push = false to build without pushing"


# --- bake pull / bake push ------------------------------------------------------------------


def pull_spec(spec: str | Path | JobSpec, *, settings: Settings | None = None,
              reporter: Reporter | None = None) -> str:
    """``bake pull SPEC``: fetch the image of the spec's key; never builds."""
    from ..pipeline import NullReporter, key
    from ..settings import load_settings
    from .store import has_image, key_lock, record_use

    cfg = settings if settings is not None else load_settings()
    report = reporter or NullReporter()
    registry = Registry.configured(cfg)
    image_key = key(spec, settings=cfg)
    image = image_key.image(cfg.image_repository)
    waiting = "another bake is building or pulling this key; waiting"
    with key_lock(image_key.digest, on_wait=lambda: report.stage(waiting)):
        if has_image(image):
            report.stage(f"{image} is already on this engine")
        else:
            if not registry.exists(image):
                raise RegistryError(
                    f"{image} is not in the registry",
                    hint="bake it once (bake build SPEC --push) on any machine of the fleet",
                )
            registry.fetch(image, report)
    record_use(image_key.digest)
    return image


def push_spec(spec: str | Path | JobSpec, *, settings: Settings | None = None,
              reporter: Reporter | None = None) -> str:
    """``bake push SPEC``: publish the local image of the spec's key."""
    from ..pipeline import NullReporter, key
    from ..settings import load_settings
    from .store import has_image

    cfg = settings if settings is not None else load_settings()
    report = reporter or NullReporter()
    registry = Registry.configured(cfg)
    image = key(spec, settings=cfg).image(cfg.image_repository)
    if not has_image(image):
        raise RegistryError(f"{image} is not on this engine, so there is nothing to push",
                            hint="build it first: bake build SPEC (or bake build SPEC --push)")
    if not registry.push(image, report):
        raise RegistryError(f"{image} was not pushed: {registry.unreachable}",
                            hint="start the registry or correct registry.repository, then "
                            "push again")
    return image

"""The seller's image registry: is a key's image there, pull it, push it.

Asking is one manifest request (:mod:`bake.cache.distribution`); pulling and
pushing go through the engine (:mod:`bake.engine`), which then uses its own TLS
and mirror settings, with the user's normal Docker credentials
(:mod:`bake.cache.credentials`) passed as the engine's ``X-Registry-Auth``.

Failure policy (DESIGN.md): a registry that cannot be asked or cannot give the
image is a warning and a local build (:meth:`Registry.pull` returns ``False``);
a registry that refuses a push is a :class:`~bake.errors.RegistryError` raised
after the image is tagged locally, and the local image stays.  One
:class:`Registry` serves a whole build: a registry found unreachable once is
not dialled again.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..engine import Engine, Progress, registry_auth
from ..errors import ConfigError, EngineError, RegistryError
from ..settings import Settings
from ..types import Reporter
from .credentials import Credentials, find_credentials
from .distribution import (
    MANIFEST_TYPES,
    Distribution,
    ManifestRef,
    detail,
    login_name,
    split_image,
)

__all__ = ["Registry"]

_KEY = re.compile(r"[0-9a-f]{64}")


class Registry:
    """The seller's registry (``registry.repository``), for images named ``<repo>:<key>``."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.repository = settings.registry.repository
        self._protocol = Distribution(self._credentials, self._engine_registry_config)

    @classmethod
    def configured(cls, settings: Settings, engine: Engine) -> Registry:
        if not settings.registry.repository:
            raise ConfigError(
                "is empty, so there is no registry to pull from or push to",
                field="registry.repository",
                source=str(settings.file) if settings.file else None,
                hint='set registry.repository = "registry.example.com/bake" in the seller config',
            )
        return cls(settings, engine)

    @property
    def unreachable(self) -> str | None:
        """Why the registry could not be asked in this build, if it could not."""
        return next(iter(self._protocol.unreachable.values()), None)

    def _credentials(self, config_key: str) -> Credentials | None:
        return find_credentials(self.settings.env.docker_config_dir, config_key)

    def _engine_registry_config(self) -> Mapping[str, Any]:
        try:
            config = self.engine.info().get("RegistryConfig")
        except EngineError:
            return {}
        return config if isinstance(config, dict) else {}

    def _auth(self, ref: ManifestRef) -> str | None:
        creds = self._credentials(ref.config_key)
        if creds is None:
            return None
        return registry_auth(creds.username, creds.password, creds.identity_token,
                             server=ref.config_key)

    # -- is it there? --------------------------------------------------------------------

    def exists(self, image: str) -> bool:
        """One manifest request: does the registry hold ``image``?  RegistryError if unsure."""
        ref = split_image(image)
        headers = {"Accept": ", ".join(MANIFEST_TYPES), "User-Agent": "bake"}
        response = self._protocol.ask(ref, "HEAD", headers, scope="pull")
        if response.status == 200:
            return True
        if response.status == 404:
            return False
        raise RegistryError(
            f"the registry {ref.host} answered {response.status} when asked for {image}"
            f"{detail(response)}",
            hint=_status_hint(response.status, ref),
        )

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
        ref = split_image(image)
        tag = image.rpartition(":")[2]
        reporter.stage(f"pulling {image} from the registry")
        try:
            self.engine.pull(image, auth=self._auth(ref), on_progress=_relay(reporter))
            info = self.engine.inspect_image(image) or {}
        except EngineError as exc:
            if exc.unreachable:
                raise
            raise RegistryError(f"cannot pull {image}: {exc.detail}",
                                hint=_api_hint(exc.detail)) from exc
        label = ((info.get("Config") or {}).get("Labels") or {}).get("bake.key")
        if _KEY.fullmatch(tag) and label != tag:
            # A tag can be overwritten by anyone with push rights: the label, written
            # by bake at build time, must name the same key, or the image is not ours.
            self.engine.remove_image(image, force=True)
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
        ref = split_image(image)
        if self.unreachable is None:
            # One manifest request tells "down" from "refuses"; the answer itself
            # does not matter (a refusal shows up, clearer, in the push).
            with contextlib.suppress(RegistryError):
                self.exists(image)
        if self.unreachable is not None:
            reporter.warn(f"not pushed: {self.unreachable}; `bake push SPEC` publishes it later")
            return False
        reporter.stage(f"pushing {image} to the registry")
        try:
            self.engine.push(image, auth=self._auth(ref), on_progress=_relay(reporter))
        except EngineError as exc:
            if exc.unreachable:
                raise
            raise RegistryError(
                f"the registry {ref.host} refused the push of {image}: {exc.detail}; "
                "the image is kept on this engine",
                hint=_push_hint(exc.detail, ref.host),
            ) from exc
        return True


def _relay(reporter: Reporter) -> Callable[[Progress], None]:
    """Relay an engine progress stream as log lines: one per layer and state
    ("Pulling fs layer", "Download complete"), not one per progress tick."""
    seen: set[tuple[str, str]] = set()

    def relay(item: Progress) -> None:
        if (item.layer, item.status) in seen:
            return
        seen.add((item.layer, item.status))
        reporter.log(f"{item.layer}: {item.status}" if item.layer else item.status)

    return relay


def _status_hint(status: int, ref: ManifestRef) -> str:
    if status in (401, 403):
        return (f"log in with `docker login {login_name(ref)}`: bake uses your Docker "
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



"""Seller settings: one reader, one precedence, every value knows its source.

Precedence, lowest first (nox ``Source`` does the same for its options)::

    defaults  <  config file  <  BAKE_<SECTION>_<FIELD> environment  <  flags

The file is the first of ``--config FILE``, ``$BAKE_CONFIG``,
``$XDG_CONFIG_HOME/bake/config.toml`` (else ``~/.config/bake/config.toml``) and
``/etc/bake/config.toml`` that exists.  Unknown sections and keys are errors with
a close-match suggestion.  List values in the environment are comma-separated.

The settings also own every other decision that depends on the host: the
egress settings are validated into an :class:`~bake.egress.policy.EgressPolicy`
when they load (a bad allowlist is exit 2 for every command), and the seller's
environment variables bake reads (``HF_TOKEN``, ``HF_ENDPOINT``, ``DOCKER_HOST``
with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``, ``DOCKER_CONFIG``) are read once,
here, into :class:`HostEnv`, each with its source for ``bake doctor``.

Buyers never reach these: the spec cannot widen egress, name mirrors, CAs,
bases or templates.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any

from .egress.policy import EgressPolicy
from .errors import ConfigError
from .reference import parse_image_ref
from .state import environment_digest
from .units import parse_duration, parse_size

__all__ = [
    "BuildSettings",
    "EgressSettings",
    "HostEnv",
    "RegistrySettings",
    "Settings",
    "config_path",
    "load_settings",
]

DEFAULT_ALLOW = (
    "pypi.org",
    "files.pythonhosted.org",
    "huggingface.co",
    "*.huggingface.co",
    "hf.co",
    "*.hf.co",
)


@dataclass(frozen=True)
class EgressSettings:
    allow: tuple[str, ...] = DEFAULT_ALLOW
    allow_http: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    setup_timeout: int = 300
    enforce: str = "require"


@dataclass(frozen=True)
class BuildSettings:
    ca_bundle: str = ""
    pip_index_url: str = ""
    hf_endpoint: str = ""
    docker_cli: str = ""
    bases: tuple[str, ...] = ("python:*", "pytorch/pytorch:*")
    templates: tuple[str, ...] = ()
    resolve_ttl: float = 86400.0  # seconds ("1d" in the file)
    stacks: str = "variants"
    max_context: int = 1 << 30  # bytes ("1g" in the file)


@dataclass(frozen=True)
class RegistrySettings:
    repository: str = ""
    push: bool = True


@dataclass(frozen=True)
class HostEnv:
    """The seller's environment variables that bake reads, read once (``load_settings``).

    ``sources`` says, per field, which variable gave it ("env HF_TOKEN") or "unset".
    """

    hf_token: str = field(default="", repr=False)  # never in a repr, a log or a message
    hf_endpoint: str = ""
    docker_host: str = ""
    docker_tls_verify: bool = False
    docker_cert_path: str = ""
    docker_config: str = ""  # the folder of config.json (registry credentials)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: Files read to find the engine (the CLI's config and context store), for the fast
    #: path's record of what a lookup depended on (bake/cache/hits.py).
    inputs: tuple[Path, ...] = field(default=(), compare=False)

    @classmethod
    def read(cls, env: Mapping[str, str]) -> HostEnv:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, variables in _HOST_VARIABLES.items():
            for variable in variables:
                if env.get(variable):
                    values[name] = env[variable]
                    sources[name] = f"env {variable}"
                    break
            else:
                sources[name] = "unset"
        values["docker_tls_verify"] = bool(values.get("docker_tls_verify"))
        inputs: list[Path] = []
        if not values.get("docker_host"):
            _docker_context(env, values, sources, inputs)
        return cls(**values, sources=sources, inputs=tuple(inputs))

    @property
    def docker_config_dir(self) -> Path:
        return Path(self.docker_config) if self.docker_config else Path.home() / ".docker"


def _docker_context(env: Mapping[str, str], values: dict[str, Any],
                    sources: dict[str, str], inputs: list[Path]) -> None:
    """Where the docker CLI's current context points, when DOCKER_HOST does not say.

    ``$DOCKER_CONTEXT``, else ``currentContext`` in config.json; its endpoint is in
    the CLI's context store (``contexts/meta/<sha256 of the name>/meta.json``) and its
    TLS files beside it (``contexts/tls/<sha256>/docker/``), as the CLI keeps them.
    """
    folder = Path(values.get("docker_config") or Path.home() / ".docker")
    name, where = env.get("DOCKER_CONTEXT") or "", "env DOCKER_CONTEXT"
    if not name:
        inputs.append(folder / "config.json")
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            name = str(config.get("currentContext") or "") if isinstance(config, dict) else ""
        except (OSError, ValueError):
            name = ""
        where = f"currentContext in {folder / 'config.json'}"
    if not name or name == "default":
        return
    ident = hashlib.sha256(name.encode()).hexdigest()
    meta = folder / "contexts" / "meta" / ident / "meta.json"
    tls = folder / "contexts" / "tls" / ident / "docker"
    inputs += [meta, tls]
    try:
        endpoint = json.loads(meta.read_text(encoding="utf-8"))["Endpoints"]["docker"]
        host = str(endpoint["Host"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"docker context {name!r} ({where}) has no readable endpoint in "
                          f"{meta}", field="DOCKER_CONTEXT",
                          hint="`docker context ls` lists the contexts; or set DOCKER_HOST") \
            from None
    values["docker_host"] = host
    sources["docker_host"] = f"docker context {name} ({where})"
    if tls.is_dir():
        values["docker_cert_path"] = str(tls)
        sources["docker_cert_path"] = f"docker context {name}"
        values["docker_tls_verify"] = not endpoint.get("SkipTLSVerify", False)
        sources["docker_tls_verify"] = f"docker context {name}"


# Engine addresses bake's client speaks (bake/engine): the CLI's others (ssh://, fd://,
# npipe://) need a helper process or another OS.
_ENGINE_SCHEMES = ("unix://", "tcp://")

# HostEnv field -> the variables that set it, first wins (huggingface_hub's own order).
_HOST_VARIABLES = {
    "hf_token": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
    "hf_endpoint": ("HF_ENDPOINT",),
    "docker_host": ("DOCKER_HOST",),
    "docker_tls_verify": ("DOCKER_TLS_VERIFY",),
    "docker_cert_path": ("DOCKER_CERT_PATH",),
    "docker_config": ("DOCKER_CONFIG",),
}


@dataclass(frozen=True)
class Settings:
    egress: EgressSettings = EgressSettings()
    build: BuildSettings = BuildSettings()
    registry: RegistrySettings = RegistrySettings()
    env: HostEnv = HostEnv()
    # "egress.allow" -> "default" | "/etc/bake/config.toml" | "env BAKE_EGRESS_ALLOW" | "flag"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    file: Path | None = None
    #: Every path probed for the config file, in order (the last is ``file`` when found).
    probed: tuple[Path, ...] = field(default=(), compare=False)
    #: What the settings were read from: the ``--config`` argument and a digest of the
    #: environment variables they depend on (the fast path's records are named by both).
    origin: tuple[str, str] = field(default=("", ""), compare=False)

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    @cached_property
    def egress_policy(self) -> EgressPolicy:
        """The ``[egress]`` settings, validated (ConfigError naming the entry if not).

        Without the proxy's own addresses: the pipeline adds those where it
        starts the proxy (:meth:`EgressPolicy.with_own_addresses`).
        """
        try:
            return EgressPolicy.from_settings(self.egress.allow, self.egress.allow_http,
                                              self.egress.allow_cidrs)
        except ConfigError as exc:
            name = exc.field or "egress"
            raise ConfigError(exc.detail, field=name, source=self.source(name),
                              hint=exc.hint) from None

    @property
    def no_network(self) -> bool:
        """Nothing is allowed: setup steps run with ``--network=none``."""
        return not self.egress.allow and not self.egress.allow_http

    @property
    def hub_endpoint(self) -> str | None:
        """The Hub the fetches use: ``build.hf_endpoint``, else ``$HF_ENDPOINT``, else the Hub."""
        return self.build.hf_endpoint or self.env.hf_endpoint or None

    def base_allowed(self, ref: str) -> bool:
        return any(fnmatchcase(ref, pattern) for pattern in self.build.bases)

    @property
    def image_repository(self) -> str:
        return self.registry.repository or "bake"


_SECTIONS: dict[str, type[Any]] = {
    "egress": EgressSettings,
    "build": BuildSettings,
    "registry": RegistrySettings,
}
_ENFORCE = ("require", "warn")
_STACKS = ("variants", "images", "none")
# Settings written as a size or a duration (units.py), stored as bytes or seconds.
_SIZES = frozenset({"build.max_context"})
_DURATIONS = frozenset({"build.resolve_ttl"})


def config_candidates(explicit: str | os.PathLike[str] | None,
                      environ: Mapping[str, str]) -> tuple[list[Path], str]:
    """The paths the config may be at, in the order they are tried, and what chose them."""
    if explicit:
        return [Path(explicit)], "--config"
    if environ.get("BAKE_CONFIG"):
        return [Path(environ["BAKE_CONFIG"])], "BAKE_CONFIG"
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path(xdg) / "bake" / "config.toml", Path("/etc/bake/config.toml")], "default location"


def config_path(explicit: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """The config file to read and why it was chosen (``None`` when none exists)."""
    path, why, _ = _find_config(explicit, os.environ if environ is None else environ)
    return path, why


def _find_config(explicit: str | os.PathLike[str] | None,
                 environ: Mapping[str, str]) -> tuple[Path | None, str, tuple[Path, ...]]:
    candidates, why = config_candidates(explicit, environ)
    probed: list[Path] = []
    for candidate in candidates:
        probed.append(candidate)
        if candidate.is_file():
            return candidate, why, tuple(probed)
        if why != "default location":  # named explicitly: it must exist
            field_name = "--config" if why == "--config" else "BAKE_CONFIG"
            raise ConfigError(f"config file {candidate} does not exist", field=field_name)
    return None, "none", tuple(probed)


def load_settings(
    config: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the seller settings; ``overrides`` are flags as ``{"registry.push": True}``."""
    env = os.environ if environ is None else environ
    path, _why, probed = _find_config(config, env)
    values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    sources: dict[str, str] = {}

    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
        for section, table in data.items():
            cls = _section(section, str(path))
            if not isinstance(table, dict):
                raise ConfigError("must be a table", field=section, source=str(path))
            for key, value in table.items():
                name = f"{section}.{key}"
                _field_type(cls, section, key, str(path))
                values[section][key] = _coerce(cls, key, value, name, str(path))
                sources[name] = str(path)

    for section, cls in _SECTIONS.items():
        for key in cls.__dataclass_fields__:
            var = f"BAKE_{section.upper()}_{key.upper()}"
            if var in env:
                name = f"{section}.{key}"
                values[section][key] = _coerce(cls, key, env[var], name, f"env {var}", text=True)
                sources[name] = f"env {var}"

    for name, value in (overrides or {}).items():
        section, _, key = name.partition(".")
        cls = _section(section, "flag")
        _field_type(cls, section, key, "flag")
        values[section][key] = _coerce(cls, key, value, name, "flag")
        sources[name] = "flag"

    settings = Settings(
        egress=EgressSettings(**values["egress"]),
        build=BuildSettings(**values["build"]),
        registry=RegistrySettings(**values["registry"]),
        env=HostEnv.read(env),
        sources=sources,
        file=path,
        probed=probed,
        origin=(str(config or ""), environment_digest(env)),
    )
    _check(settings)
    return settings


def _masked(url: str) -> str:
    """A URL for a message: whatever could be a credential (userinfo) is not shown."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}" if sep else (
        "***@" + url.rpartition("@")[2] if "@" in url else url)


def _section(name: str, source: str) -> type[Any]:
    cls = _SECTIONS.get(name)
    if cls is None:
        raise ConfigError(
            f"unknown section [{name}]{_did_you_mean(name, _SECTIONS)}",
            source=source,
        )
    return cls


def _field_type(cls: type[Any], section: str, key: str, source: str) -> None:
    fields = cls.__dataclass_fields__
    if key not in fields:
        raise ConfigError(
            f"unknown setting {section}.{key}{_did_you_mean(key, fields)}",
            source=source,
        )


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(
    cls: type[Any], key: str, value: Any, name: str, source: str, *, text: bool = False
) -> Any:
    default = cls.__dataclass_fields__[key].default
    if name in _SIZES or name in _DURATIONS:
        parse = parse_size if name in _SIZES else parse_duration
        try:
            return parse(value.strip() if text and isinstance(value, str) else value)
        except ValueError as exc:
            raise ConfigError(str(exc), field=name, source=source) from None
    if isinstance(default, bool):
        if text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError("must be true or false", field=name, source=source)
    if isinstance(default, int):
        if text and isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise ConfigError("must be a positive whole number", field=name, source=source)
    if isinstance(default, tuple):
        if text and isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError("must be a list of strings", field=name, source=source)
    if isinstance(value, str):
        return value
    raise ConfigError("must be a string", field=name, source=source)


def _check(settings: Settings) -> None:
    src = settings.source
    if settings.egress.enforce not in _ENFORCE:
        raise ConfigError(
            f"must be one of {', '.join(map(repr, _ENFORCE))}, not {settings.egress.enforce!r}",
            field="egress.enforce",
            source=src("egress.enforce"),
        )
    ca = settings.build.ca_bundle
    if ca and not Path(ca).is_file():
        raise ConfigError(
            f"CA bundle {ca} does not exist",
            field="build.ca_bundle",
            source=src("build.ca_bundle"),
        )
    for name, url in (
        ("build.pip_index_url", settings.build.pip_index_url),
        ("build.hf_endpoint", settings.build.hf_endpoint),
    ):
        if (url and not (url.startswith("https://") or url.startswith("http://"))) or any(
            c.isspace() for c in url
        ):
            raise ConfigError(
                f"must be an http:// or https:// URL, not {_masked(url)!r}", field=name,
                source=src(name)
            )
    for name, folders in (("build.templates", settings.build.templates),):
        for folder in folders:
            if not Path(folder).is_dir():
                raise ConfigError(
                    f"template folder {folder} does not exist", field=name, source=src(name)
                )
    if settings.build.stacks not in _STACKS:
        raise ConfigError(
            f"must be one of {', '.join(map(repr, _STACKS))}, not {settings.build.stacks!r}",
            field="build.stacks", source=src("build.stacks"),
        )
    settings.egress_policy  # noqa: B018 - validates the allowlist now, for every command
    host = settings.env.docker_host
    if host and not host.startswith(_ENGINE_SCHEMES):
        raise ConfigError(
            f"{host!r} is not an engine address bake can use",
            field="DOCKER_HOST", source=settings.env.sources.get("docker_host"),
            hint="use unix:///path/to/docker.sock, or tcp://host:port with DOCKER_TLS_VERIFY=1 "
            "and DOCKER_CERT_PATH for TLS (for ssh://, forward the socket: ssh -L)",
        )
    repo = settings.registry.repository
    if repo:
        try:
            ref = parse_image_ref(repo)
        except ValueError as exc:
            raise ConfigError(
                str(exc), field="registry.repository", source=src("registry.repository")
            ) from None
        if ref.tag or ref.digest:
            raise ConfigError(
                "must be a repository without a tag or digest (bake tags images by key)",
                field="registry.repository",
                source=src("registry.repository"),
            )

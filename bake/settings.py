"""Seller settings: one reader, one precedence, every value knows its source.

Precedence, lowest first (nox ``Source`` does the same for its options)::

    defaults  <  config file  <  BAKE_<SECTION>_<FIELD> environment  <  flags

The file is the first of ``--config FILE``, ``$BAKE_CONFIG``,
``$XDG_CONFIG_HOME/bake/config.toml`` (else ``~/.config/bake/config.toml``) and
``/etc/bake/config.toml`` that exists.  Unknown sections and keys are errors with
a close-match suggestion.  List values in the environment are comma-separated.

Buyers never reach these: the spec cannot widen egress, name mirrors, CAs,
bases or templates.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "BuildSettings",
    "EgressSettings",
    "RegistrySettings",
    "Settings",
    "config_path",
    "load_settings",
    "state_dir",
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


@dataclass(frozen=True)
class RegistrySettings:
    repository: str = ""
    push: bool = True


@dataclass(frozen=True)
class Settings:
    egress: EgressSettings = EgressSettings()
    build: BuildSettings = BuildSettings()
    registry: RegistrySettings = RegistrySettings()
    # "egress.allow" -> "default" | "/etc/bake/config.toml" | "env BAKE_EGRESS_ALLOW" | "flag"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    file: Path | None = None

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

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


def config_path(explicit: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """The config file to read and why it was chosen (``None`` when none exists)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", field="--config")
        return path, "--config"
    env = os.environ.get("BAKE_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", field="BAKE_CONFIG")
        return path, "BAKE_CONFIG"
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (Path(xdg) / "bake" / "config.toml", Path("/etc/bake/config.toml")):
        if candidate.is_file():
            return candidate, "default location"
    return None, "none"


def load_settings(
    config: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the seller settings; ``overrides`` are flags as ``{"registry.push": True}``."""
    env = os.environ if environ is None else environ
    path, _why = config_path(config)
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
        sources=sources,
        file=path,
    )
    _check(settings)
    return settings


def state_dir() -> Path:
    """Where bake keeps locks, egress logs and run records (``$BAKE_STATE_DIR`` wins)."""
    explicit = os.environ.get("BAKE_STATE_DIR")
    if explicit:
        base = Path(explicit)
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = Path(xdg) / "bake"
    base.mkdir(parents=True, exist_ok=True)
    return base


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
                f"must be an http:// or https:// URL, not {url!r}", field=name, source=src(name)
            )
    for name, folders in (("build.templates", settings.build.templates),):
        for folder in folders:
            if not Path(folder).is_dir():
                raise ConfigError(
                    f"template folder {folder} does not exist", field=name, source=src(name)
                )
    repo = settings.registry.repository
    if repo:
        from .reference import parse_image_ref

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

"""``bake doctor``: what works on this host, and the exact command that fixes what does not.

Each check is independent and returns a :class:`Check`; none raises, so one
broken piece (the Engine down) never hides what the others would say.  Checks
that need the Engine are reported as failing with the Engine's fix rather than
skipped, so a seller sees every step between here and a working build.

Order matters for reading, not for correctness: the seller config first (every
other check reads it), then the Engine, the BuildKit CLI, the base image,
confinement and the registry.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from typing import Any

from .builder.buildkit import find_cli
from .cache.distribution import split_image
from .cache.registry import Registry
from .egress import lockdown
from .egress.dns import resolve_absolute
from .egress.policy import normalize_host
from .engine import Engine
from .engine.client import DEFAULT_HOST
from .errors import BakeError, RegistryError
from .settings import HostEnv, Settings, config_path, load_settings
from .templates import find_template

__all__ = ["Check", "run_checks"]



@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: ``fix`` is a command to run when ``ok`` is false."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "ok": self.ok, "detail": self.detail,
                                "fix": self.fix or None}
        if self.extra:
            data["extra"] = dict(self.extra)
        return data


def run_checks(*, config: str | None = None) -> list[Check]:
    """Every check, in reading order; never raises for a broken host."""
    settings, config_check, target = check_config(config)
    checks = [config_check, check_environment(settings.env)]
    engine = Engine.from_settings(settings)
    engine_check = check_engine(engine, settings.env)
    checks.append(engine_check)
    checks.append(check_buildkit(settings, target=target))
    checks.append(check_base_image(settings, engine, engine_ok=engine_check.ok, target=target))
    checks.append(check_confinement(settings, engine, engine_ok=engine_check.ok))
    checks.append(check_bridge_neighbours(engine, engine_ok=engine_check.ok))
    checks.append(check_allowlist_addresses(settings))
    checks.append(check_registry(settings, engine))
    return checks


def refused_addresses(settings: Settings) -> dict[str, list[str]]:
    """Allowlisted names whose addresses the proxy would refuse, as it would judge them.

    Some hosts reach the package index through a gateway in a private or
    documentation range (or through a TLS-intercepting one); the proxy then refuses
    the resolved address unless ``egress.allow_cidrs`` names it.
    """
    policy = settings.egress_policy
    refused: dict[str, list[str]] = {}
    for name in settings.egress.allow:
        if name.startswith("*"):
            continue
        try:
            # As the proxy resolves it: IDNA 2008, the hosts file, else the absolute name.
            addresses = sorted(set(resolve_absolute(normalize_host(name), 443)))
        except (OSError, ValueError):
            continue
        bad = [a for a in addresses if not policy.check_address(a).allowed]
        if bad:
            refused[name] = bad
    return refused


def check_allowlist_addresses(settings: Settings) -> Check:
    try:
        refused = refused_addresses(settings)
    except BakeError as exc:
        return Check("allowlist", False, exc.message, fix=exc.hint or "")
    if not refused:
        return Check("allowlist", True, "the allowlisted names resolve to addresses the "
                     "proxy may dial (or do not resolve here)")
    cidrs = sorted({f"{a}/{32 if '.' in a else 128}" for bad in refused.values() for a in bad})
    names = ", ".join(f"{n} -> {' '.join(a)}" for n, a in refused.items())
    return Check(
        "allowlist", False,
        f"the proxy would refuse these non-public addresses of allowlisted names: {names}",
        fix="if this network really reaches the index through them, add to the seller "
            f"config: [egress] allow_cidrs = {cidrs!r}".replace("'", '"'),
    )


# -- seller config -------------------------------------------------------------------------


def check_config(config: str | None) -> tuple[Settings, Check, str]:
    """Load the seller config; on failure go on with defaults so the other checks still run.

    Also returns where a seller should write a setting: the file in use, else the
    per-user default location.
    """
    xdg = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    target = config or os.environ.get("BAKE_CONFIG") or f"{xdg}/bake/config.toml"
    try:
        path, why = config_path(config)
        settings = load_settings(config)
    except BakeError as exc:
        return Settings(), Check(
            "config", False, exc.message,
            fix=f"edit {target}: {exc.hint}" if exc.hint else f"edit {target} (see DESIGN.md "
            "\"Seller configuration\")",
        ), target
    if path is None:
        detail = ("no config file (looked in --config, $BAKE_CONFIG, $XDG_CONFIG_HOME/bake/"
                  "config.toml, /etc/bake/config.toml): every setting is its default")
    else:
        detail = f"{path} (chosen by {why})"
    sources = tuple(sorted(settings.sources.items()))
    if sources:
        detail += "; " + ", ".join(f"{name} from {source}" for name, source in sources)
        detail += "; the rest are defaults"
    return settings, Check("config", True, detail, extra=sources), str(path or target)


# -- Docker Engine ---------------------------------------------------------------------------


def check_environment(env: HostEnv) -> Check:
    """The seller's environment variables bake reads, and which one gave each (never a token)."""
    shown = []
    for name, source in sorted(env.sources.items()):
        if source == "unset":
            continue
        value = getattr(env, name)
        text = "(set, not shown)" if name == "hf_token" else str(value)
        shown.append(f"{name} = {text} from {source}")
    detail = "; ".join(shown) if shown else "none of HF_TOKEN, HF_ENDPOINT, DOCKER_HOST, " \
        "DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, DOCKER_CONFIG is set"
    return Check("environment", True, detail, extra=tuple(sorted(env.sources.items())))


def engine_fix(env: HostEnv) -> str:
    """The command that gets an Engine answering, for this host's situation."""
    host = env.docker_host
    if host and host != DEFAULT_HOST:
        return (f"unset DOCKER_HOST   # it points at {host}, where no Docker Engine answers; "
                "or start the engine there")
    if shutil.which("dockerd") is None:
        return ("apt-get install -y docker.io && (dockerd > /var/log/dockerd.log 2>&1 &)"
                "   # as root")
    return "dockerd > /var/log/dockerd.log 2>&1 &   # as root; or: systemctl start docker"


def check_engine(engine: Engine, env: HostEnv) -> Check:
    try:
        data = engine.version()
    except BakeError as exc:
        return Check("engine", False, exc.message, fix=engine_fix(env))
    version = str(data.get("Version", "?"))
    api = str(data.get("ApiVersion", "?"))
    detail = f"Docker Engine {version} (API {api}) at {engine.address.describe()}"
    if _version_tuple(api) < (1, 41):
        return Check("engine", False, detail + "; bake needs API 1.41 (Engine 20.10) or newer",
                     fix="apt-get install -y docker.io   # Debian's Engine 20.10 or newer")
    return Check("engine", True, detail)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


# -- BuildKit CLI ----------------------------------------------------------------------------


def check_buildkit(settings: Settings, *, target: str) -> Check:
    configured = settings.build.docker_cli
    try:
        cli = find_cli(configured, settings.env.docker_config)
    except BakeError as exc:
        if configured:
            # Would bake find one by itself?  Then the setting is what is wrong.
            try:
                auto = find_cli("", settings.env.docker_config)
            except BakeError:
                auto = None
            if auto is not None:
                fix = (f"set build.docker_cli = \"{auto.path}\" in {target} (or remove the "
                       "setting: bake finds that one by itself)")
                return Check("buildkit", False, exc.message, fix=fix)
        fix = ("apt-get install -y docker.io   # its /usr/bin/docker speaks BuildKit; or install "
               f"the docker buildx plugin, or set build.docker_cli in {target}")
        return Check("buildkit", False, exc.message, fix=fix)
    return Check("buildkit", True, cli.describe())


# -- base image ------------------------------------------------------------------------------


def check_base_image(settings: Settings, engine: Engine, *, engine_ok: bool,
                     target: str) -> Check:
    try:
        base = find_template("python", settings.build.templates).default_base
    except BakeError as exc:
        return Check("base image", False, f"cannot read the python template: {exc.message}",
                     fix="reinstall bake: .venv/bin/pip install -e .")
    if not settings.base_allowed(base):
        return Check(
            "base image", False,
            f"the python template's default base {base} is not in build.bases "
            f"({', '.join(settings.build.bases) or 'none'}): jobs that name no base are refused",
            fix=f"add a pattern for it to build.bases in {target}, e.g. "
            f"bases = [\"{base.split(':')[0]}:*\"]",
        )
    if not engine_ok:
        return Check("base image", False, f"cannot look for {base}: the Docker Engine does not "
                     "answer", fix=engine_fix(settings.env))
    try:
        info = engine.inspect_image(base)
    except BakeError as exc:
        return Check("base image", False, exc.message, fix=engine_fix(settings.env))
    if info is None:
        return Check(
            "base image", False,
            f"{base} (the python template's default base) is not on this engine",
            fix=f"bake base build --tag {shlex.quote(base)}   # from Debian packages, no "
            f"registry needed; or: docker pull {shlex.quote(base)}",
        )
    size = int(info.get("Size") or 0) >> 20
    return Check("base image", True, f"{base} is present ({str(info.get('Id', ''))[:19]}, "
                 f"{size} MiB)")


# -- confinement -----------------------------------------------------------------------------


def check_confinement(settings: Settings, engine: Engine, *, engine_ok: bool) -> Check:
    required = settings.egress.enforce == "require"
    if not settings.egress.allow and not settings.egress.allow_http:
        return Check("confinement", True, "egress.allow is empty: setup steps run with "
                     "--network=none, nothing to confine")
    if not engine_ok:
        return Check("confinement", not required,
                     "cannot check: the Docker Engine does not answer",
                     fix=engine_fix(settings.env) if required else "")
    if not lockdown.locked_rules_present(engine):
        detail = "bake's firewall rules are not installed: setup steps can reach any address"
        if required:
            return Check("confinement", False,
                         detail + "; with egress.enforce = \"require\" every build is refused",
                         fix="bake egress lock   # as root; `bake egress status` proves it")
        return Check("confinement", True,
                     detail + " (egress.enforce = \"warn\": builds run with advisory egress; "
                     "`bake egress lock` as root confines them)")
    try:
        canary = find_template("python", settings.build.templates).default_base
        proof = lockdown.status(engine, canary)
    except BakeError as exc:
        # The rules are in place but the canary could not run (no base image, no python3).
        return Check("confinement", True,
                     f"bake's firewall rules are installed; not proven by a canary: {exc.message}")
    if proof.enforced:
        return Check("confinement", True, f"confined: {proof.detail}")
    return Check("confinement", not required, f"rules installed but not effective: {proof.detail}",
                 fix="bake egress unlock && bake egress lock   # as root; then bake egress status")


def check_bridge_neighbours(engine: Engine, *, engine_ok: bool) -> Check:
    """The seller's own containers on the default bridge, and what the lock does to them.

    A notice, never a failure: the lock confines the whole bridge (build steps
    cannot join another network), and the seller decides where their containers go.
    """
    if not engine_ok:
        return Check("docker0 containers", True,
                     "cannot list them: the Docker Engine does not answer")
    return Check("docker0 containers", True,
                 lockdown.neighbours_note(engine, locked=lockdown.locked_rules_present(engine)))


# -- registry ------------------------------------------------------------------------------

# A tag no one pushes: the registry answering "no such manifest" proves the address,
# the scheme the Engine uses and the credentials, with nothing fetched.
_PROBE_TAG = "bake-doctor-probe"


def check_registry(settings: Settings, engine: Engine) -> Check:
    """Ask the registry for a manifest the way builds do (``Registry.exists``)."""
    repository = settings.registry.repository
    if not repository:
        return Check("registry", True, "not configured: images stay on this engine "
                     "(set registry.repository to share them)")
    host = split_image(f"{repository}:{_PROBE_TAG}").host
    source = settings.source("registry.repository")
    try:
        Registry(settings, engine).exists(f"{repository}:{_PROBE_TAG}")
    except RegistryError as exc:
        if exc.unreachable:
            fix = (f"start the registry (e.g. docker-registry serve CONFIG, with http.addr "
                   f"{host}) or correct registry.repository in {source}")
        else:
            fix = exc.hint or f"check the registry at {host}"
        return Check("registry", False, exc.message, fix=fix)
    except BakeError as exc:  # the Engine's registry settings could not be read
        return Check("registry", False, exc.message, fix=exc.hint or engine_fix(settings.env))
    return Check("registry", True, f"{host} answers and lets bake look up images; they are "
                 f"shared as {repository}:<key>")

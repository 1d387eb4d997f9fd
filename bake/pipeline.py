"""The only module that knows the order of the stages, for every verb.

Each verb, read top to bottom, is one job's way through the stages::

    build    lookup -> local hit? -> plan_job -> key lock -> local hit? -> registry pull?
             -> execute: write the context, prove confinement, start the proxy,
                BuildKit, self-check, tag <repo>:<key> -> push
    run      build (or take a baked image by name) -> runner
    key      lookup
    render   lookup -> the planned build context, written out
    pull     lookup -> key lock -> registry fetch
    push     lookup -> registry push
    prebake  per variant: lookup -> in the registry or here? -> build

:func:`bake.lookup.lookup` is the first act (settings, spec, resolve, key,
local hit), shared with the fast path.  :func:`plan_job` is pure: everything a
build will do -- the rendered context, labels, secrets, the egress policy, the
cache sources, the self-check, the docker argv -- is one :class:`JobPlan`, and
every check that can fail on configuration fails there, before a lock is
taken, a registry asked or a proxy started.  :func:`execute` then does it.
The services (``builder``, ``cache``, ``egress``, ``runner``, ``prebake``) are
called from here and never call back.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from .builder.buildkit import BuildPlan, DockerCLI, find_cli, plan_build, run_build
from .builder.render import BuildContext, render
from .cache.key import ImageKey, compute_key
from .cache.registry import Registry
from .cache.store import key_lock, record_use
from .egress import lockdown
from .egress.policy import EgressPolicy
from .egress.proxy import ProxyLimits, RunningProxy
from .egress.relay import INDEX_PATH, IndexRelay
from .engine import Engine
from .errors import (
    BakeError,
    ConfigError,
    ConfinementError,
    EngineError,
    Interrupted,
    RegistryError,
    RunError,
    UsageError,
)
from .job import ResolvedJob
from .lookup import Lookup, lookup
from .prebake import Outcome, twin_job, variant_spec
from .runner import RunResult, image_job, run_job, self_check, spec_job
from .settings import Settings, load_settings
from .spec import JobSpec
from .state import state_dir
from .templates import Template, Variant, find_template, list_templates
from .types import BuildResult, NullReporter, Reporter

__all__ = [
    "JobPlan",
    "Secret",
    "build",
    "execute",
    "key",
    "plan_job",
    "prebake",
    "pull",
    "push",
    "render_to",
    "run",
    "step_pip_config",
]

_DEFAULT_HUB = "https://huggingface.co"


# --- the plan: pure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A BuildKit secret: in no layer and no history.  ``text`` is written into the build's
    private folder; ``path`` is a host file passed as it is (the seller's CA bundle)."""

    name: str
    text: str | None = field(default=None, repr=False)  # tokens live here: never shown
    path: Path | None = None


@dataclass(frozen=True)
class JobPlan:
    """Everything one build will do.  Tests and benchmarks hold this, never a copy of it."""

    key: ImageKey
    image: str  # <repository>:<key>
    job: ResolvedJob
    context: BuildContext
    labels: Mapping[str, str]
    secrets: tuple[Secret, ...]
    #: What setup steps may reach, with the proxy's own address refused; ``None``: nothing
    #: at all (``docker build --network=none``, no proxy).
    policy: EgressPolicy | None
    #: The seller's index, credentials and all, which only the proxy holds: steps get a
    #: relay URL on the proxy in their pip config (``bake_pip``), written once it listens.
    relay: IndexRelay | None
    enforce: bool  # egress.enforce = "require": refuse to build without proof
    setup_timeout: float
    cli: DockerCLI
    engine_env: Mapping[str, str]
    #: Images whose layers BuildKit may reuse (``--cache-from``), when the engine or the
    #: registry has them: asked at execution, so that planning does no I/O.
    cache_candidates: tuple[str, ...]
    no_cache: bool
    #: The offline check of the baked models and datasets runs after the build.
    self_check: bool

    def pip_config(self, proxy_url: str | None) -> str:
        """The steps' pip config once the proxy listens at ``proxy_url``.  Pure."""
        relay_url = (proxy_url.rstrip("/") + INDEX_PATH
                     if self.relay is not None and proxy_url is not None else None)
        ca = any(s.name == "bake_ca" for s in self.secrets)
        return step_pip_config(relay_url, ca_bundle=ca)

    def write(self, work: Path, *, proxy_url: str | None) -> None:
        """Write the build context and the secrets into the build's private folder."""
        self.context.write(work / "context")
        folder = work / "secrets"
        folder.mkdir(mode=0o700)
        for secret in self.secrets:
            text = self.pip_config(proxy_url) if secret.name == "bake_pip" else secret.text
            if text is None:
                continue
            fd = os.open(folder / secret.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)

    def build_plan(self, work: Path, *, proxy_url: str | None,
                   cache_from: Sequence[str]) -> BuildPlan:
        """The exact docker argv and environment, once the build's folder, the proxy's
        address and the cache sources that exist are known.  Pure."""
        return plan_build(
            self.cli,
            work / "context",
            iidfile=work / "iid",
            labels=self.labels,
            proxy_url=proxy_url,
            no_network=self.policy is None,
            secrets={s.name: s.path if s.path is not None else work / "secrets" / s.name
                     for s in self.secrets},
            no_cache=self.no_cache,
            cache_from=cache_from,
            inline_cache=True,
            engine_env=self.engine_env,
        )


def plan_job(found: Lookup, *, cli: DockerCLI, gateway: str | None,
             no_cache: bool = False) -> JobPlan:
    """The plan of one build.  Pure: ``cli`` (:func:`find_cli`) and ``gateway`` (the
    bridge's host address, where the proxy will listen; ``None`` when setup has no
    network) are asked by the caller."""
    cfg, job = found.settings, found.job
    policy = None
    if not cfg.no_network:
        if gateway is None:
            raise ValueError("a build that reaches the network needs the bridge's gateway")
        policy = cfg.egress_policy.with_own_addresses([gateway])
    relay = None
    if cfg.build.pip_index_url:
        relay = IndexRelay.from_url(cfg.build.pip_index_url, ca_bundle=cfg.build.ca_bundle)
        if policy is not None:
            relay.check_allowed(policy)
    twin = twin_job(job)
    cache = () if no_cache or twin is None else (
        compute_key(twin).image(cfg.image_repository),)
    return JobPlan(
        key=found.key,
        image=found.image,
        job=job,
        context=_context(job, cfg),
        labels={
            "bake.key": found.key.digest,
            "bake.manifest": found.key.label(),
            "bake.template": job.template.name,
            "org.opencontainers.image.title": job.spec.name or job.template.name,
            "org.opencontainers.image.base.name": job.base_ref,
            "org.opencontainers.image.base.digest": job.base_digest,
        },
        secrets=_secrets(cfg, job),
        policy=policy,
        relay=relay,
        enforce=cfg.egress.enforce == "require",
        setup_timeout=float(cfg.egress.setup_timeout),
        cli=cli,
        engine_env=found.engine.address.cli_env(),
        cache_candidates=cache,
        no_cache=no_cache,
        self_check=bool(job.hub_repos),
    )


def _context(job: ResolvedJob, cfg: Settings) -> BuildContext:
    return render(job, ca_bundle=bool(cfg.build.ca_bundle), hub_token=bool(cfg.env.hf_token))


def step_pip_config(relay_index_url: str | None, *, ca_bundle: bool) -> str:
    """The pip config of the build steps.  Pure.

    Steps run buyer code, so it names no seller secret: with ``build.pip_index_url``
    set, the index is the egress proxy's relay (``relay_index_url``, plain HTTP on
    the bridge, hence trusted), which adds the credentials itself.
    """
    lines = ["[global]"]
    if relay_index_url:
        lines.append(f"index-url = {relay_index_url}")
        lines.append(f"trusted-host = {urlsplit(relay_index_url).netloc}")
    if ca_bundle:
        lines.append("cert = /run/secrets/bake_ca")
    return "\n".join(lines) + "\n"


def _secrets(cfg: Settings, job: ResolvedJob) -> tuple[Secret, ...]:
    """Seller settings for the steps, as BuildKit secrets: in no layer, no history.

    ``bake_pip`` (the steps' pip config) is written once the proxy listens: it names
    the proxy's relay of the seller's index (:meth:`JobPlan.pip_config`).
    """
    secrets = [Secret("bake_pip")]
    if cfg.build.ca_bundle:
        secrets.append(Secret("bake_ca", path=Path(cfg.build.ca_bundle)))
    if job.hub_repos:
        endpoint = cfg.hub_endpoint or _DEFAULT_HUB
        _check_hub_egress(cfg, endpoint)
        secrets.append(Secret("bake_hf_endpoint", text=endpoint))
        if cfg.env.hf_token:
            secrets.append(Secret("hf_token", text=cfg.env.hf_token))
    return tuple(secrets)


def _check_hub_egress(cfg: Settings, endpoint: str) -> None:
    """Refuse a build whose fetch steps could not reach the Hub through the egress proxy.

    Without this the proxy's 403 surfaces minutes later, inside a fetch step, as
    "the Hub answered HTTP 403" (the client cannot tell the proxy from the Hub).
    """
    parts = urlsplit(endpoint)
    if parts.scheme == "http":
        allowed = cfg.egress_policy.check_http(f"{parts.scheme}://{parts.netloc}/").allowed
        where = f'egress.allow_http (as "{parts.scheme}://{parts.netloc}")'
    else:
        allowed = cfg.egress_policy.check_connect(f"{parts.hostname}:{parts.port or 443}").allowed
        where = f'egress.allow (as "{parts.hostname}")'
    if not allowed:
        raise ConfigError(
            f"the job fetches from the Hub at {endpoint}, which the egress settings do not allow",
            field="build.hf_endpoint",
            hint=f"add it to {where}, or point build.hf_endpoint at an allowed mirror",
        )


# --- the verbs -----------------------------------------------------------------------------------


def _settings(settings: Settings | None, config: str | None) -> Settings:
    return settings if settings is not None else load_settings(config)


def key(spec: str | Path | JobSpec, *, settings: Settings | None = None,
        config: str | None = None) -> ImageKey:
    """The image key of a job spec (and, in ``.manifest``, why)."""
    return lookup(spec, _settings(settings, config)).key


def render_to(spec: str | Path, out: Path, *, settings: Settings | None = None,
              config: str | None = None) -> Path:
    """Write the Dockerfile and the exact build context of a spec into ``out``."""
    cfg = _settings(settings, config)
    found = lookup(spec, cfg)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty", hint="render into a new or empty folder")
    return _context(found.job, cfg).write(out)


def build(
    spec: str | Path | JobSpec,
    *,
    settings: Settings | None = None,
    config: str | None = None,
    push: bool | None = None,
    no_cache: bool = False,
    reporter: Reporter | None = None,
) -> BuildResult:
    """Bake the image of a job: a key hit, a registry pull, or one BuildKit build."""
    started = time.monotonic()
    found = lookup(spec, _settings(settings, config))
    return _bake(found, started=started, push=push, no_cache=no_cache,
                 report=reporter or NullReporter())


def _bake(found: Lookup, *, started: float, push: bool | None, no_cache: bool,
          report: Reporter) -> BuildResult:
    cfg, image, digest = found.settings, found.image, found.key.digest

    def elapsed() -> float:
        return round(time.monotonic() - started, 3)

    if found.present and not no_cache:
        record_use(digest)
        return BuildResult(image, digest, elapsed(), cached=True)
    plan = plan_job(
        found,
        cli=find_cli(cfg.build.docker_cli, cfg.env.docker_config),
        gateway=None if cfg.no_network else found.engine.bridge_gateway(),
        no_cache=no_cache,
    )
    registry = Registry(cfg, found.engine) if cfg.registry.repository else None
    with key_lock(digest, on_wait=lambda: report.stage("another build of this key is "
                                                        "running; waiting")):
        if not no_cache and found.engine.has_image(image):
            record_use(digest)
            return BuildResult(image, digest, elapsed(), cached=True)
        if registry is not None and not no_cache and registry.pull(image, report):
            record_use(digest)
            return BuildResult(image, digest, elapsed(), pulled=True)
        egress, egress_log, summary = execute(plan, found.engine, registry, report)
        record_use(digest)
        pushed = False
        if registry is not None and (cfg.registry.push if push is None else push):
            pushed = registry.push(image, report)
        return BuildResult(image, digest, elapsed(), built=True, pushed=pushed, egress=egress,
                           egress_log=egress_log, egress_summary=summary)


def execute(plan: JobPlan, engine: Engine, registry: Registry | None,
            report: Reporter) -> tuple[str, str | None, str | None]:
    """Carry out a plan; returns (egress mode, egress log path, egress summary).

    Nothing is tagged unless the build and its self-check succeed; a failed,
    timed-out or interrupted build leaves no image and no proxy behind.
    """
    cache_from = [ref for ref in plan.cache_candidates if _cache_source(ref, engine, registry)]
    egress_dir = state_dir() / "egress"
    egress_dir.mkdir(parents=True, exist_ok=True)
    log_path = egress_dir / f"{plan.key.digest[:16]}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    with tempfile.TemporaryDirectory(prefix="bake-build-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        with _setup_window(plan, engine, log_path, report) as (proxy, egress):
            plan.write(work, proxy_url=proxy.url if proxy else None)
            build_plan = plan.build_plan(work, proxy_url=proxy.url if proxy else None,
                                         cache_from=cache_from)
            report.stage(f"building {plan.key.short} with {plan.cli.describe()}")
            image_id = run_build(build_plan, timeout=plan.setup_timeout, on_line=report.log)
            summary = proxy.stats().one_line() if proxy is not None else None
        try:
            if plan.self_check:
                report.stage("checking the baked models and datasets offline")
                for line in self_check(engine, image_id, plan.job).splitlines():
                    report.log(line)
            repository, _, tag = plan.image.rpartition(":")
            engine.tag_image(image_id, repository, tag)
        except BaseException:
            with contextlib.suppress(EngineError):
                engine.remove_image(image_id, force=True)
            raise
    if summary:
        report.stage(summary)
    return egress, (str(log_path) if proxy is not None else None), summary


def _cache_source(ref: str, engine: Engine, registry: Registry | None) -> bool:
    """Is ``ref`` there for BuildKit to reuse?  Asking first keeps BuildKit from trying a
    source that is not there, or a registry that is down (the pull has warned of it)."""
    if engine.has_image(ref):
        return True
    if registry is None:
        return False
    try:
        return registry.exists(ref)
    except RegistryError:
        return False


@contextlib.contextmanager
def _setup_window(plan: JobPlan, engine: Engine, log_path: Path,
                  report: Reporter) -> Iterator[tuple[RunningProxy | None, str]]:
    """Prove the host confines build steps to bake's proxy, start this build's proxy,
    close it after."""
    if plan.policy is None:
        # `docker build --network=none`: no route out at all, nothing to prove.
        yield None, "offline"
        return
    gateway = engine.bridge_gateway()
    # The proof runs against a deny-all proxy of its own, so that the build's
    # egress log holds only what the build's steps asked for.
    report.stage("proving that build steps reach nothing but bake's proxy")
    proof = lockdown.prove_recent(engine, plan.job.base_from, gateway)
    if proof.enforced:
        egress = "enforced"
    elif plan.enforce:
        raise ConfinementError(
            f"build steps on this host are not confined to bake's proxy ({proof.detail})",
            hint="run `bake egress lock` as root, or set egress.enforce = \"warn\" "
            "to build with advisory egress",
        )
    else:
        egress = "advisory"
        report.warn(f"egress is advisory: {proof.detail}; `bake egress lock` confines it")
    limits = ProxyLimits(max_tunnel_seconds=plan.setup_timeout)
    with lockdown.start_build_proxy(plan.policy, gateway, log_path=log_path, limits=limits,
                                    relay=plan.relay) as proxy:
        yield proxy, egress


def run(
    spec_or_image: str | Path,
    *,
    args: Sequence[str] = (),
    output: Path | None = None,
    nodes: int | None = None,
    settings: Settings | None = None,
    config: str | None = None,
    reporter: Reporter | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
) -> RunResult:
    """Build if needed, then run the job offline and hardened; ``nodes`` overrides
    ``[run] nodes`` (N containers on a network of the job's own)."""
    cfg = _settings(settings, config)
    engine = Engine.from_settings(cfg)
    target = str(spec_or_image)
    path = Path(target)
    if path.is_dir() or path.suffix == ".toml" or path.exists():
        found = lookup(path, cfg, engine=engine)
        built = _bake(found, started=time.monotonic(), push=None, no_cache=False,
                      report=reporter or NullReporter())
        plan = spec_job(built.image, found.spec, args=args, output=output)
    else:
        plan = image_job(engine, target, args=args, output=output)
    plan = plan.with_nodes(nodes)
    if not engine.has_image(plan.image):
        raise RunError(f"image {plan.image} is not on this engine",
                       hint="build it first (bake build SPEC) or pull it")
    if plan.key:
        record_use(plan.key)
    return run_job(engine, plan, stdout=stdout, stderr=stderr)


def pull(spec: str | Path | JobSpec, *, settings: Settings | None = None,
         reporter: Reporter | None = None) -> str:
    """``bake pull SPEC``: fetch the image of the spec's key; never builds."""
    cfg = _settings(settings, None)
    report = reporter or NullReporter()
    found = lookup(spec, cfg)
    registry = Registry.configured(cfg, found.engine)
    waiting = "another bake is building or pulling this key; waiting"
    with key_lock(found.key.digest, on_wait=lambda: report.stage(waiting)):
        if found.engine.has_image(found.image):
            report.stage(f"{found.image} is already on this engine")
        else:
            if not registry.exists(found.image):
                raise RegistryError(
                    f"{found.image} is not in the registry",
                    hint="bake it once (bake build SPEC --push) on any machine of the fleet",
                )
            registry.fetch(found.image, report)
    record_use(found.key.digest)
    return found.image


def push(spec: str | Path | JobSpec, *, settings: Settings | None = None,
         reporter: Reporter | None = None) -> str:
    """``bake push SPEC``: publish the local image of the spec's key."""
    cfg = _settings(settings, None)
    found = lookup(spec, cfg)
    registry = Registry.configured(cfg, found.engine)
    if not found.present:
        raise RegistryError(f"{found.image} is not on this engine, so there is nothing to push",
                            hint="build it first: bake build SPEC (or bake build SPEC --push)")
    if not registry.push(found.image, reporter or NullReporter()):
        raise RegistryError(f"{found.image} was not pushed: {registry.unreachable}",
                            hint="start the registry or correct registry.repository, then "
                            "push again")
    return found.image


def prebake(
    templates: Sequence[str],
    *,
    settings: Settings | None = None,
    push: bool = False,
    base: str | None = None,
    reporter: Reporter | None = None,
) -> list[Outcome]:
    """Bake every variant of ``templates`` (all templates when empty); one outcome each.

    A variant that fails is reported and the others go on.  With ``push``, a
    variant already in the registry is "present" (not pulled: CI publishes, it
    does not need a local copy), one present only locally is pushed.
    """
    cfg = _settings(settings, None)
    report = reporter or NullReporter()
    names = list(templates) or list_templates(cfg.build.templates)
    # Every name is checked before anything is baked: a typo costs nothing.
    found_templates = [find_template(name, cfg.build.templates) for name in names]
    engine = Engine.from_settings(cfg)
    registry = Registry.configured(cfg, engine) if push else None
    outcomes: list[Outcome] = []
    for template in found_templates:
        if not template.variants:
            report.warn(f"template {template.name!r} declares no variants: nothing to prebake")
        outcomes += [_prebake_variant(template, variant, cfg, engine, registry, base, report)
                     for variant in template.variants]
    return outcomes


def _prebake_variant(template: Template, variant: Variant, cfg: Settings, engine: Engine,
                     registry: Registry | None, base: str | None, report: Reporter) -> Outcome:
    started = time.monotonic()
    report.stage(f"prebaking {template.name}/{variant.name}")

    def outcome(kind: str, image: str | None, *, error: str = "",
                pushed: bool = False) -> Outcome:
        return Outcome(template.name, variant.name, kind, image, error=error, pushed=pushed,
                       duration_s=round(time.monotonic() - started, 3))

    image: str | None = None
    try:
        found = lookup(variant_spec(template, variant, base=base), cfg, engine=engine)
        image = found.image
        if registry is not None:
            if registry.exists(image):
                return outcome("present", image)
            if found.present:
                record_use(found.key.digest)
                return outcome("present", image, pushed=registry.push(image, report))
        built = _bake(found, started=started, push=registry is not None, no_cache=False,
                      report=report)
    except Interrupted:
        raise
    except BakeError as exc:
        report.warn(f"prebake {template.name}/{variant.name} failed: {exc.message}")
        return outcome("failed", image, error=exc.message)
    kind = "present" if built.cached else "pulled" if built.pulled else "built"
    return outcome(kind, built.image, pushed=built.pushed)

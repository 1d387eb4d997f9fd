"""The only module that knows the order of the stages, for every verb.

Each verb, read top to bottom, is one job's way through the stages::

    build    lookup -> local hit? -> plan_job -> key lock -> local hit? -> registry pull?
             -> the best stack (this engine's, or pulled from the registry; else the base)
             -> execute: write the context, prove confinement, start the proxy,
                BuildKit, self-check, tag <repo>:<key> (a stack gone meanwhile: again, on
                the base) -> build.stacks = "images": keep the deps as a stack -> push
    run      build (or take a baked image by name) -> runner
    key      lookup
    lock     lookup (the shipped bake.lock aside; --upgrade: resolve again) -> bake.lock
    render   lookup -> the planned build context, written out
    pull     lookup -> key lock -> registry fetch
    push     lookup -> registry push
    prebake  per variant: lookup -> in the registry or here? -> build its stack
             (its deps stage alone, named by what it holds)

:func:`bake.lookup.lookup` is the first act (settings, spec, resolve, lock, key,
local hit), shared with the fast path.  Its lock stage asks the resolvers this
module passes in (:func:`_resolvers`) only when neither a shipped ``bake.lock`` nor
a fresh resolver cache entry answers: the requirements are resolved by
:func:`resolve_requirements`, a setup step of its own planned like a build
(:func:`plan_resolve` -> :class:`ResolvePlan`, pure) and run in its own setup
window (proof of confinement, a proxy of its own, ``docker build --output
type=local``, closed after); the Hub repos by the Hub client
(:func:`bake.lock.locking.hub_locker`).  :func:`plan_job` is pure: everything a
build will do -- the rendered context, labels, secrets, the egress policy, the
cache sources, the self-check, the docker argv -- is one :class:`JobPlan`, and
every check that can fail on configuration fails there, before a lock is
taken, a registry asked or a proxy started.  :func:`execute` then does it.
The services (``builder``, ``cache``, ``egress``, ``runner``, ``prebake``) are
called from here and never call back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from .builder.buildkit import BuildPlan, DockerCLI, find_cli, plan_build, run_build
from .builder.render import BuildContext, render
from .cache.key import ImageKey, compute_key, explain
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
    SetupError,
    UnreachableError,
    UsageError,
)
from .job import ResolvedJob
from .lock.format import (
    DEFAULT_INDEX,
    LOCK_NAME,
    Lock,
    PythonLock,
    PythonRequest,
    python_from_doc,
    write_lock,
)
from .lock.locking import Resolvers, hub_locker, lock_path, resolver_cache
from .lock.python import read_result, resolve_context
from .lookup import Lookup, lookup
from .prebake import Outcome, twin_job, variant_spec
from .runner import RunResult, image_job, run_job, self_check, spec_job
from .settings import Settings, load_settings
from .spec import JobSpec
from .stacks.choice import (
    Choice,
    Held,
    Need,
    Stack,
    choose,
    need_of,
    preferred_pins,
    stacks_mode,
    variant_may_fit,
)
from .stacks.discover import engine_stacks, registry_stacks
from .stacks.labels import MAX_STACK_LABEL, encode_held, read_stack, stack_labels
from .stacks.wheelhouse import NONCE_ARG
from .state import state_dir
from .templates import Template, Variant, find_template, list_templates
from .types import BuildResult, NullReporter, Reporter

__all__ = [
    "JobPlan",
    "LockResult",
    "ResolvePlan",
    "Secret",
    "build",
    "execute",
    "execute_resolve",
    "explain_key",
    "key",
    "lock",
    "plan_job",
    "plan_resolve",
    "plan_stack",
    "prebake",
    "pull",
    "push",
    "render_to",
    "resolve_requirements",
    "run",
    "step_index_url",
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
    #: A credential: should a step print it, bake's output shows ``[redacted]`` instead.
    credential: bool = False


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
    #: Where the deps layer starts (a stack, or the base) and the wheels it installs.
    on: Choice = field(default_factory=lambda: Choice(None, ()))
    #: The stage to build: None, the job's image; "deps", a stack (``bake prebake``).
    target: str | None = None

    def pip_config(self, proxy_url: str | None) -> str:
        """The steps' pip config once the proxy listens at ``proxy_url``.  Pure."""
        return _late_texts(self.relay, proxy_url, self.secrets)["bake_pip"]

    def write(self, work: Path, *, proxy_url: str | None) -> None:
        """Write the build context and the secrets into the build's private folder."""
        _write_work(work, self.context, self.secrets,
                    _late_texts(self.relay, proxy_url, self.secrets))

    def build_plan(self, work: Path, *, proxy_url: str | None,
                   cache_from: Sequence[str], nonce: str = "") -> BuildPlan:
        """The exact docker argv and environment, once the build's folder, the proxy's
        address and the cache sources that exist are known.  Pure.  ``nonce`` runs the
        wheelhouse step again (:mod:`bake.stacks.wheelhouse`): a new one every build."""
        return plan_build(
            self.cli,
            work / "context",
            iidfile=work / "iid",
            labels=self.labels,
            proxy_url=proxy_url,
            no_network=self.policy is None,
            secrets={s.name: s.path if s.path is not None else work / "secrets" / s.name
                     for s in self.secrets},
            # Not BuildKit's --no-cache: it would empty the wheelhouse, a cache every job on
            # the engine shares.  BAKE_NO_CACHE, declared in every stage, runs every step.
            cache_from=() if self.no_cache else cache_from,
            inline_cache=True,
            engine_env=self.engine_env,
            target=self.target,
            build_args=self._build_args(nonce),
            redact=[s.text for s in self.secrets if s.credential and s.text],
        )

    def _build_args(self, nonce: str) -> dict[str, str] | None:
        if not nonce:
            return None
        args = {NONCE_ARG: nonce} if self.on.install else {}
        if self.no_cache:
            args["BAKE_NO_CACHE"] = nonce
        return args or None


def _write_work(work: Path, context: BuildContext, secrets: Sequence[Secret],
                late: Mapping[str, str]) -> None:
    """The build context and the secrets, into a build's private folder; ``late``: the
    texts of the secrets that name the proxy (:func:`_late_texts`)."""
    context.write(work / "context")
    folder = work / "secrets"
    folder.mkdir(mode=0o700)
    for secret in secrets:
        text = late.get(secret.name, secret.text)
        if text is None:
            continue
        fd = os.open(folder / secret.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)


def plan_job(found: Lookup, *, cli: DockerCLI, gateway: str | None,
             no_cache: bool = False, on: Choice | None = None) -> JobPlan:
    """The plan of one build.  Pure: ``cli`` (:func:`find_cli`), ``gateway`` (the
    bridge's host address, where the proxy will listen; ``None`` when setup has no
    network) and ``on`` (the stack the deps start from, :func:`_choose_stack`; by default
    the base) are asked by the caller."""
    cfg, job = found.settings, found.job
    on = on if on is not None else _on_base(found)
    policy = None
    if not cfg.no_network:
        if gateway is None:
            raise ValueError("a build that reaches the network needs the bridge's gateway")
        policy = cfg.egress_policy.with_own_addresses([gateway])
    relay = _relay(cfg, policy)
    if policy is not None:
        _check_lock_egress(cfg, job.lock, relay)
    twin = twin_job(job)
    cache = () if no_cache or twin is None else (
        compute_key(twin).image(cfg.image_repository),)
    return JobPlan(
        key=found.key,
        image=found.image,
        job=job,
        context=_context(job, cfg, relay, on=on, no_cache=no_cache),
        labels={
            "bake.key": found.key.digest,
            "bake.manifest": found.key.label(),
            "bake.locked": job.lock.digest(),
            "bake.template": job.template.name,
            "org.opencontainers.image.title": job.spec.name or job.template.name,
            "org.opencontainers.image.base.name": job.base_ref,
            "org.opencontainers.image.base.digest": job.base_digest,
            # Not a stack itself (its image holds job files); the one it was built on.
            **stack_labels(None, parent=on.parent),
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
        on=on,
    )


def plan_stack(found: Lookup, *, cli: DockerCLI, gateway: str | None, on: Choice,
               variant: str = "") -> JobPlan:
    """The plan of a stack: the job's deps stage alone (``--target deps``), named by what it
    holds (``<repository>:<its stack key>``) and labelled so (:mod:`bake.stacks.labels`), so
    that later jobs may build on it.  Pure.  The context is the job's own, so that BuildKit
    answers the deps stage from the job's build when there was one.  ``variant``:
    "template/variant" when ``bake prebake`` makes it."""
    plan = plan_job(found, cli=cli, gateway=gateway, on=on)
    held = need_of(found.job).held
    if encode_held(held) is None:
        raise ConfigError(
            f"a stack of {len(held.wheels)} wheels is more than its label can name "
            f"(at most about {MAX_STACK_LABEL // 67})",
            hint="declare a smaller variant; jobs this large build on the base",
        )
    image = f"{found.settings.image_repository}:{held.key}"
    job = found.job
    return dataclasses.replace(
        plan,
        key=ImageKey(held.key, held.manifest()),
        image=image,
        labels={
            "bake.key": held.key,
            "bake.manifest": ImageKey(held.key, held.manifest()).label(),
            "bake.template": job.template.name,
            "org.opencontainers.image.title": variant or f"stack {held.key[:12]}",
            "org.opencontainers.image.base.name": job.base_ref,
            "org.opencontainers.image.base.digest": job.base_digest,
            **stack_labels(held, variant=variant, parent=on.parent),
        },
        self_check=False,
        cache_candidates=(),
        target="deps",
    )


def _context(job: ResolvedJob, cfg: Settings, relay: IndexRelay | None, *,
             on: Choice | None = None, no_cache: bool = False) -> BuildContext:
    return render(job, ca_bundle=bool(cfg.build.ca_bundle), hub_token=bool(cfg.env.hf_token),
                  relay_path=relay.relay_path if relay is not None else None, on=on,
                  no_cache=no_cache)


# --- stacks: where a job's deps layer starts ------------------------------------------------


def _on_base(found: Lookup, reason: str = "built on the base") -> Choice:
    return Choice(None, need_of(found.job).wheels, reason=reason)


def _choose_stack(found: Lookup, registry: Registry | None, report: Reporter, *,
                  no_cache: bool = False) -> Choice:
    """The best stack for the job (:func:`bake.stacks.choice.choose`) among those on this
    engine and, when a registry is configured, the prebaked variants it holds; a registry
    stack is pulled first.  Never an error: no stack, or one that cannot be pulled, is the
    base (with a warning for the latter), exactly as a build without stacks."""
    cfg = found.settings
    need = need_of(found.job)
    if no_cache:
        return _on_base(found, "--no-cache: built on the base")
    if cfg.build.stacks == "none" or not need.wheels:
        return choose(need, (), "none") if need.wheels else _on_base(found)
    candidates = engine_stacks(found.engine, cfg.image_repository)
    if registry is not None:
        def exists(image: str) -> bool:
            try:
                return registry.exists(image)
            except RegistryError:
                return False

        candidates += registry_stacks(need, _variant_holds(found, need, report),
                                      repository=cfg.image_repository, exists=exists,
                                      skip=[s.key for s in candidates])
    choice = choose(need, candidates, stacks_mode(cfg.build.stacks))
    if choice.stack is not None and choice.stack.in_registry:
        choice = _pull_stack(found, choice, choice.stack, registry, report)
    return choice


def _variant_holds(found: Lookup, need: Need,
                   report: Reporter) -> Iterator[tuple[str, Held | None]]:
    """What each prebaked variant that may fit the job holds on the job's base: its lock
    (the resolver cache, else a resolution), for variants whose declared pins the job's
    lock meets and whose template makes the same deps layer."""
    cfg, job = found.settings, found.job
    for template, variant in _stack_variants(cfg):
        if template.recipe != job.template.recipe or not variant_may_fit(
                variant.requirements, need):
            continue
        try:
            spec = variant_spec(template, variant, base=job.base_ref)
            locked = _lookup(spec, cfg, report, engine=found.engine)
        except Interrupted:
            raise
        except BakeError:
            yield f"{template.name}/{variant.name}", None
            continue
        if any(not d.is_wheel for d in locked.lock.distributions):
            continue
        yield f"{template.name}/{variant.name}", need_of(locked.job).held


def _stack_variants(cfg: Settings) -> Iterator[tuple[Template, Variant]]:
    """Every variant of the seller's templates that can be a stack (one without models);
    a template that cannot be read is passed over."""
    for name in list_templates(cfg.build.templates):
        try:
            template = find_template(name, cfg.build.templates)
        except BakeError:
            continue
        for variant in template.variants:
            if not variant.models:
                yield template, variant


def _pull_stack(found: Lookup, choice: Choice, stack: Stack, registry: Registry | None,
                report: Reporter) -> Choice:
    """Pull the chosen registry stack and check that it holds what its key says; anything
    else falls back to the base, with a warning."""
    engine = found.engine
    why = "no registry"
    if registry is not None:
        try:
            registry.fetch(stack.image, report)
        except (RegistryError, EngineError) as exc:
            why = exc.message
        else:
            info = engine.inspect_image(stack.image) or {}
            labels = (info.get("Config") or {}).get("Labels") or {}
            pulled = read_stack(stack.image, stack.key, labels)
            if pulled is not None and pulled.held == stack.held:
                record_use(stack.key)
                return dataclasses.replace(choice, stack=dataclasses.replace(
                    stack, in_registry=False))
            why = "what it was pulled as does not hold what its key says"
            with contextlib.suppress(EngineError):
                engine.remove_image(stack.image, force=True)
    report.warn(f"{stack.describe()} could not be used ({why}); building on the base")
    return _on_base(found, f"{stack.describe()} could not be pulled: built on the base")


def _keep_stack(found: Lookup, plan: JobPlan, registry: Registry | None,
                report: Reporter) -> None:
    """``build.stacks = "images"``: keep the job's deps layer as a stack for later jobs
    (its stage alone, answered from the build's cache).  A failure here is a warning."""
    job = found.job
    if any(not d.is_wheel for d in job.lock.distributions) or not need_of(job).wheels:
        return  # an sdist's build is the job's own: never shared
    stack = plan_stack(found, cli=plan.cli, gateway=_gateway(found), on=plan.on)
    if found.engine.has_image(stack.image):
        record_use(stack.key.digest)
        return
    try:
        with key_lock(stack.key.digest):
            if not found.engine.has_image(stack.image):
                execute(stack, found.engine, registry, report)
        record_use(stack.key.digest)
    except Interrupted:
        raise
    except BakeError as exc:
        report.warn(f"the deps of {plan.key.short} were not kept as a stack: {exc.message}")


def _gateway(found: Lookup) -> str | None:
    return None if found.settings.no_network else found.engine.bridge_gateway()


def _relay(cfg: Settings, policy: EgressPolicy | None) -> IndexRelay | None:
    """The seller's index as the proxy relays it (``build.pip_index_url``), checked against
    the egress settings; ``None``: the public index, reached through CONNECT."""
    if not cfg.build.pip_index_url:
        return None
    relay = IndexRelay.from_url(cfg.build.pip_index_url, ca_bundle=cfg.build.ca_bundle)
    if policy is not None:
        relay.check_allowed(policy)
    return relay


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


def step_index_url(relay: IndexRelay | None, proxy_url: str | None) -> str:
    """The index a step's uv asks: the proxy's relay of the seller's index (no credentials,
    no trace of the upstream URL), else the public index.  Pure."""
    if relay is not None and proxy_url is not None:
        return proxy_url.rstrip("/") + INDEX_PATH
    return DEFAULT_INDEX


def _late_texts(relay: IndexRelay | None, proxy_url: str | None,
                secrets: Sequence[Secret]) -> dict[str, str]:
    """The secrets that name the proxy, written once it listens: the steps' pip config
    (``bake_pip``) and the index a step's uv asks (``bake_index``)."""
    relay_url = step_index_url(relay, proxy_url) if relay is not None and proxy_url else None
    ca = any(s.name == "bake_ca" for s in secrets)
    return {"bake_pip": step_pip_config(relay_url, ca_bundle=ca),
            "bake_index": step_index_url(relay, proxy_url)}


def _secrets(cfg: Settings, job: ResolvedJob) -> tuple[Secret, ...]:
    """Seller settings for the steps, as BuildKit secrets: in no layer, no history.

    ``bake_pip`` (the steps' pip config) and ``bake_index`` are written once the proxy
    listens: they name the proxy's relay of the seller's index (:func:`_late_texts`).
    """
    secrets = [Secret("bake_pip"), Secret("bake_index")]
    if cfg.build.ca_bundle:
        secrets.append(Secret("bake_ca", path=Path(cfg.build.ca_bundle)))
    if job.hub_repos:
        endpoint = cfg.hub_endpoint or _DEFAULT_HUB
        _check_hub_egress(cfg, endpoint)
        secrets.append(Secret("bake_hf_endpoint", text=endpoint))
        if cfg.env.hf_token:
            secrets.append(Secret("hf_token", text=cfg.env.hf_token, credential=True))
    return tuple(secrets)


def _check_hub_egress(cfg: Settings, endpoint: str) -> None:
    """Refuse a build whose fetch steps could not reach the Hub through the egress proxy.

    Without this the proxy's 403 surfaces minutes later, inside a fetch step, as
    "the Hub answered HTTP 403" (the client cannot tell the proxy from the Hub).
    """
    where = _egress_refusal(cfg, endpoint)
    if where:
        raise ConfigError(
            f"the job fetches from the Hub at {endpoint}, which the egress settings do not allow",
            field="build.hf_endpoint",
            hint=f"add it to {where}, or point build.hf_endpoint at an allowed mirror",
        )


def _check_lock_egress(cfg: Settings, lock: Lock, relay: IndexRelay | None) -> None:
    """Refuse a build whose locked files live where setup steps may not go (a ``bake.lock``
    made against another index): the install step would fail on the proxy's 403.  Files on
    the seller's index come through the relay, which is checked with it."""
    for dist in lock.distributions:
        if relay is not None and relay.relay_path(dist.url) is not None:
            continue
        where = _egress_refusal(cfg, dist.url)
        if where:
            parts = urlsplit(dist.url)
            raise ConfigError(
                f"{LOCK_NAME} locks {dist.file} at {parts.scheme}://{parts.netloc}, which the "
                "egress settings do not allow",
                field="egress.allow",
                hint=f"add it to {where}, or lock the job again against this host's index "
                "(bake lock SPEC)",
            )


def _egress_refusal(cfg: Settings, url: str) -> str | None:
    """None when setup steps may reach ``url`` through the proxy; else the setting to add."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        if cfg.egress_policy.check_http(f"{parts.scheme}://{parts.netloc}/").allowed:
            return None
        return f'egress.allow_http (as "{parts.scheme}://{parts.netloc}")'
    if cfg.egress_policy.check_connect(f"{parts.hostname}:{parts.port or 443}").allowed:
        return None
    return f'egress.allow (as "{parts.hostname}")'


# --- the resolve step: plan, then execute ---------------------------------------------------------


@dataclass(frozen=True)
class ResolvePlan:
    """Everything one resolution will do: a setup step of its own that leaves no image."""

    request: PythonRequest
    context: BuildContext
    secrets: tuple[Secret, ...]
    policy: EgressPolicy | None
    relay: IndexRelay | None
    enforce: bool
    setup_timeout: float
    cli: DockerCLI
    engine_env: Mapping[str, str]

    def write(self, work: Path, *, proxy_url: str | None) -> None:
        _write_work(work, self.context, self.secrets,
                    _late_texts(self.relay, proxy_url, self.secrets))

    def build_plan(self, work: Path, *, proxy_url: str | None) -> BuildPlan:
        """The exact docker argv: the last stage's files go to ``work/out``, no image."""
        return plan_build(
            self.cli,
            work / "context",
            iidfile=work / "iid",
            labels={},
            proxy_url=proxy_url,
            no_network=self.policy is None,
            secrets={s.name: s.path if s.path is not None else work / "secrets" / s.name
                     for s in self.secrets},
            engine_env=self.engine_env,
            output=work / "out",
        )

    def upstream_url(self, url: str, proxy_url: str | None) -> str:
        """A file URL from the resolution as the lock keeps it: a relay URL (this build's
        proxy port) back to the seller's index, without its credentials.  Pure."""
        if self.relay is None or proxy_url is None or not url.startswith(proxy_url.rstrip("/")):
            return url
        upstream = self.relay.upstream_path(url[len(proxy_url.rstrip("/")):])
        return url if upstream is None else self.relay.origin + upstream


def plan_resolve(request: PythonRequest, cfg: Settings, *, cli: DockerCLI, gateway: str | None,
                 engine_env: Mapping[str, str], nonce: str,
                 constraints: tuple[str, ...] = ()) -> ResolvePlan:
    """The plan of one resolution.  Pure (``nonce`` makes each resolution a new BuildKit
    step: its cache would otherwise answer the same requirements with the same old lock).

    Mounted in the step that resolves (where an sdist's metadata build, buyer code, may
    run): the index URL -- the proxy's relay of the seller's index, which adds any
    credentials itself, else the public index -- and the CA bundle.  The tool stage,
    which sees no buyer input, gets the steps' pip config.
    """
    policy = None
    relay = None
    if not cfg.no_network:
        if gateway is None:
            raise ValueError("a resolution that reaches the network needs the bridge's gateway")
        policy = cfg.egress_policy.with_own_addresses([gateway])
        relay = _relay(cfg, policy)
        where = None if relay is not None else _egress_refusal(cfg, request.index_url)
        if where:
            raise ConfigError(
                f"the job's requirements resolve against {request.index_url}, which the egress "
                "settings do not allow",
                field="build.pip_index_url",
                hint=f"add it to {where}, or point build.pip_index_url at an allowed mirror",
            )
    secrets = [Secret("bake_pip"), Secret("bake_index")]
    if cfg.build.ca_bundle:
        secrets.append(Secret("bake_ca", path=Path(cfg.build.ca_bundle)))
    return ResolvePlan(
        request=request,
        context=resolve_context(request, ca_bundle=bool(cfg.build.ca_bundle), nonce=nonce,
                                constraints=constraints),
        secrets=tuple(secrets),
        policy=policy,
        relay=relay,
        enforce=cfg.egress.enforce == "require",
        setup_timeout=float(cfg.egress.setup_timeout),
        cli=cli,
        engine_env=engine_env,
    )


# pip's and uv's words for "the index did not answer" (the tool stage's pip, when BuildKit's
# cache no longer holds it, meets an index that is down before the resolver does).
_UNREACHABLE_LINES = ("Could not fetch URL", "Max retries exceeded", "ProxyError",
                      "Connection refused", "Failed to fetch", "tunnel error",
                      "No matching distribution found for uv")


def execute_resolve(plan: ResolvePlan, engine: Engine, report: Reporter) -> PythonLock:
    """Run a resolution in its own setup window; the lock of the requirements, or a bake
    error (:class:`~bake.errors.UnreachableError` when the index did not answer)."""
    digest = hashlib.sha256(repr(plan.request.cache_key()).encode()).hexdigest()
    log_path = _egress_log(f"resolve-{digest[:16]}")
    with tempfile.TemporaryDirectory(prefix="bake-resolve-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        with _setup_window(plan.policy, plan.enforce, plan.setup_timeout,
                           plan.request.base_from, engine, log_path, report,
                           relay=plan.relay) as (proxy, _):
            proxy_url = proxy.url if proxy else None
            plan.write(work, proxy_url=proxy_url)
            build_plan = plan.build_plan(work, proxy_url=proxy_url)
            report.stage(f"resolving {len(plan.request.requirements)} requirement(s) "
                         f"against {plan.request.index_url}")
            try:
                run_build(build_plan, timeout=plan.setup_timeout, on_line=report.log)
            except SetupError as exc:
                if type(exc) is SetupError and any(
                        marker in exc.log_tail for marker in _UNREACHABLE_LINES):
                    raise UnreachableError(
                        f"cannot reach the package index at {plan.request.index_url} "
                        f"({exc.message})", what=plan.request.index_url,
                        hint="check build.pip_index_url, egress.allow and the network",
                    ) from None
                raise
        return read_result(work / "out", plan.request,
                           url_map=lambda url: plan.upstream_url(url, proxy_url))


def resolve_requirements(request: PythonRequest, cfg: Settings, engine: Engine,
                         report: Reporter) -> PythonLock:
    """Resolve requirements to a lock: plan, then execute (the pipeline's Python resolver).

    Then, when a prebaked variant would be the job's stack but for versions the job left
    open (:func:`bake.stacks.choice.preferred_pins`), once more with the variant's pins as
    constraints: that lock is taken when it holds every wheel of the variant, else the
    first.  Only variants this machine has locked are asked (the resolver cache: prebake
    and every build that looked for a stack locked them), and only with stacks on.
    """
    cli = find_cli(cfg.build.docker_cli, cfg.env.docker_config)
    gateway = None if cfg.no_network else engine.bridge_gateway()

    def resolve(constraints: tuple[str, ...] = ()) -> PythonLock:
        plan = plan_resolve(request, cfg, cli=cli, gateway=gateway,
                            engine_env=engine.address.cli_env(), nonce=uuid.uuid4().hex,
                            constraints=constraints)
        return execute_resolve(plan, engine, report)

    lock = resolve()
    preferred = None
    if cfg.build.stacks != "none":
        preferred = preferred_pins(lock, _variant_locks(request, cfg))
    if preferred is None:
        return lock
    name, variant = preferred
    report.stage(f"resolving again with the versions of stack {name}, which this lock "
                 "misses only by versions its requirements leave open")
    try:
        again = resolve(tuple(f"{d.name}=={d.version}" for d in variant.distributions))
    except Interrupted:
        raise
    except BakeError:
        return lock  # the job's own pins rule the variant's out: the first lock stands
    have = {(d.name, d.sha256) for d in again.distributions}
    if all((d.name, d.sha256) in have for d in variant.distributions):
        return again
    return lock


def _variant_locks(request: PythonRequest, cfg: Settings) -> Iterator[tuple[str, PythonLock]]:
    """Each prebaked variant's lock on the request's base and index, as this machine last
    locked it (the resolver cache, fresh or not: a preference, not an answer)."""
    store = resolver_cache()
    for template, variant in _stack_variants(cfg):
        try:
            spec = variant_spec(template, variant)
        except BakeError:
            continue
        if not spec.requirements or spec.only_binary != request.only_binary:
            continue
        asked = dataclasses.replace(request, requirements=spec.requirements)
        entry = store.get(asked.cache_key())
        if entry is None:
            continue
        try:
            held = python_from_doc(entry.value, only_binary=spec.only_binary)
        except BakeError:
            continue
        yield f"{template.name}/{variant.name}", held


def _resolvers(cfg: Settings, engine: Engine, report: Reporter) -> Resolvers:
    """What the lock stage asks when neither a shipped lock nor a fresh entry answers."""
    return Resolvers(
        python=lambda request: resolve_requirements(request, cfg, engine, report),
        hub=hub_locker(cfg),
    )


def _lookup(spec: str | Path | JobSpec, cfg: Settings, report: Reporter, *,
            engine: Engine | None = None, upgrade: bool = False,
            use_shipped: bool = True) -> Lookup:
    """The first act with the pipeline's resolvers; stale-if-error warnings to ``report``."""
    engine = engine or Engine.from_settings(cfg)
    return lookup(spec, cfg, engine=engine, resolvers=_resolvers(cfg, engine, report),
                  upgrade=upgrade, use_shipped=use_shipped, warn=report.warn)


# --- the verbs -----------------------------------------------------------------------------------


def _settings(settings: Settings | None, config: str | None) -> Settings:
    return settings if settings is not None else load_settings(config)


def key(spec: str | Path | JobSpec, *, settings: Settings | None = None,
        config: str | None = None, reporter: Reporter | None = None) -> ImageKey:
    """The image key of a job spec (and, in ``.manifest``, why)."""
    return _lookup(spec, _settings(settings, config), reporter or NullReporter()).key


def explain_key(spec: str | Path | JobSpec, *, settings: Settings | None = None,
                config: str | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """``bake key --explain``: the key, the declared inputs, the lock's digest, the manifest."""
    found = _lookup(spec, _settings(settings, config), reporter or NullReporter())
    return explain(found.job, found.key)


@dataclass(frozen=True)
class LockResult:
    path: Path  # bake.lock beside the spec
    lock: Lock
    key: ImageKey
    changed: bool  # the file's bytes changed (or it is new)

    @property
    def digest(self) -> str:
        return self.lock.digest()


def lock(spec: str | Path | JobSpec, *, upgrade: bool = False,
         settings: Settings | None = None, config: str | None = None,
         reporter: Reporter | None = None) -> LockResult:
    """``bake lock SPEC [--upgrade]``: lock every outside input and write ``bake.lock`` beside
    the spec.  A shipped lock is left aside (it is what this rewrites); the resolver cache
    answers while fresh, ``upgrade`` resolves again."""
    found = _lookup(spec, _settings(settings, config), reporter or NullReporter(),
                    upgrade=upgrade, use_shipped=False)
    path = lock_path(found.spec)
    try:
        before = path.read_bytes()
    except OSError:
        before = None
    write_lock(path, found.lock)
    return LockResult(path, found.lock, found.key, path.read_bytes() != before)


def render_to(spec: str | Path, out: Path, *, settings: Settings | None = None,
              config: str | None = None) -> Path:
    """Write the Dockerfile and the exact build context of a spec into ``out``."""
    cfg = _settings(settings, config)
    found = _lookup(spec, cfg, NullReporter())
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty", hint="render into a new or empty folder")
    # The stack a build here would start from now (this engine's; a registry's is pulled
    # only by a build).
    need = need_of(found.job)
    on = choose(need, engine_stacks(found.engine, cfg.image_repository),
                stacks_mode(cfg.build.stacks))
    return _context(found.job, cfg, _relay(cfg, None), on=on).write(out)


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
    report = reporter or NullReporter()
    found = _lookup(spec, _settings(settings, config), report)
    return _bake(found, started=started, push=push, no_cache=no_cache, report=report)


def _bake(found: Lookup, *, started: float, push: bool | None, no_cache: bool,
          report: Reporter) -> BuildResult:
    cfg, image, digest = found.settings, found.image, found.key.digest
    locked = found.lock.digest()

    def elapsed() -> float:
        return round(time.monotonic() - started, 3)

    if found.present and not no_cache:
        record_use(digest)
        return BuildResult(image, digest, elapsed(), cached=True, locked=locked)
    cli = find_cli(cfg.build.docker_cli, cfg.env.docker_config)
    plan = plan_job(found, cli=cli, gateway=_gateway(found), no_cache=no_cache)
    registry = Registry(cfg, found.engine) if cfg.registry.repository else None
    with key_lock(digest, on_wait=lambda: report.stage("another build of this key is "
                                                        "running; waiting")):
        if not no_cache and found.engine.has_image(image):
            record_use(digest)
            return BuildResult(image, digest, elapsed(), cached=True, locked=locked)
        if registry is not None and not no_cache and registry.pull(image, report):
            record_use(digest)
            return BuildResult(image, digest, elapsed(), pulled=True, locked=locked)
        on = _choose_stack(found, registry, report, no_cache=no_cache)
        if on.stack is not None:
            report.stage(on.reason)
            record_use(on.stack.key)
            plan = plan_job(found, cli=cli, gateway=_gateway(found), no_cache=no_cache, on=on)
        try:
            egress, egress_log, summary = execute(plan, found.engine, registry, report)
        except SetupError as exc:
            stack = plan.on.stack
            if stack is None or found.engine.has_image(stack.image):
                raise
            # The stack went away between the choice and BuildKit's FROM: the failed build
            # left no image; build again on the base, as without stacks.
            report.warn(f"{stack.describe()} disappeared during the build ({exc.message}); "
                        "building on the base")
            plan = plan_job(found, cli=cli, gateway=_gateway(found), no_cache=no_cache)
            egress, egress_log, summary = execute(plan, found.engine, registry, report)
        record_use(digest)
        if cfg.build.stacks == "images":
            _keep_stack(found, plan, registry, report)
        pushed = False
        if registry is not None and (cfg.registry.push if push is None else push):
            pushed = registry.push(image, report)
        return BuildResult(image, digest, elapsed(), built=True, pushed=pushed, egress=egress,
                           egress_log=egress_log, egress_summary=summary, locked=locked,
                           stack=plan.on.parent or None)


def execute(plan: JobPlan, engine: Engine, registry: Registry | None,
            report: Reporter) -> tuple[str, str | None, str | None]:
    """Carry out a plan; returns (egress mode, egress log path, egress summary).

    Nothing is tagged unless the build and its self-check succeed; a failed,
    timed-out or interrupted build leaves no image and no proxy behind.
    """
    cache_from = [ref for ref in plan.cache_candidates if _cache_source(ref, engine, registry)]
    log_path = _egress_log(plan.key.digest[:16])
    with tempfile.TemporaryDirectory(prefix="bake-build-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        with _setup_window(plan.policy, plan.enforce, plan.setup_timeout, plan.job.base_from,
                           engine, log_path, report, relay=plan.relay) as (proxy, egress):
            plan.write(work, proxy_url=proxy.url if proxy else None)
            build_plan = plan.build_plan(work, proxy_url=proxy.url if proxy else None,
                                         cache_from=cache_from, nonce=uuid.uuid4().hex)
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


def _egress_log(name: str) -> Path:
    folder = state_dir() / "egress"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"


@contextlib.contextmanager
def _setup_window(policy: EgressPolicy | None, enforce: bool, setup_timeout: float,
                  canary_image: str, engine: Engine, log_path: Path, report: Reporter, *,
                  relay: IndexRelay | None) -> Iterator[tuple[RunningProxy | None, str]]:
    """Prove the host confines build steps to bake's proxy, start this setup's proxy (with
    the relay of the seller's index), close it after."""
    if policy is None:
        # `docker build --network=none`: no route out at all, nothing to prove.
        yield None, "offline"
        return
    gateway = engine.bridge_gateway()
    # The proof runs against a deny-all proxy of its own, so that the build's
    # egress log holds only what the build's steps asked for.
    report.stage("proving that build steps reach nothing but bake's proxy")
    proof = lockdown.prove_recent(engine, canary_image, gateway)
    if proof.enforced:
        egress = "enforced"
    elif enforce:
        raise ConfinementError(
            f"build steps on this host are not confined to bake's proxy ({proof.detail})",
            hint="run `bake egress lock` as root, or set egress.enforce = \"warn\" "
            "to build with advisory egress",
        )
    else:
        egress = "advisory"
        report.warn(f"egress is advisory: {proof.detail}; `bake egress lock` confines it")
    limits = ProxyLimits(max_tunnel_seconds=setup_timeout)
    with lockdown.start_build_proxy(policy, gateway, log_path=log_path, limits=limits,
                                    relay=relay) as proxy:
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
        report = reporter or NullReporter()
        found = _lookup(path, cfg, report, engine=engine)
        built = _bake(found, started=time.monotonic(), push=None, no_cache=False,
                      report=report)
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
    found = _lookup(spec, cfg, report)
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
    found = _lookup(spec, cfg, reporter or NullReporter())
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
    """A variant of wheels only becomes a stack (its deps stage, named by what it holds);
    one with models, or nothing to install, or an sdist, is baked as a job, as before."""
    started = time.monotonic()
    report.stage(f"prebaking {template.name}/{variant.name}")

    def outcome(kind: str, image: str | None, *, error: str = "",
                pushed: bool = False) -> Outcome:
        return Outcome(template.name, variant.name, kind, image, error=error, pushed=pushed,
                       duration_s=round(time.monotonic() - started, 3))

    image: str | None = None
    try:
        found = _lookup(variant_spec(template, variant, base=base), cfg, report, engine=engine)
        need = need_of(found.job)
        stackable = (bool(need.wheels) and not variant.models
                     and all(d.is_wheel for d in found.lock.distributions))
        image = f"{cfg.image_repository}:{need.held.key}" if stackable else found.image
        if registry is not None:
            if registry.exists(image):
                return outcome("present", image)
            if engine.has_image(image):
                record_use(image.rpartition(":")[2])
                return outcome("present", image, pushed=registry.push(image, report))
        if stackable:
            built = _bake_stack(found, f"{template.name}/{variant.name}", registry, report,
                                started=started)
        else:
            built = _bake(found, started=started, push=registry is not None, no_cache=False,
                          report=report)
    except Interrupted:
        raise
    except BakeError as exc:
        report.warn(f"prebake {template.name}/{variant.name} failed: {exc.message}")
        return outcome("failed", image, error=exc.message)
    kind = "present" if built.cached else "pulled" if built.pulled else "built"
    return outcome(kind, built.image, pushed=built.pushed)


def _bake_stack(found: Lookup, variant: str, registry: Registry | None, report: Reporter, *,
                started: float) -> BuildResult:
    """Bake a variant's stack on its base (a prebaked stack is its base and its install
    layers of wheels: the same shape on every machine), and push it when ``registry`` is
    given."""
    cfg, engine = found.settings, found.engine
    plan = plan_stack(found, cli=find_cli(cfg.build.docker_cli, cfg.env.docker_config),
                      gateway=_gateway(found), on=_on_base(found), variant=variant)
    digest = plan.key.digest

    def elapsed() -> float:
        return round(time.monotonic() - started, 3)

    with key_lock(digest, on_wait=lambda: report.stage("another build of this stack is "
                                                        "running; waiting")):
        if engine.has_image(plan.image):
            built = BuildResult(plan.image, digest, elapsed(), cached=True)
        else:
            egress, egress_log, summary = execute(plan, engine, registry, report)
            built = BuildResult(plan.image, digest, elapsed(), built=True, egress=egress,
                                egress_log=egress_log, egress_summary=summary)
    record_use(digest)
    if registry is not None:
        built = dataclasses.replace(built, pushed=registry.push(plan.image, report))
    return built

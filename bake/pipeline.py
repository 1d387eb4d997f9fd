"""The only module that knows the order of the stages.

Read top to bottom, :func:`build` is one job's way from ``bake.toml`` to an image::

    load_spec -> resolve -> compute_key -> local hit? -> lock -> registry hit?
      -> prove confinement -> render -> start proxy -> BuildKit -> self-check
      -> tag <repo>:<key> -> push

and :func:`run` adds ``runner.run_job`` on top.  Each stage takes a frozen
value and returns a new one; the few that touch the world are called here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from .cache.key import ImageKey, compute_key
from .cache.store import has_image, key_lock, record_use
from .errors import ConfinementError, EngineError, RunError
from .resolve import ResolvedJob, hub_endpoint, resolve
from .settings import Settings, load_settings, state_dir
from .spec import JobSpec, load_spec

if TYPE_CHECKING:
    from .cache.registry import Registry
    from .egress.proxy import RunningProxy
    from .runner import RunResult

__all__ = ["BuildResult", "NullReporter", "Reporter", "build", "key", "render_to", "run"]


class Reporter(Protocol):
    """Where the pipeline tells a person what it does; the CLI's console implements it."""

    def stage(self, text: str) -> None: ...
    def log(self, line: str) -> None: ...
    def warn(self, text: str) -> None: ...


class NullReporter:
    def stage(self, text: str) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class BuildResult:
    image: str
    key: str
    duration_s: float
    cached: bool = False
    pulled: bool = False
    pushed: bool = False
    built: bool = False
    egress: str = ""  # "enforced" | "advisory" | "offline" (no network at all) | "" (no build)
    egress_log: str | None = None
    egress_summary: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "image": self.image, "key": self.key, "cached": self.cached, "pulled": self.pulled,
            "pushed": self.pushed, "egress": self.egress or None, "egress_log": self.egress_log,
            "duration_s": self.duration_s,
        }

    def describe(self) -> str:
        how = ("cached" if self.cached else "pulled from the registry" if self.pulled
               else "built")
        if self.pushed:
            how += ", pushed"
        if self.egress:
            how += f", egress {self.egress}"
        return f"{self.image} ({how}, {self.duration_s:.2f} s)"


def _settings(settings: Settings | None, config: str | None) -> Settings:
    return settings if settings is not None else load_settings(config)


def key(spec: str | Path | JobSpec, *, settings: Settings | None = None,
        config: str | None = None) -> ImageKey:
    """The image key of a job spec (and, in ``.manifest``, why)."""
    job = load_spec(spec) if not isinstance(spec, JobSpec) else spec
    return compute_key(resolve(job, _settings(settings, config)))


def render_to(spec: str | Path, out: Path, *, settings: Settings | None = None,
              config: str | None = None) -> Path:
    """Write the Dockerfile and the exact build context of a spec into ``out``."""
    from .builder.render import render

    cfg = _settings(settings, config)
    job = resolve(load_spec(spec), cfg)
    if out.exists() and any(out.iterdir()):
        from .errors import UsageError

        raise UsageError(f"{out} is not empty", hint="render into a new or empty folder")
    return render(job, ca_bundle=bool(cfg.build.ca_bundle),
                  hub_token=bool(os.environ.get("HF_TOKEN"))).write(out)


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
    cfg = _settings(settings, config)
    job_spec = load_spec(spec) if not isinstance(spec, JobSpec) else spec
    job = resolve(job_spec, cfg)
    image_key = compute_key(job)
    image = image_key.image(cfg.image_repository)
    want_push = cfg.registry.push if push is None else push

    def elapsed() -> float:
        return round(time.monotonic() - started, 3)

    if not no_cache and has_image(image):
        record_use(image_key.digest)
        return BuildResult(image, image_key.digest, elapsed(), cached=True)

    with key_lock(image_key.digest,
                  on_wait=lambda: report.stage("another build of this key is running; waiting")):
        if not no_cache and has_image(image):
            record_use(image_key.digest)
            return BuildResult(image, image_key.digest, elapsed(), cached=True)
        registry = _registry(cfg)
        if registry is not None and not no_cache and registry.pull(image, report):
            record_use(image_key.digest)
            return BuildResult(image, image_key.digest, elapsed(), pulled=True)
        egress, egress_log, summary = _build(job, image_key, image, cfg, no_cache=no_cache,
                                             report=report)
        record_use(image_key.digest)
        pushed = False
        if registry is not None and want_push:
            pushed = registry.push(image, report)
        return BuildResult(image, image_key.digest, elapsed(), built=True, pushed=pushed,
                           egress=egress, egress_log=egress_log, egress_summary=summary)


def _registry(cfg: Settings) -> Registry | None:
    if not cfg.registry.repository:
        return None
    from .cache.registry import Registry

    return Registry(cfg)


def _build(job: ResolvedJob, image_key: ImageKey, image: str, cfg: Settings, *, no_cache: bool,
           report: Reporter) -> tuple[str, str | None, str | None]:
    """One BuildKit build; returns (egress mode, egress log path, egress summary)."""
    from .builder.buildkit import find_cli, plan_build, run_build
    from .builder.render import render
    from .cache.engine import tag_image

    cli = find_cli(cfg.build.docker_cli)
    hf_token = os.environ.get("HF_TOKEN") or ""
    context = render(job, ca_bundle=bool(cfg.build.ca_bundle), hub_token=bool(hf_token))
    egress_dir = state_dir() / "egress"
    egress_dir.mkdir(parents=True, exist_ok=True)
    log_path = egress_dir / f"{image_key.digest[:16]}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    no_network = not cfg.egress.allow and not cfg.egress.allow_http

    with tempfile.TemporaryDirectory(prefix="bake-build-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        context_dir = context.write(work / "context")
        labels = {
            "bake.key": image_key.digest,
            "bake.manifest": image_key.label(),
            "bake.template": job.template.name,
            "org.opencontainers.image.title": job.spec.name or job.template.name,
            "org.opencontainers.image.base.name": job.base_ref,
            "org.opencontainers.image.base.digest": job.base_digest,
        }
        with _setup_window(cfg, job, log_path, no_network, report) as (proxy, egress):
            secrets = _secrets(work / "secrets", cfg, job, hf_token,
                               proxy_url=proxy.url if proxy is not None else None)
            plan = plan_build(
                cli,
                context_dir,
                iidfile=work / "iid",
                labels=labels,
                proxy_url=proxy.url if proxy is not None else None,
                no_network=no_network,
                secrets=secrets,
                no_cache=no_cache,
                cache_from=() if no_cache else _prebaked_deps(job, cfg),
                inline_cache=True,
            )
            report.stage(f"building {image_key.short} with {cli.describe()}")
            image_id = run_build(plan, timeout=cfg.egress.setup_timeout, on_line=report.log)
            summary = _summary(proxy)
        try:
            if job.hub_repos:
                _self_check(image_id, job, report)
            repository, _, tag = image.rpartition(":")
            tag_image(image_id, repository, tag)
        except BaseException:
            _discard(image_id)
            raise
    if summary:
        report.stage(summary)
    return egress, (str(log_path) if proxy is not None else None), summary


def _prebaked_deps(job: ResolvedJob, cfg: Settings) -> tuple[str, ...]:
    """The prebaked image holding this job's dependency layer, if any: a --cache-from source."""
    from .prebake import prebaked_deps

    return prebaked_deps(job, cfg)


@contextlib.contextmanager
def _setup_window(
    cfg: Settings, job: ResolvedJob, log_path: Path, no_network: bool, report: Reporter
) -> Iterator[tuple[RunningProxy | None, str]]:
    """Start this build's proxy, prove the host confines build steps to it, close it after."""
    if no_network:
        # `docker build --network=none`: no route out at all, nothing to prove.
        yield None, "offline"
        return
    from .cache.engine import bridge_gateway
    from .egress import lockdown
    from .egress.policy import EgressPolicy
    from .egress.proxy import ProxyLimits
    from .egress.relay import IndexRelay

    gateway = bridge_gateway()
    policy = EgressPolicy.from_settings(
        cfg.egress.allow, cfg.egress.allow_http, cfg.egress.allow_cidrs, own_addresses=[gateway]
    )
    # The seller's index, credentials and all, stays with the proxy (DESIGN.md).
    relay = (IndexRelay.from_url(cfg.build.pip_index_url, ca_bundle=cfg.build.ca_bundle)
             if cfg.build.pip_index_url else None)
    if relay is not None:
        relay.check_allowed(policy)
    limits = ProxyLimits(max_tunnel_seconds=float(cfg.egress.setup_timeout))
    # The proof runs against a deny-all proxy of its own, so that the build's
    # egress log holds only what the build's steps asked for.
    report.stage("proving that build steps reach nothing but bake's proxy")
    proof = lockdown.prove_recent(job.base_from, gateway)
    proxy = lockdown.start_build_proxy(policy, gateway, log_path=log_path, limits=limits,
                                       relay=relay)
    try:
        if proof.enforced:
            egress = "enforced"
        elif cfg.egress.enforce == "require":
            raise ConfinementError(
                f"build steps on this host are not confined to bake's proxy ({proof.detail})",
                hint="run `bake egress lock` as root, or set egress.enforce = \"warn\" "
                "to build with advisory egress",
            )
        else:
            egress = "advisory"
            report.warn(f"egress is advisory: {proof.detail}; `bake egress lock` confines it")
        yield proxy, egress
    finally:
        proxy.close()


def _summary(proxy: RunningProxy | None) -> str | None:
    if proxy is None:
        return None
    return proxy.stats().one_line()


def step_pip_config(relay_index_url: str | None, *, ca_bundle: bool) -> str:
    """The pip config of the build steps.  Pure.

    Steps run buyer code, so it names no seller secret: with ``build.pip_index_url``
    set, the index is the egress proxy's relay (``relay_index_url``, plain HTTP on
    the bridge, hence trusted), which adds the credentials itself.
    """
    lines = ["[global]"]
    if relay_index_url:
        from urllib.parse import urlsplit

        lines.append(f"index-url = {relay_index_url}")
        lines.append(f"trusted-host = {urlsplit(relay_index_url).netloc}")
    if ca_bundle:
        lines.append("cert = /run/secrets/bake_ca")
    return "\n".join(lines) + "\n"


def _secrets(folder: Path, cfg: Settings, job: ResolvedJob, hf_token: str, *,
             proxy_url: str | None) -> dict[str, Path]:
    """Seller settings for the steps, as BuildKit secrets: in no layer, no history."""
    folder.mkdir(mode=0o700)
    relay_url = None
    if cfg.build.pip_index_url and proxy_url is not None:
        from .egress.relay import INDEX_PATH

        relay_url = proxy_url.rstrip("/") + INDEX_PATH
    pip_conf = step_pip_config(relay_url, ca_bundle=bool(cfg.build.ca_bundle))
    secrets = {"bake_pip": _write_secret(folder / "pip.conf", pip_conf)}
    if cfg.build.ca_bundle:
        secrets["bake_ca"] = Path(cfg.build.ca_bundle)
    if job.hub_repos:
        endpoint = hub_endpoint(cfg) or "https://huggingface.co"
        _check_hub_egress(cfg, endpoint)
        secrets["bake_hf_endpoint"] = _write_secret(folder / "hf_endpoint", endpoint)
        if hf_token:
            secrets["hf_token"] = _write_secret(folder / "hf_token", hf_token)
    return secrets


def _check_hub_egress(cfg: Settings, endpoint: str) -> None:
    """Refuse a build whose fetch steps could not reach the Hub through the egress proxy.

    Without this the proxy's 403 surfaces minutes later, inside a fetch step, as
    "the Hub answered HTTP 403" (the client cannot tell the proxy from the Hub).
    """
    from urllib.parse import urlsplit

    from .egress.policy import EgressPolicy
    from .errors import ConfigError

    policy = EgressPolicy.from_settings(cfg.egress.allow, cfg.egress.allow_http,
                                        cfg.egress.allow_cidrs)
    parts = urlsplit(endpoint)
    if parts.scheme == "http":
        allowed = policy.check_http(f"{parts.scheme}://{parts.netloc}/").allowed
        where = f'egress.allow_http (as "{parts.scheme}://{parts.netloc}")'
    else:
        allowed = policy.check_connect(f"{parts.hostname}:{parts.port or 443}").allowed
        where = f'egress.allow (as "{parts.hostname}")'
    if not allowed:
        raise ConfigError(
            f"the job fetches from the Hub at {endpoint}, which the egress settings do not allow",
            field="build.hf_endpoint",
            hint=f"add it to {where}, or point build.hf_endpoint at an allowed mirror",
        )


def _write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _self_check(image_id: str, job: ResolvedJob, report: Reporter) -> None:
    from .runner import self_check

    report.stage("checking the baked models and datasets offline")
    for line in self_check(image_id, job).splitlines():
        report.log(line)


def _discard(image_id: str) -> None:
    from .cache.store import remove_image

    with contextlib.suppress(EngineError):
        remove_image(image_id, force=True)


def run(
    spec_or_image: str | Path,
    *,
    args: Sequence[str] = (),
    output: Path | None = None,
    settings: Settings | None = None,
    config: str | None = None,
    reporter: Reporter | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
) -> RunResult:
    """Build if needed, then run the job offline and hardened."""
    from .runner import image_job, run_job, spec_job

    cfg = _settings(settings, config)
    target = str(spec_or_image)
    path = Path(target)
    if path.is_dir() or path.suffix == ".toml" or path.exists():
        job_spec = load_spec(path)
        built = build(job_spec, settings=cfg, reporter=reporter)
        plan = spec_job(built.image, job_spec, args=args, output=output)
    else:
        plan = image_job(target, args=args, output=output)
    if not has_image(plan.image):
        raise RunError(f"image {plan.image} is not on this engine",
                       hint="build it first (bake build SPEC) or pull it")
    if plan.key:
        record_use(plan.key)
    return run_job(plan, stdout=stdout, stderr=stderr)

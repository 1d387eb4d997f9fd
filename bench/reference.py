"""What the benchmarks measure bake against: the build bake itself would run, run by docker.

:func:`reference_build` plans a spec exactly as ``bake build`` does
(:func:`bake.pipeline.plan_job`), writes its context and secrets, starts the same
egress proxy (with the seller's index relay) and yields the plan's own docker argv:
a ``docker build`` of the same context that differs from bake's by nothing bake adds.
Not a benchmark itself (``nox -s bench`` runs the ``bench_*`` files).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bake.builder.buildkit import find_cli
from bake.egress.lockdown import start_build_proxy
from bake.egress.proxy import ProxyLimits
from bake.engine import Engine
from bake.lookup import lookup
from bake.pipeline import plan_job
from bake.settings import Settings

__all__ = ["reference_build", "timed"]


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds one command takes, its output discarded; it must succeed."""
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


@contextmanager
def reference_build(spec: str, settings: Settings, engine: Engine,
                    work: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of the docker build bake plans for ``spec``, its proxy running.

    The spec's lock must be fresh in the resolver cache (build it with bake first): the
    lookup here is given no resolver.  The reference's cache is warmed before it yields.
    """
    gateway = engine.bridge_gateway()
    plan = plan_job(lookup(spec, settings, engine=engine),
                    cli=find_cli(settings.build.docker_cli, settings.env.docker_config),
                    gateway=gateway)
    build_dir = work / "build"
    build_dir.mkdir(mode=0o700)
    assert plan.policy is not None, "the benchmarks measure a build that reaches the index"
    with start_build_proxy(plan.policy, gateway, log_path=None, limits=ProxyLimits(),
                           relay=plan.relay) as proxy:
        plan.write(build_dir, proxy_url=proxy.url)
        reference = plan.build_plan(build_dir, proxy_url=proxy.url, cache_from=())
        argv, env = list(reference.argv), dict(reference.env)
        timed(argv, env)
        yield argv, env

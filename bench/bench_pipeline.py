"""Issue 2's performance goals, as ratios against plain `docker build` in the same run.

* key hit: `bake build` on a built spec vs a fully cached `docker build` of the
  same rendered context (goal <= 1.0);
* cold build: `bake build --no-cache` vs `docker build --no-cache` of the same
  rendered context, with the same proxy, secrets and CA (goal <= 1.10).

Runs are interleaved and the median is taken, so a busy machine slows both
sides alike.  Python bytecode is compiled first, as an installed package has it.
Run: `nox -s bench -- bench/bench_pipeline.py` (needs scripts/bootstrap's set-up).
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bake
from bake.builder.buildkit import PROXY_ARGS, find_cli
from bake.cache.engine import bridge_gateway
from bake.egress.lockdown import start_build_proxy
from bake.egress.policy import EgressPolicy
from bake.egress.proxy import ProxyLimits
from bake.settings import load_settings

SPEC = """\
name = "bench"
template = "python"
[python]
requirements = ["six==1.16.0", "idna==3.10", "tabulate==0.9.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
HITS = int(os.environ.get("BENCH_HITS", "15"))
COLD = int(os.environ.get("BENCH_COLD", "3"))


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    compileall.compile_dir(os.path.dirname(bake.__file__), quiet=1)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    settings = load_settings()
    bake_cli = str(Path(sys.executable).with_name("bake"))
    work = Path(tempfile.mkdtemp(prefix="bake-bench-"))
    try:
        (work / "job").mkdir()
        (work / "job" / "bake.toml").write_text(SPEC)
        (work / "job" / "main.py").write_text(f"print('bench {time.time_ns()}')\n")
        spec = str(work / "job")
        image = json.loads(subprocess.run([bake_cli, "build", spec, "--json"], env=env,
                                          check=True, capture_output=True, text=True).stdout)
        bake.render_to(spec, work / "ctx", settings=settings)

        # The same proxy, secrets and CA that bake gives its own build.
        pip_conf = work / "pip.conf"
        pip_conf.write_text("[global]\n" + ("cert = /run/secrets/bake_ca\n"
                                            if settings.build.ca_bundle else ""))
        gateway = bridge_gateway()
        policy = EgressPolicy.from_settings(settings.egress.allow, settings.egress.allow_http,
                                            settings.egress.allow_cidrs, own_addresses=[gateway])
        cli = find_cli(settings.build.docker_cli)
        with start_build_proxy(policy, gateway, log_path=None, limits=ProxyLimits()) as proxy:
            docker = [*cli.argv, "--progress=plain", "--secret", f"id=bake_pip,src={pip_conf}"]
            if settings.build.ca_bundle:
                docker += ["--secret", f"id=bake_ca,src={settings.build.ca_bundle}"]
            for name in PROXY_ARGS:
                value = proxy.url if name.lower() in ("http_proxy", "https_proxy") else ""
                docker += ["--build-arg", f"{name}={value}"]
            docker += ["-t", "bake-bench/reference:latest", str(work / "ctx")]
            docker_env = dict(env, **dict(cli.env))
            timed(docker, docker_env)  # warm the reference's cache too

            hit_bake, hit_docker = [], []
            for _ in range(HITS):
                hit_bake.append(timed([bake_cli, "build", spec], env))
                hit_docker.append(timed(docker, docker_env))
            cold_bake, cold_docker = [], []
            for _ in range(COLD):
                cold_bake.append(timed([bake_cli, "build", spec, "--no-cache"], env))
                cold_docker.append(timed([*docker[:2], "--no-cache", *docker[2:]], docker_env))
    finally:
        subprocess.run(["docker", "rmi", "-f", "bake-bench/reference:latest", image["image"]],
                       capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    hb, hd = statistics.median(hit_bake), statistics.median(hit_docker)
    cb, cd = statistics.median(cold_bake), statistics.median(cold_docker)
    print(f"key hit:    bake build {hb:.3f} s  vs  cached docker build {hd:.3f} s"
          f"  ratio {hb / hd:.2f} (goal <= 1.0, median of {HITS})")
    print(f"cold build: bake build {cb:.2f} s  vs  docker build --no-cache {cd:.2f} s"
          f"  ratio {cb / cd:.2f} (goal <= 1.10, median of {COLD})")


if __name__ == "__main__":
    main()

"""Issue 10's figures: the lock on the key-hit path, a resolver-cache miss, a shipped-lock build.

* key hit: `bake build SPEC` for a job with ranged requirements and two Hub models, resolver
  cache fresh, vs a fully cached `docker build` of the same context (the argv of
  :func:`bake.pipeline.plan_job`, as bench_pipeline.py does): goal ratio <= 1.0; and the
  number of Hub requests those hits made (goal 0);
* resolver-cache miss: the transformers template's requirements (``BENCH_LOCK_REQUIREMENTS``)
  resolved by :func:`bake.pipeline.resolve_requirements` -- plan, proof of confinement, a
  proxy of its own, the confined uv step -- with bake's tool stage in BuildKit's cache (the
  steady state; the first run's figure, which may build the tool stage, is printed too):
  goal <= 5 s;
* shipped lock: `bake build --no-cache` of a job that ships a bake.lock: the egress log's
  requests against the lock's own files (goal: no more, but for bake's own tool stage,
  which --no-cache rebuilds and BuildKit otherwise keeps).

The Hub is tests/hubserver.py on the bridge gateway (the real Hub is not reachable here);
requirements come from the seller's index.  Uses ``$BAKE_CONFIG`` (scripts/bootstrap's) and a
confined host.  Runs are interleaved and medians taken.  Run: `nox -s bench -- bench/bench_lock.py`.
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
import tomllib
from collections import Counter
from pathlib import Path

from reference import reference_build, timed

import bake
from bake.engine import Engine
from bake.lock.format import PythonRequest, parse_lock
from bake.lock.locking import index_url_of
from bake.pipeline import resolve_requirements
from bake.resolve import base_digest
from bake.settings import load_settings
from bake.types import NullReporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hubserver import HubRepo, RunningHub, start_hub

BASE = os.environ.get("BAKE_TEST_BASE", "python:3.11-slim")
HITS = int(os.environ.get("BENCH_HITS", "15"))
MISSES = int(os.environ.get("BENCH_MISSES", "3"))
TRANSFORMERS = tuple(
    os.environ.get("BENCH_LOCK_REQUIREMENTS", "transformers==5.24.0").split(","))
HIT_SPEC = """\
name = "bench-lock"
template = "transformers"
[python]
requirements = ["six>=1.16", "idna>=3"]
[[models]]
repo = "bench/model-a"
include = ["*.json", "*.safetensors"]
[[models]]
repo = "bench/model-b"
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
SHIPPED_SPEC = """\
name = "bench-shipped"
template = "python"
[python]
requirements = ["six==1.16.0", "idna==3.10", "tabulate==0.9.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""


def config_with(base: str, work: Path, endpoint: str) -> Path:
    """The seller config of $BAKE_CONFIG plus the local Hub (plain HTTP, allowed as such)."""
    doc = tomllib.loads(Path(base).read_text()) if base else {}
    egress = doc.setdefault("egress", {})
    egress["allow_http"] = [*egress.get("allow_http", []), endpoint]
    doc.setdefault("build", {})["hf_endpoint"] = endpoint
    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = work / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def key_hit(env: dict[str, str], work: Path, hub: RunningHub) -> None:
    bake_cli = str(Path(sys.executable).with_name("bake"))
    settings = load_settings(env["BAKE_CONFIG"])
    engine = Engine.from_settings(settings)
    (work / "hit").mkdir()
    (work / "hit" / "bake.toml").write_text(HIT_SPEC)
    (work / "hit" / "main.py").write_text(f"print('bench {time.time_ns()}')\n")
    spec = str(work / "hit")
    image = json.loads(subprocess.run([bake_cli, "build", spec, "--json"], env=env, check=True,
                                      capture_output=True, text=True).stdout)["image"]
    try:
        # No resolvers: the lock must come from the fresh resolver cache the build left.
        with reference_build(spec, settings, engine, work) as (docker, docker_env):
            hub.clear_requests()
            hit_bake, hit_docker = [], []
            for _ in range(HITS):
                hit_bake.append(timed([bake_cli, "build", spec], env))
                hit_docker.append(timed(docker, docker_env))
            asked = len(hub.requests)
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)
    hb, hd = statistics.median(hit_bake), statistics.median(hit_docker)
    print(f"key hit (ranged requirements, two Hub models, cache fresh): bake build {hb:.3f} s"
          f"  vs  cached docker build {hd:.3f} s  ratio {hb / hd:.2f} (goal <= 1.0, median of "
          f"{HITS}); Hub requests during the hits: {asked} (goal 0)")


def resolver_miss(env: dict[str, str]) -> None:
    settings = load_settings(env["BAKE_CONFIG"])
    engine = Engine.from_settings(settings)
    base_from, digest = base_digest(engine, BASE)
    request = PythonRequest(TRANSFORMERS, True, base_from, digest, index_url_of(settings))
    times = []
    lock = None
    for _ in range(MISSES + 1):
        started = time.perf_counter()
        lock = resolve_requirements(request, settings, engine, NullReporter())
        times.append(time.perf_counter() - started)
    assert lock is not None
    warm = statistics.median(times[1:])
    print(f"resolver-cache miss ({', '.join(TRANSFORMERS)}: {len(lock.distributions)} "
          f"distributions): {warm:.2f} s (goal <= 5 s, median of {MISSES}; first run "
          f"{times[0]:.2f} s)")


def shipped(env: dict[str, str], work: Path) -> None:
    bake_cli = str(Path(sys.executable).with_name("bake"))
    (work / "shipped").mkdir()
    (work / "shipped" / "bake.toml").write_text(SHIPPED_SPEC)
    (work / "shipped" / "main.py").write_text(f"print('bench {time.time_ns()}')\n")
    spec = str(work / "shipped")
    subprocess.run([bake_cli, "lock", spec], env=env, check=True, capture_output=True)
    lock = parse_lock((work / "shipped" / "bake.lock").read_text())
    proc = subprocess.run([bake_cli, "build", spec, "--json", "--no-cache"], env=env,
                          check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout)
    subprocess.run(["docker", "rmi", "-f", result["image"]], capture_output=True, check=False)
    log = [json.loads(line) for line in Path(result["egress_log"]).read_text().splitlines()]
    decisions = [e for e in log if e["event"] == "decision"]
    fetched = [line for line in proc.stderr.splitlines() if "bake-install: fetched " in line]
    hosts = Counter(e["host"] for e in decisions)
    lock_hosts = Counter(d.url.split("/")[2] for d in lock.distributions)
    index_host = index_url_of(load_settings(env["BAKE_CONFIG"])).split("/")[2]
    tool = sum(hosts.values()) - len(lock.distributions)
    print(f"shipped bake.lock, --no-cache: {len(decisions)} requests for {len(lock.distributions)} "
          f"locked files ({len(fetched)} fetched and checked by the install step); per host "
          f"{dict(hosts)} vs the lock's {dict(lock_hosts)}; the other {tool} are bake's tool "
          f"stage (uv from {index_host} and its file host), which only --no-cache rebuilds")


def main() -> None:
    compileall.compile_dir(os.path.dirname(bake.__file__), quiet=1)
    base_env = dict(os.environ)
    base_env.pop("PYTHONDONTWRITEBYTECODE", None)
    work = Path(tempfile.mkdtemp(prefix="bake-bench-lock-"))
    files = {"config.json": b'{"model_type": "bench"}\n', "model.safetensors": b"w" * 65536}
    repos = [HubRepo("model", "bench/model-a", branches={"main": files}),
             HubRepo("model", "bench/model-b", branches={"main": {"config.json": b"{}\n"}})]
    engine = Engine.from_settings(load_settings(base_env.get("BAKE_CONFIG") or None))
    try:
        with start_hub(repos, host=engine.bridge_gateway()) as hub:
            env = dict(base_env)
            env["BAKE_CONFIG"] = str(config_with(base_env.get("BAKE_CONFIG", ""), work,
                                                 hub.endpoint))
            key_hit(env, work, hub)
            resolver_miss(env)
            shipped(env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

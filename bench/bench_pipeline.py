"""The key hit and the cold build, as ratios against plain `docker build` in the same run.

* key hit: `bake build SPEC` (and `bake --config F build SPEC`) on a built spec vs a
  fully cached `docker build` of the same context (goal <= 0.6: issue 9);
* cold build: `bake build --no-cache` vs `docker build --no-cache` (goal <= 1.10).

The reference is the build bake itself would run: the argv of the plan
(:func:`bake.pipeline.plan_job`), with the same context, proxy, secrets and CA,
so the two sides differ only by what bake adds.  Runs are interleaved and the
median is taken, so a busy machine slows both sides alike.  bake runs as a user
installs it (``nox -s bench`` installs the package, not an editable link), with
its bytecode compiled.  Run: `nox -s bench -- bench/bench_pipeline.py`.
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

from reference import reference_build, timed

import bake
from bake.engine import Engine
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


def main() -> None:
    compileall.compile_dir(os.path.dirname(bake.__file__), quiet=1)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    config = env.get("BAKE_CONFIG", "")
    no_env = {k: v for k, v in env.items() if k != "BAKE_CONFIG"}
    settings = load_settings()
    engine = Engine.from_settings(settings)
    bake_cli = str(Path(sys.executable).with_name("bake"))
    work = Path(tempfile.mkdtemp(prefix="bake-bench-"))
    try:
        (work / "job").mkdir()
        (work / "job" / "bake.toml").write_text(SPEC)
        (work / "job" / "main.py").write_text(f"print('bench {time.time_ns()}')\n")
        spec = str(work / "job")
        image = json.loads(subprocess.run([bake_cli, "build", spec, "--json"], env=env,
                                          check=True, capture_output=True, text=True).stdout)
        with reference_build(spec, settings, engine, work) as (docker, docker_env):
            by_flag = [bake_cli, "--config", config, "build", spec] if config else None

            hit_bake, hit_flag, hit_docker = [], [], []
            for _ in range(HITS):
                hit_bake.append(timed([bake_cli, "build", spec], env))
                if by_flag:
                    hit_flag.append(timed(by_flag, no_env))
                hit_docker.append(timed(docker, docker_env))
            cold_bake, cold_docker = [], []
            for _ in range(COLD):
                cold_bake.append(timed([bake_cli, "build", spec, "--no-cache"], env))
                cold_docker.append(timed([*docker[:2], "--no-cache", *docker[2:]], docker_env))
    finally:
        subprocess.run(["docker", "rmi", "-f", image["image"]], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    hd = statistics.median(hit_docker)
    hb = statistics.median(hit_bake)
    print(f"key hit:    bake build {hb:.3f} s  vs  cached docker build {hd:.3f} s"
          f"  ratio {hb / hd:.2f} (goal <= 0.6, median of {HITS})")
    if hit_flag:
        hf = statistics.median(hit_flag)
        print(f"key hit:    bake --config F build {hf:.3f} s  vs  cached docker build {hd:.3f} s"
              f"  ratio {hf / hd:.2f} (goal <= 0.6, median of {HITS})")
    cb, cd = statistics.median(cold_bake), statistics.median(cold_docker)
    print(f"cold build: bake build {cb:.2f} s  vs  docker build --no-cache {cd:.2f} s"
          f"  ratio {cb / cd:.2f} (goal <= 1.10, median of {COLD})")


if __name__ == "__main__":
    main()

"""Issue 4's performance goal: a code-only change must not refetch the model.

A job of the transformers template's shape (its ``py311-tokenizers`` variant's
requirements, ``BENCH_HUB_REQUIREMENTS`` to change them) with a model of ``BENCH_HUB_MB``
MiB (default 256) from tests/hubserver.py on the bridge gateway, reached through bake's
proxy like any Hub:

* cold: ``bake build --no-cache`` (deps, the fetch client, the model, the self-check);
* rebuild: the same job with its code changed, ``bake build`` (goal: <= 0.1 x cold).

Prints both, the ratio, and how many bytes the Hub served for each.  Uses the seller
config of ``$BAKE_CONFIG`` (scripts/bootstrap's), plus the bench's Hub as an
``allow_http`` origin and ``build.hf_endpoint`` through BAKE_* variables.
Run: `nox -s bench -- bench/bench_hub.py` (needs scripts/bootstrap's set-up).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bake.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hubserver import RunningHub, demo_repos, start_hub

ENGINE = Engine.from_env()

SIZE_MB = int(os.environ.get("BENCH_HUB_MB", "256"))
REBUILDS = int(os.environ.get("BENCH_REBUILDS", "3"))
MODEL = "bake-demo/big-model"
# The rebuild's cost is fixed (start, key, confinement proof, a cached build, the self-check:
# about 1.8 s here); the cold build's is what the job installs and fetches.  A local Hub
# serves the weights faster than any real one, which makes this ratio a pessimistic one.
REQUIREMENTS = os.environ.get("BENCH_HUB_REQUIREMENTS", "transformers==5.24.0").split(",")

SPEC = """\
name = "bench-hub"
template = "transformers"
[python]
requirements = {requirements}
[[models]]
repo = "{model}"
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
MAIN = """\
import os
from huggingface_hub import snapshot_download
folder = snapshot_download("{model}")
print("{tag}", os.path.getsize(os.path.join(folder, "weights.bin")))
"""


def served_bytes(hub: RunningHub) -> int:
    """What the Hub sent as file bodies since the last clear, from its request log."""
    files = [r for r in hub.requests if "/resolve/" in r.path and r.method == "GET"]
    return sum(SIZE_MB << 20 for r in files if r.path.endswith("/weights.bin"))


def build(bake_cli: str, spec: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([bake_cli, "build", str(spec), "--json", *args], env=env,
                          capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bake build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took, str(json.loads(proc.stdout)["image"])


def main() -> None:
    bake_cli = str(Path(sys.executable).with_name("bake"))
    work = Path(tempfile.mkdtemp(prefix="bake-bench-hub-"))
    images: list[str] = []
    # Made once, before the clock: the server hashes the generated weights on first request.
    with start_hub(demo_repos(big_mb=SIZE_MB), host=ENGINE.bridge_gateway()) as hub:
        env = dict(os.environ, BAKE_EGRESS_ALLOW_HTTP=hub.endpoint,
                   BAKE_BUILD_HF_ENDPOINT=hub.endpoint)
        try:
            job = work / "job"
            job.mkdir()
            (job / "bake.toml").write_text(SPEC.format(requirements=json.dumps(REQUIREMENTS),
                                                       model=MODEL))
            (job / "main.py").write_text(MAIN.format(model=MODEL, tag="cold"))
            hub.clear_requests()
            cold, image = build(bake_cli, job, env, "--no-cache")
            images.append(image)
            cold_bytes = served_bytes(hub)

            rebuilds, rebuild_bytes = [], 0
            for i in range(REBUILDS):
                (job / "main.py").write_text(MAIN.format(model=MODEL, tag=f"edit {i}"))
                hub.clear_requests()
                took, image = build(bake_cli, job, env)
                images.append(image)
                rebuilds.append(took)
                rebuild_bytes += served_bytes(hub)
        finally:
            subprocess.run(["docker", "rmi", "-f", *images], capture_output=True, check=False)
            shutil.rmtree(work, ignore_errors=True)

    rebuild = statistics.median(rebuilds)
    print(f"job: {', '.join(REQUIREMENTS)} + a hub model of {SIZE_MB} MiB")
    print(f"cold build (--no-cache) {cold:.2f} s, "
          f"{cold_bytes / 2**20:.0f} MiB of weights served")
    print(f"code-only rebuild: {rebuild:.2f} s (median of {REBUILDS}), "
          f"{rebuild_bytes / 2**20:.0f} MiB of weights served")
    print(f"ratio rebuild / cold {rebuild / cold:.3f} (goal <= 0.1)")


if __name__ == "__main__":
    main()

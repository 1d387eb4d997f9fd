"""Stacks and the wheelhouse (issue 11), figures and ratios in one run.

* cold torch job (``torch`` + ``numpy``; the wheelhouse emptied first, no stack,
  ``--no-cache``): ``bake build`` vs the pre-lock pip step on the same context and through
  the same proxy (``REFERENCE`` below: main's ``_base/Dockerfile.j2`` deps step before the
  lock, pip installing with bytecode compilation, as pip does by default); goal <= 0.6;
* the torch stack present (``bake prebake python``): the torch job plus one small package,
  ``bake build`` from a fresh state (its resolution included): at most 10 s, at most 50 MB
  more disk, and its egress log and fetch step show no torch or CUDA bytes;
* the sci stack present: the sci job plus one small package: at most 5 s.

Torch is about 3 GB of downloads and a 6 GB image: this bench downloads it twice (the pip
reference and bake's cold build), and removes every image it made but the stacks
``bake prebake python`` keeps (``bake prune`` removes those).  Run it rarely:
``nox -s bench -- bench/bench_stacks.py`` (or ``.venv/bin/python bench/bench_stacks.py`` with
``BAKE_CONFIG`` set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bake.builder.buildkit import find_cli, plan_build, run_build
from bake.egress.lockdown import start_build_proxy
from bake.egress.proxy import ProxyLimits
from bake.engine import Engine
from bake.settings import load_settings
from bake.stacks.wheelhouse import MOUNT
from bake.templates import find_template

TORCH = ("torch==2.15.0", "numpy==2.3.5")
SCI = ("numpy==2.1.3", "pandas==2.2.3", "scipy==1.14.1")
SMALL = "tabulate==0.9.0"
MAIN = "import importlib, sys\nprint([importlib.import_module(m).__name__ for m in sys.argv[1:]])\n"

# The deps step of bake's template before the lock (main at 23284e5, _base/Dockerfile.j2),
# rendered for the python template with the seller's CA: today's pip-based step.
REFERENCE = """\
FROM {base} AS deps
RUN --mount=type=bind,source=bake/requirements.txt,target=/tmp/bake/requirements.txt \\
    --mount=type=secret,id=bake_pip,target=/run/secrets/bake_pip,required=true \\
    --mount=type=secret,id=bake_ca,target=/run/secrets/bake_ca,required=true \\
    python3 -m venv /opt/venv \\
 && PIP_CONFIG_FILE=/run/secrets/bake_pip /opt/venv/bin/pip install \\
      --no-input --disable-pip-version-check --no-cache-dir --only-binary=:all: \\
      -r /tmp/bake/requirements.txt

FROM deps AS job
COPY job/ /job/
ENV PATH=/opt/venv/bin:$PATH \\
    VIRTUAL_ENV=/opt/venv \\
    HOME=/tmp \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1
WORKDIR /job
USER 10001:10001
"""


def bake_cli() -> str:
    return str(Path(sys.executable).with_name("bake"))


def spec_text(requirements: tuple[str, ...], template: str = "python") -> str:
    reqs = ", ".join(f'"{r}"' for r in requirements)
    return (f'name = "bench-stacks"\ntemplate = "{template}"\n[python]\nrequirements = [{reqs}]\n'
            '[job]\nfiles = ["main.py"]\ncommand = ["python", "main.py"]\n')


def write_job(folder: Path, requirements: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True)
    (folder / "bake.toml").write_text(spec_text(requirements))
    (folder / "main.py").write_text(MAIN + f"# {time.time_ns()}\n")
    return folder


LAST_STEP: list[float] = []  # when the last build step of the last bake call ended


def bake(*args: str, env: dict[str, str]) -> tuple[float, dict[str, Any], str]:
    started = time.perf_counter()
    proc = subprocess.Popen([bake_cli(), *args, "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    lines = []
    exporting = False
    for line in proc.stderr:
        lines.append(line)
        exporting = exporting or "exporting to image" in line
        if _is_step_end(line) and not exporting:
            LAST_STEP[:] = [time.perf_counter() - started]
    out = proc.stdout.read()
    code = proc.wait()
    elapsed = time.perf_counter() - started
    stderr = "".join(lines)
    if code != 0:
        raise SystemExit(f"bake {' '.join(args)} failed:\n{stderr[-3000:]}")
    return elapsed, json.loads(out), stderr


def _is_step_end(line: str) -> bool:
    words = line.split()
    return len(words) == 3 and words[0].startswith("#") and words[1] == "DONE"


def docker_root_used() -> int:
    usage = shutil.disk_usage("/var/lib/docker")
    return usage.used


def empty_wheelhouse(engine: Engine) -> None:
    """Drop the engine's wheelhouse (its BuildKit cache record), for a cold start."""
    df = engine.disk_usage()
    for record in df.get("BuildCache") or []:
        text = str(record.get("Description") or "")
        if record.get("Type") == "exec.cachemount" and f"cached mount {MOUNT} " in text:
            subprocess.run(["docker", "builder", "prune", "-f", "--filter",
                            f"id={record['ID']}"], capture_output=True, check=False)


def drop_build_cache(engine: Engine, since: str) -> None:
    """Remove the build cache this bench's removed images leave (each 6 GB torch install
    stays in BuildKit's cache after its image goes): the install steps made since ``since``
    that no image shares any more, children first (BuildKit removes one record at a time)."""
    records = {r["ID"]: r for r in engine.disk_usage().get("BuildCache") or []}
    children: dict[str, list[str]] = {}
    for record in records.values():
        children.setdefault(str(record.get("Parent") or ""), []).append(record["ID"])

    def below(ident: str) -> list[str]:
        return [x for child in children.get(ident, []) for x in below(child)] + [ident]

    for record in records.values():
        text = str(record.get("Description") or "")
        if (str(record.get("CreatedAt") or "") >= since and "pip install" in text
                and "/opt/venv" in text and not record.get("Shared") and not record.get("InUse")):
            for ident in below(record["ID"]):
                subprocess.run(["docker", "builder", "prune", "-a", "-f", "--filter",
                                f"id={ident}"], capture_output=True, check=False)


def egress_bytes(log: str | None) -> tuple[int, list[str]]:
    """(bytes into the build, hosts) of a build's egress log."""
    if not log:
        return 0, []
    total, hosts = 0, set()
    for line in Path(log).read_text().splitlines():
        entry = json.loads(line)
        total += int(entry.get("bytes_down") or 0)
        if entry.get("host"):
            hosts.add(str(entry["host"]))
    return total, sorted(hosts)


def fetched(stderr: str) -> list[str]:
    return [line.split("bake-install: fetched ", 1)[1].split()[0]
            for line in stderr.splitlines() if "bake-install: fetched " in line]


def pyc_count(engine: Engine, image: str) -> int:
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh",
                           image, "-c", "find /opt/venv -name '*.pyc' | wc -l"],
                          capture_output=True, text=True, check=False)
    return int(proc.stdout.strip() or 0)


def pip_reference(settings: Any, engine: Engine, work: Path) -> tuple[float, str]:
    """Today's pip step on the same job, through bake's proxy with the same policy."""
    context = work / "context"
    (context / "bake").mkdir(parents=True)
    (context / "job").mkdir()
    base = find_template("python", settings.build.templates).default_base
    (context / "Dockerfile").write_text(REFERENCE.format(base=base))
    (context / "bake" / "requirements.txt").write_text("".join(f"{r}\n" for r in TORCH))
    (context / "job" / "main.py").write_text(MAIN)
    secrets = work / "secrets"
    secrets.mkdir(mode=0o700)
    conf = ["[global]"]
    ca = settings.build.ca_bundle
    if ca:
        conf.append("cert = /run/secrets/bake_ca")
    (secrets / "pip.conf").write_text("\n".join(conf) + "\n")
    gateway = engine.bridge_gateway()
    policy = settings.egress_policy.with_own_addresses([gateway])
    with start_build_proxy(policy, gateway, log_path=work / "egress.jsonl",
                           limits=ProxyLimits(max_tunnel_seconds=1800)) as proxy:
        plan = plan_build(find_cli(settings.build.docker_cli), context, iidfile=work / "iid",
                          labels={}, proxy_url=proxy.url, no_network=False,
                          secrets={"bake_pip": secrets / "pip.conf",
                                   **({"bake_ca": Path(ca)} if ca else {})},
                          no_cache=True, engine_env=engine.address.cli_env())
        started = time.perf_counter()
        ends: list[float] = []
        exporting: list[bool] = []

        def seen(line: str) -> None:
            if "exporting to image" in line:
                exporting.append(True)
            if _is_step_end(line) and not exporting:
                ends[:] = [time.perf_counter() - started]

        image = run_build(plan, timeout=1800, on_line=seen)
        PIP_STEPS[:] = ends
        return time.perf_counter() - started, image


PIP_STEPS: list[float] = []  # when the pip build's last step ended (then: the image export)


def main() -> None:
    settings = load_settings(os.environ.get("BAKE_CONFIG") or None)
    engine = Engine.from_settings(settings)
    work = Path(tempfile.mkdtemp(prefix="bake-bench-stacks-"))
    base_env = dict(os.environ)
    made: list[str] = []
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())

    def fresh_env(name: str, stacks: str) -> dict[str, str]:
        """A state of its own (no resolver cache: resolution is timed too), and a config
        with build.stacks set."""
        state = work / f"state-{name}"
        state.mkdir()
        config = work / f"config-{name}.toml"
        source = os.environ.get("BAKE_CONFIG", "")
        text = Path(source).read_text() if source else ""
        config.write_text(_with_stacks(text, stacks))
        return {**base_env, "BAKE_STATE_DIR": str(state), "BAKE_CONFIG": str(config)}

    try:
        print(f"disk before: {shutil.disk_usage('/var/lib/docker').free / 1e9:.1f} GB free")
        # 1. Today's pip step, cold, through bake's proxy.
        pip_s, pip_image = pip_reference(settings, engine, work / "pip")
        made.append(pip_image)
        pip_pyc = pyc_count(engine, pip_image)
        engine.remove_image(pip_image, force=True)
        print(f"pip step: {pip_s:.1f} s, {pip_pyc} .pyc", flush=True)
        # 2. bake, cold: an empty wheelhouse, no stack, no BuildKit cache.  Resolution
        #    (bake lock) is timed on its own: the pip step resolves as it installs, so both
        #    the whole and the build alone are compared.
        empty_wheelhouse(engine)
        cold_job = write_job(work / "cold", TORCH)
        cold_env = fresh_env("cold", "none")
        lock_s, _, _ = bake("lock", str(cold_job), env=cold_env)
        cold_s, cold, cold_err = bake("build", str(cold_job), "--no-cache", env=cold_env)
        cold_steps = LAST_STEP[0]
        if os.environ.get("BENCH_LOG"):
            Path(os.environ["BENCH_LOG"]).write_text(cold_err)
        steps = {name: secs for name, secs in _step_times(cold_err).items()
                 if name in ("bake-tool", "bake-wheels", "deps")}
        made.append(cold["image"])
        cold_pyc = pyc_count(engine, cold["image"])
        engine.remove_image(cold["image"], force=True)
        print(f"bake cold: {cold_s:.1f} s, {cold_pyc} .pyc", flush=True)
        # 3. The stacks, as CI prebakes them (the torch stack's wheels are in the
        #    wheelhouse now: no second download).
        prebake_s, outcomes, _ = bake("prebake", "python", env=fresh_env("prebake", "variants"))
        stacks = {o["variant"]: o for o in outcomes}
        torch_stack = stacks["py311-torch"]["image"]
        # 4. torch + one small package, on the torch stack.
        plus_job = write_job(work / "plus", (*TORCH, SMALL))
        before = docker_root_used()
        plus_s, plus, plus_err = bake("build", str(plus_job), env=fresh_env("plus", "variants"))
        disk = docker_root_used() - before
        made.append(plus["image"])
        adds = _size(engine, plus["image"]) - _size(engine, torch_stack)
        egress, hosts = egress_bytes(plus.get("egress_log"))
        # 5. The sci stack plus one small package.
        sci_job = write_job(work / "sci", (*SCI, SMALL))
        sci_s, sci, _ = bake("build", str(sci_job), env=fresh_env("sci", "variants"))
        made.append(sci["image"])
    finally:
        for image in made:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)
        drop_build_cache(engine, since)
        shutil.rmtree(work, ignore_errors=True)

    pip_steps = PIP_STEPS[0]
    print(f"cold torch job:   bake build {cold_s:.1f} s  vs  pip step {pip_s:.1f} s  "
          f"ratio {cold_s / pip_s:.2f} (goal <= 0.6); with its resolution (bake lock "
          f"{lock_s:.1f} s) {(lock_s + cold_s) / pip_s:.2f}")
    print(f"  until the image export (6 GB of deps: bake's in two layers, which the engine "
          f"writes out in parallel; pip's in one): bake "
          f"{cold_steps:.1f} s vs pip {pip_steps:.1f} s, ratio {cold_steps / pip_steps:.2f}; "
          f"export bake {cold_s - cold_steps:.1f} s, pip {pip_s - pip_steps:.1f} s")
    print(f"  bake steps {steps}; .pyc files: bake {cold_pyc}, pip {pip_pyc}; bake fetched "
          f"{len(fetched(cold_err))} wheels")
    kinds = ", ".join(f"{v}: {o['outcome']}" for v, o in stacks.items())
    print(f"prebake python:   {prebake_s:.1f} s ({kinds})")
    torch_bytes = [f for f in fetched(plus_err) if f.startswith(("torch", "nvidia", "triton"))]
    print(f"torch + {SMALL}: {plus_s:.2f} s (goal <= 10 s) on stack "
          f"{(plus.get('stack') or 'none')[:12]}; adds {adds / 1e6:.2f} MB to the stack, "
          f"docker disk {disk / 1e6:+.1f} MB (goal <= 50 MB); build egress {egress / 1e3:.1f} kB "
          f"from {hosts or 'nowhere'}; fetched {fetched(plus_err) or 'nothing'}; torch/CUDA "
          f"files fetched: {len(torch_bytes)} (goal 0)")
    print(f"sci + {SMALL}:   {sci_s:.2f} s (goal <= 5 s) on stack "
          f"{(sci.get('stack') or 'none')[:12]}")


def _step_times(stderr: str) -> dict[str, float]:
    """Seconds per build stage, from BuildKit's plain progress ("#8 [deps 2/2] RUN ..." and
    "#8 DONE 22.1s")."""
    names: dict[str, str] = {}
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].startswith("#") and words[1].startswith("["):
            names[words[0]] = words[1].lstrip("[")
        elif len(words) == 3 and words[1] == "DONE" and words[0] in names:
            stage = names[words[0]]
            out[stage] = out.get(stage, 0.0) + float(words[2].rstrip("s"))
    return out


def _size(engine: Engine, image: str) -> int:
    info = engine.inspect_image(image)
    return int(info["Size"]) if info else 0


def _with_stacks(config: str, stacks: str) -> str:
    """The seller config with ``build.stacks`` set (a [build] table added when missing)."""
    lines = [line for line in config.splitlines() if not line.strip().startswith("stacks")]
    if "[build]" not in lines:
        lines.append("[build]")
    lines.insert(lines.index("[build]") + 1, f'stacks = "{stacks}"')
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""The plan of a build on a stack, and of a stack itself: what the pipeline holds before
anything runs (STYLE rule 16).  No engine, no network."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bake.builder.buildkit import DockerCLI
from bake.cache.key import compute_key
from bake.engine import Engine
from bake.lookup import Lookup
from bake.pipeline import JobPlan, plan_job, plan_stack
from bake.settings import BuildSettings, Settings
from bake.stacks.choice import Choice, Held, Stack, choose, need_of
from bake.stacks.labels import PARENT, STACK, VARIANT, read_stack
from bake.stacks.wheelhouse import MOUNT
from tests.conftest import write_job
from tests.unit.helpers import resolved
from tests.unit.test_pipeline_attacks import check_argv, check_dockerfile, instructions

CLI = DockerCLI(("/usr/bin/docker", "build"), (("DOCKER_BUILDKIT", "1"),), "20.10.24",
                "/usr/bin/docker")
SPEC = """\
template = "python"
[python]
requirements = ["torch==2.15.0", "numpy==2.3.5", "tabulate==0.9.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""


def _found(tmp_path: Path, spec: str = SPEC, **build: object) -> Lookup:
    job = resolved(write_job(tmp_path, spec, {"main.py": "print(1)\n"}))
    key = compute_key(job)
    settings = Settings(build=BuildSettings(**build))  # type: ignore[arg-type]
    return Lookup(settings, Engine(), job, key, key.image("bake"), present=False)


def _stack_of(found: Lookup, *names: str, variant: str = "python/torch") -> Stack:
    need = need_of(found.job)
    held = Held(need.base_digest, need.recipe, need.python,
                frozenset(w.sha256 for w in need.wheels if w.name in names))
    return Stack(f"bake:{held.key}", held, variant)


def _plan(found: Lookup, on: Choice | None = None) -> JobPlan:
    return plan_job(found, cli=CLI, gateway="172.17.0.1", on=on)


def test_on_a_stack_the_deps_start_from_it_and_install_only_the_rest(tmp_path: Path) -> None:
    found = _found(tmp_path)
    stack = _stack_of(found, "torch", "numpy")
    on = choose(need_of(found.job), [stack], "variants")
    assert on.stack == stack
    plan = _plan(found, on)
    dockerfile = plan.context.dockerfile
    check_dockerfile(dockerfile, found.job.base_from, stacks=(stack.image,))
    assert f"FROM {stack.image} AS deps" in dockerfile
    deps = dockerfile.split(" AS deps", 1)[1].split("\nFROM ", 1)[0]
    assert "python3 -m venv" not in deps  # the stack's venv, as it is
    files = {f.path: f.data for f in plan.context.files}
    tabulate = next(d for d in found.job.lock.distributions if d.name == "tabulate")
    # Only the rest: fetched into the wheelhouse and installed, torch and numpy neither.
    assert json.loads(files["bake/wheelhouse/files.json"] or b"")["files"] == [
        {"file": tabulate.file, "url": tabulate.url, "sha256": tabulate.sha256}]
    assert files["bake/wheelhouse/wheels.txt"] == (
        f"--find-links {MOUNT}/{tabulate.sha256}\n"
        f"tabulate==0.9.0 --hash=sha256:{tabulate.sha256}\n").encode()
    # The choice is in a label, and changes neither the key nor the image's name.
    assert plan.labels[PARENT] == stack.key and plan.labels[STACK] == ""
    on_base = _plan(found)
    assert (plan.key, plan.image) == (on_base.key, on_base.image)
    assert on_base.labels[PARENT] == "" and "FROM python:3.11-slim AS deps" in (
        on_base.context.dockerfile)
    check_argv(plan.build_plan(Path("/w"), proxy_url=None, cache_from=(),
                               nonce="e" * 32).argv)


def test_a_stack_with_all_of_it_adds_no_install_step(tmp_path: Path) -> None:
    found = _found(tmp_path)
    stack = _stack_of(found, "torch", "numpy", "tabulate")
    plan = _plan(found, choose(need_of(found.job), [stack], "images"))
    steps = instructions(plan.context.dockerfile)
    # No tool stage, no wheelhouse step: the deps stage is the stack, as it is.
    assert [s.text.split()[1] for s in steps if s.keyword == "FROM"] == [stack.image, "deps"]
    assert not [s for s in steps if s.keyword == "RUN"]
    argv = plan.build_plan(Path("/w"), proxy_url=None, cache_from=(), nonce="e" * 32).argv
    assert not any(a.startswith("BAKE_WHEELHOUSE_NONCE") for a in argv)


def test_sdists_are_built_in_the_jobs_own_step_even_on_a_stack(tmp_path: Path) -> None:
    found = _found(tmp_path)
    job = found.job
    assert job.lock.python is not None
    dists = tuple(dataclasses.replace(d, file=f"{d.name}-{d.version}.tar.gz",
                                      url=d.url.rsplit("/", 1)[0] + f"/{d.name}-{d.version}"
                                      ".tar.gz")
                  if d.name == "tabulate" else d for d in job.lock.python.distributions)
    lock = dataclasses.replace(job.lock, python=dataclasses.replace(job.lock.python,
                                                                    distributions=dists))
    found = dataclasses.replace(found, job=job.locked(lock))
    stack = _stack_of(found, "torch", "numpy")
    plan = _plan(found, choose(need_of(found.job), [stack], "variants"))
    dockerfile = plan.context.dockerfile
    check_dockerfile(dockerfile, found.job.base_from, stacks=(stack.image,))
    deps = dockerfile.split(" AS deps", 1)[1].split("\nFROM ", 1)[0]
    assert "type=cache" not in deps and "sdists.txt" in deps  # no wheelhouse where it builds
    assert "bake-wheels" not in dockerfile  # every wheel was on the stack: nothing to fetch
    files = {f.path for f in plan.context.files}
    assert {"bake/install/sdists/files.json", "bake/install/sdists/sdists.txt"} <= files


def test_a_stack_is_the_deps_stage_named_and_labelled_by_what_it_holds(tmp_path: Path) -> None:
    found = _found(tmp_path)
    on = Choice(None, need_of(found.job).wheels)
    plan = plan_stack(found, cli=CLI, gateway="172.17.0.1", on=on, variant="python/torch")
    held = need_of(found.job).held
    assert plan.target == "deps" and plan.image == f"bake:{held.key}"
    assert plan.key.digest == held.key and not plan.self_check
    assert read_stack(plan.image, held.key, plan.labels) == Stack(plan.image, held,
                                                                  "python/torch")
    assert plan.labels[VARIANT] == "python/torch" and plan.labels["bake.key"] == held.key
    assert json.loads(plan.labels["bake.manifest"]) == held.manifest()
    argv = plan.build_plan(Path("/w"), proxy_url=None, cache_from=(), nonce="e" * 32).argv
    assert argv[argv.index("--target") + 1] == "deps"
    # The same context as the job's: BuildKit answers the stack from the job's build.
    assert plan.context == _plan(found, on).context


def test_no_cache_fetches_and_checks_every_wheel_again(tmp_path: Path) -> None:
    found = _found(tmp_path)
    plan = plan_job(found, cli=CLI, gateway="172.17.0.1", no_cache=True)
    files = {f.path: f.data for f in plan.context.files}
    assert json.loads(files["bake/wheelhouse/files.json"] or b"")["refetch"] is True


def test_a_stack_too_large_for_its_label_is_refused_in_one_line(tmp_path: Path) -> None:
    import pytest

    from bake.errors import ConfigError

    found = _found(tmp_path)
    python = found.job.lock.python
    assert python is not None
    one = python.distributions[0]
    where = one.url.rsplit("/", 1)[0]
    many = tuple(dataclasses.replace(one, name=f"pkg{i}", sha256=f"{i:064x}",
                                     file=f"pkg{i}-1.0-py3-none-any.whl",
                                     url=f"{where}/pkg{i}-1.0-py3-none-any.whl")
                 for i in range(1900))  # a lock may hold more than the 1000 it declares
    lock = dataclasses.replace(found.job.lock, python=dataclasses.replace(
        python, distributions=many))
    found = dataclasses.replace(found, job=found.job.locked(lock))
    with pytest.raises(ConfigError, match="more than its label can name"):
        plan_stack(found, cli=CLI, gateway="172.17.0.1", on=Choice(None, ()))

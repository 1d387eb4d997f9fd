"""Every task of the project (STYLE.md rule 13): lint, typecheck, tests, bench, demo.

``nox -s lint typecheck tests`` is what ``scripts/test`` and CI run: the house rules
are gates, not advice.  ``tests`` assumes the host set-up that ``scripts/bootstrap``
makes (a Docker Engine, a base image, .bake/config.toml).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests (real Engine, real registry, real PyPI via the proxy)."""
    session.install("-e", ".[test]")
    args = session.posargs or ["tests"]
    session.run("pytest", "-W", "error", "-p", "no:cacheprovider", "--durations=15", *args)


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """The unit tier alone: no engine, no network, seconds."""
    session.install("-e", ".[test]")
    session.run("pytest", "-W", "error", "tests/unit", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (style, the one-doorway bans, own imports at the top) and the import contract."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "bake", "tests", "bench", "noxfile.py", "scripts")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.11")
    session.run("mypy", "--strict", "bake")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against plain docker build / a direct download, one run each.

    bake is installed as a user installs it (a wheel, not an editable link): the key
    hit is measured with the start-up a user's bake has.
    """
    session.install(".")
    session.install("--force-reinstall", "--no-deps", ".")  # this checkout's code, always
    env = {"BAKE_CONFIG": os.path.abspath(".bake/config.toml")}
    scripts = session.posargs or sorted(
        f"bench/{name}" for name in os.listdir("bench") if name.startswith("bench_")
    )
    for script in scripts:
        session.run("python", script, env=env)


@nox.session(python=False)
def demo(session: nox.Session) -> None:
    """The README's demo: bake a real job and run it offline."""
    session.run("scripts/demo", external=True)

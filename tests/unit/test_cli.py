"""The command line: every command's exit codes, and the fast path agreeing with the typer app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bake import cli, fast, pipeline
from bake.errors import (
    BakeError,
    ConfigError,
    ConfinementError,
    EngineError,
    Interrupted,
    RegistryError,
    SetupError,
    SetupTimeout,
    SpecError,
    UsageError,
)
from bake.settings import Settings
from bake.types import BuildResult

# Every command, with arguments it accepts.
COMMANDS = [
    ["build", "spec"], ["key", "spec"], ["render", "spec", "-o", "out"], ["prebake"],
    ["pull", "spec"], ["push", "spec"], ["images"], ["prune", "--older-than", "7d"],
    ["egress", "lock"], ["egress", "unlock"], ["egress", "status"], ["proxy"],
    ["base", "build"], ["doctor"], ["run", "spec"],
]
ERRORS = [
    (SpecError("bad field", field="x"), 2), (ConfigError("bad setting", field="y"), 2),
    (UsageError("bad argument"), 2), (SetupError("setup failed"), 3),
    (SetupTimeout("too slow"), 4), (ConfinementError("not proven"), 5),
    (EngineError("no engine", unreachable=True), 1), (RegistryError("registry down"), 1),
    (BakeError("anything else"), 1), (Interrupted(15), 143), (Interrupted(2), 130),
]


def invoke(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    code = done.value.code
    return code if isinstance(code, int) else 0


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Every command fails with the error the test puts in the list."""
    error: list[BaseException] = []

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error[0]

    monkeypatch.setattr(cli, "_settings", fail)
    monkeypatch.setattr(cli.lockdown, "unlock", fail)
    monkeypatch.setattr(cli, "run_checks", fail)
    return error


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize(("exc", "code"), ERRORS, ids=lambda v: type(v).__name__
                         if isinstance(v, BaseException) else str(v))
def test_every_command_maps_errors_to_their_exit_codes(
        failing: list[BaseException], capsys: pytest.CaptureFixture[str], argv: list[str],
        exc: BakeError, code: int) -> None:
    failing.append(exc)
    got = invoke(argv)
    err = capsys.readouterr().err
    if argv[0] == "run" and not isinstance(exc, Interrupted):
        # `docker run`'s convention: 125 when the tool fails before the job starts.
        assert got == 125
    else:
        assert got == code
    assert "Traceback" not in err and exc.message in err


@pytest.mark.parametrize("argv", [
    ["lock", "spec"],  # not a command (yet): was exit 1, "unexpected UsageError ... report it"
    ["bild", "spec"],
    ["build"],  # missing SPEC
    ["build", "spec", "--bogus"],
    ["build", "spec", "other"],
    ["build", "spec", "--config", "f.toml"],  # --config belongs before the command
    ["--bogus"],
    ["prune", "--older-than", "soon"],
    ["prune", "--keep-size", "lots"],
    ["egress", "sideways"],
], ids=lambda a: " ".join(a))
def test_unknown_commands_and_bad_arguments_are_exit_2_with_usage(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: list[str]) -> None:
    monkeypatch.setattr(cli, "_settings", lambda: Settings())
    assert invoke(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected Usage" not in err and "report it" not in err
    assert "Usage:" in err or "error:" in err


def test_an_unexpected_exception_says_report_it_and_exits_1(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Settings:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_settings", broken)
    assert invoke(["key", "spec"]) == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError: a bug" in err and "--debug" in err
    assert "Traceback" not in err


# -- the fast path and the typer app read the same command lines the same way --------------------

AGREEMENT = [
    ["build", "S"],
    ["build", "S", "--json"],
    ["build", "--json", "S"],
    ["--config", "F", "build", "S"],
    ["--config=F", "build", "S", "--json"],
    ["--debug", "build", "S"],
    ["--config", "F", "--debug", "build", "--json", "S"],
    ["build", "S", "--push"],
    ["build", "S", "--no-push", "--json"],
    ["build", "S", "--no-cache"],  # typer builds; the fast path declines (no hit to answer)
    ["build", "S", "--config", "F"],  # typer refuses; the fast path must not answer
    ["build"],
    ["build", "S", "T"],
    ["build", "S", "--bogus"],
    ["build", "S", "--json=1"],
    ["build", "-h"],
    ["build", "--", "S"],
    ["--config", "build", "S"],
    ["--version"],
    ["key", "S"],
    ["--config"],
    [],
]


@pytest.mark.parametrize("argv", AGREEMENT, ids=lambda a: " ".join(a) or "(none)")
def test_the_fast_path_answers_only_what_the_cli_would_run_the_same_way(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    seen: dict[str, Any] = {}

    def settings() -> Settings:
        seen["config"] = cli.state.config
        return Settings()

    def build(spec: Path, **kwargs: Any) -> BuildResult:
        seen["spec"] = str(spec)
        return BuildResult(f"bake:{'a' * 64}", "a" * 64, 0.01, cached=True)

    monkeypatch.setattr(cli, "_settings", settings)
    monkeypatch.setattr(pipeline, "build", build)
    code = invoke(list(argv))
    out = capsys.readouterr().out
    answer = fast.parse(list(argv))
    if answer is None:
        return  # the CLI decides, whatever it decides
    assert code == 0, f"the fast path would answer {argv}, which the CLI refuses"
    assert seen["spec"] == answer.spec and seen["config"] == answer.config
    assert (out.strip().startswith("{")) is answer.json


def test_the_fast_path_goes_on_to_the_cli_when_it_cannot_answer(tmp_path: Path) -> None:
    (tmp_path / "bake.toml").write_text('[job]\ncommand = ["python", "x.py"]\n')
    # No record of a lookup of this spec: no answer, no error, the CLI takes over.
    assert fast.try_hit(["build", str(tmp_path)]) is None
    assert fast.try_hit(["build", str(tmp_path / "missing")]) is None
    assert fast.try_hit(["key", str(tmp_path)]) is None


def test_importing_the_fast_path_loads_no_heavy_library() -> None:
    """A remembered key hit loads neither the lookup's modules nor the build machinery."""
    code = ("import sys, bake.fast; print(' '.join(sorted(m for m in sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    heavy = {"asyncio", "docker", "jinja2", "typer", "rich", "packaging", "huggingface_hub",
             "click", "urllib.request", "http.client", "ssl", "subprocess", "tomllib",
             "bake.pipeline", "bake.cli", "bake.egress.proxy", "bake.builder.buildkit",
             "bake.lookup", "bake.spec", "bake.settings", "bake.egress.policy"}
    assert "bake.cache.hits" in loaded
    assert not heavy & loaded, heavy & loaded

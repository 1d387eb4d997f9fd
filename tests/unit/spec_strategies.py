"""Hypothesis strategies for job specs: mostly valid values, hostile ones mixed in.

Shared by the parser fuzz (test_fuzz.py) and the render fuzz (test_build_attacks.py).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

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


def make_job_root(root: Path) -> Path:
    """A job folder with a file, a folder, a link out of it and two requirements files."""
    (root / "main.py").write_text("print(1)\n")
    (root / "data").mkdir()
    (root / "data" / "x.txt").write_text("x")
    (root / "sub").mkdir()
    (root / "sub" / "mod.py").write_text("")
    (root / "out-link").symlink_to("/etc/passwd")
    (root / "reqs.txt").write_text("six==1.16.0\n--index-url https://evil.example\n")
    (root / "good-reqs.txt").write_text("# pinned\nsix==1.16.0\nidna>=3\n")
    return root.resolve()

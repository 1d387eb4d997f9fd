"""Rendered Dockerfiles against golden files, and the exact build context.

Regenerate the golden files after an intended template change with
``BAKE_TEST_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`` and read the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from bake.builder.render import render
from bake.job import ResolvedJob
from bake.stacks.wheelhouse import CACHE_ID, MOUNT
from tests.conftest import write_job
from tests.unit.helpers import resolved

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "python-requirements": ("""\
template = "python"
[python]
requirements = ["six==1.16.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
""", {"ca_bundle": False}),
    "python-ca-sdist": ("""\
template = "python"
[python]
requirements = ["six==1.16.0"]
only_binary = false
[job]
command = ["python", "-c", "print(1)"]
""", {"ca_bundle": True}),
    "python-no-requirements": ("""\
[job]
command = ["python", "-c", "print(1)"]
""", {"ca_bundle": False}),
    "transformers-model-dataset": ("""\
template = "transformers"
[python]
requirements = ["transformers==5.24.0"]
[[models]]
repo = "bake-demo/tiny-sentiment"
include = ["*.json", "*.safetensors"]
[[datasets]]
repo = "bake-demo/tiny-reviews"
revision = "v1.0"
include = ["data/validation.csv"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
""", {"ca_bundle": False, "hub_token": False}),
    "transformers-ca-token": ("""\
template = "transformers"
[[models]]
repo = "org/gated"
[job]
command = ["python", "-c", "print(1)"]
""", {"ca_bundle": True, "hub_token": True}),
}


def hub_resolved(spec_path: Path) -> ResolvedJob:
    """Locked as the resolvers would: an sdist where the spec allows one (as a resolver might
    pick for a project with no wheel)."""
    job = resolved(spec_path)
    if job.spec.only_binary or job.lock.python is None:
        return job
    six = job.lock.python.distributions[0]
    sdist = dataclasses.replace(six, file="six-1.16.0.tar.gz",
                                url=six.url.rsplit("/", 1)[0] + "/six-1.16.0.tar.gz")
    python = dataclasses.replace(job.lock.python, distributions=(sdist,))
    return job.locked(dataclasses.replace(job.lock, python=python))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_dockerfile(tmp_path: Path, name: str) -> None:
    spec, options = CASES[name]
    job = hub_resolved(write_job(tmp_path, spec, {"main.py": "print(1)\n"}))
    dockerfile = render(job, **options).dockerfile
    golden = GOLDEN / f"{name}.Dockerfile"
    if os.environ.get("BAKE_TEST_UPDATE_GOLDEN"):
        golden.write_text(dockerfile)
    assert dockerfile == golden.read_text()


def test_dockerfile_targets_the_builtin_frontend(tmp_path: Path) -> None:
    job = hub_resolved(write_job(tmp_path, CASES["python-ca-sdist"][0]))
    dockerfile = render(job, ca_bundle=True).dockerfile
    assert "# syntax" not in dockerfile  # would pull a frontend image from a registry
    assert "<<" not in dockerfile  # heredocs: not in Engine 20.10's frontend
    assert "--network" not in dockerfile and "--security" not in dockerfile


def test_the_one_shared_cache_is_written_only_by_bakes_own_step(tmp_path: Path) -> None:
    """A cache shared between jobs would let one job plant files for another: the
    wheelhouse is the only one, writable in bake's wheelhouse step alone (no buyer code)
    and read-only where the job's venv is installed."""
    job = resolved(write_job(tmp_path, CASES["python-requirements"][0], {"main.py": "x"}))
    stages = _stages(render(job, ca_bundle=True).dockerfile)
    caches = {name: re.findall(r"--mount=type=cache,\S+", text) for name, text in stages.items()}
    assert caches == {
        "bake-tool": [], "job": [],
        "bake-wheels": [f"--mount=type=cache,id={CACHE_ID},target={MOUNT},sharing=shared"],
        "deps": [f"--mount=type=cache,id={CACHE_ID},target={MOUNT},readonly"],
    }
    # The sdist step (buyer code: the sdist's build) does not mount it at all.
    sdist = hub_resolved(write_job(tmp_path / "s", CASES["python-ca-sdist"][0]))
    assert "type=cache" not in render(sdist, ca_bundle=True).dockerfile


def test_the_lock_travels_as_files_not_as_dockerfile_text(tmp_path: Path) -> None:
    job = resolved(write_job(tmp_path, CASES["python-requirements"][0], {"main.py": "x"}))
    context = render(job, ca_bundle=False)
    assert "six" not in context.dockerfile
    files = {f.path: f for f in context.files}
    (six,) = job.lock.distributions
    # Exactly the locked file, by name, version and hash (uv --require-hashes --no-deps),
    # from its own folder in the wheelhouse ...
    assert files["bake/wheelhouse/wheels.txt"].data == (
        f"--find-links {MOUNT}/{six.sha256}\nsix==1.16.0 --hash=sha256:{six.sha256}\n".encode())
    # ... where bake's wheelhouse step puts it, fetched by its locked URL and checked.
    assert json.loads(files["bake/wheelhouse/files.json"].data or b"") == {
        "format": 1, "refetch": False,
        "files": [{"file": six.file, "url": six.url, "sha256": six.sha256}]}


def test_context_holds_exactly_the_declared_files(tmp_path: Path) -> None:
    spec_path = write_job(tmp_path / "job", CASES["python-requirements"][0],
                          {"main.py": "print(1)\n", "secret.txt": "not declared\n"})
    context = render(resolved(spec_path), ca_bundle=False)
    out = context.write(tmp_path / "ctx")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["Dockerfile", "bake/tool-requirements.txt", "bake/wheelhouse/files.json",
                       "bake/wheelhouse/wheelfetch.py", "bake/wheelhouse/wheels.txt",
                       "job/main.py"]


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    job = resolved(write_job(tmp_path, CASES["python-requirements"][0], {"main.py": "x"}))
    assert render(job, ca_bundle=True) == render(job, ca_bundle=True)


# -- models and datasets ---------------------------------------------------------------------


def _stages(dockerfile: str) -> dict[str, str]:
    """Each stage's text by its name (``FROM ... AS name``)."""
    stages: dict[str, str] = {}
    name = ""
    for line in dockerfile.splitlines(keepends=True):
        if line.startswith("FROM "):
            name = line.split()[-1]
        if name:
            stages[name] = stages.get(name, "") + line
    return stages


def _hub_job(tmp_path: Path, name: str = "transformers-model-dataset") -> ResolvedJob:
    return hub_resolved(write_job(tmp_path, CASES[name][0], {"main.py": "print(1)\n"}))


def test_each_repo_is_fetched_in_its_own_stage_and_copied_as_its_own_layer(
        tmp_path: Path) -> None:
    job = _hub_job(tmp_path)
    dockerfile = render(job, ca_bundle=False).dockerfile
    stages = _stages(dockerfile)
    assert list(stages) == ["bake-tool", "bake-wheels", "deps", "fetcher", "hub-0", "hub-1",
                            "job"]
    job_stage = stages["job"].splitlines()
    copies = [i for i, line in enumerate(job_stage) if line.startswith("COPY --from=hub-")]
    job_files = job_stage.index("COPY job/ /job/")
    # One COPY per repo, in order, after the deps (the stage's parent) and before the job's files.
    assert [job_stage[i] for i in copies] == ["COPY --from=hub-0 /out/ /",
                                              "COPY --from=hub-1 /out/ /"]
    assert max(copies) < job_files
    assert "ENV HF_HOME=/opt/hf" in stages["job"] and "HF_HUB_OFFLINE=1" in stages["job"]
    assert "TRANSFORMERS_OFFLINE=1" in stages["job"]
    for i, repo in enumerate(job.hub_repos):
        assert (f"# {repo.kind} {repo.repo} @ {repo.commit}\nFROM fetcher AS hub-{i}\n"
                in dockerfile)
        assert f"hubfetch.py fetch /opt/bake/hub/{i}.json" in stages[f"hub-{i}"]


def test_fetch_stages_see_no_buyer_input_and_the_token_only_there(tmp_path: Path) -> None:
    job = _hub_job(tmp_path)
    stages = _stages(render(job, ca_bundle=True, hub_token=True).dockerfile)
    for name, text in stages.items():
        fetching = name == "fetcher" or name.startswith("hub-")
        # Buyer input (requirements, job files) never enters a stage that holds the token.
        if fetching:
            assert "requirements.txt" not in text and "job/" not in text
            assert text.startswith(("FROM python:3.11-slim AS fetcher", "FROM fetcher AS"))
        assert ("id=hf_token" in text) == name.startswith("hub-"), name
        assert ("id=bake_hf_endpoint" in text) == name.startswith("hub-"), name
    # The fetcher's client comes through pip with the seller's config and CA, like the deps.
    assert "id=bake_pip" in stages["fetcher"] and "id=bake_ca" in stages["fetcher"]
    assert "SSL_CERT_FILE=/run/secrets/bake_ca" in stages["hub-0"]


def test_no_token_mount_without_a_token(tmp_path: Path) -> None:
    dockerfile = render(_hub_job(tmp_path), ca_bundle=False, hub_token=False).dockerfile
    assert "hf_token" not in dockerfile and "bake_ca" not in dockerfile


def test_spec_values_reach_the_dockerfile_only_as_validated_words(tmp_path: Path) -> None:
    job = _hub_job(tmp_path)
    context = render(job, ca_bundle=False)
    # Patterns and the revision name travel in bake/hub/<i>.json, not in the Dockerfile text.
    for text in ("*.json", "*.safetensors", "data/validation.csv", "v1.0"):
        assert text not in context.dockerfile
    files = {f.path: f for f in context.files}
    doc = json.loads(files["bake/hub/1.json"].data or b"")
    assert doc == {"kind": "dataset", "repo": "bake-demo/tiny-reviews",
                   "commit": job.datasets[0].commit, "revision": "v1.0",
                   "include": ["data/validation.csv"], "exclude": [],
                   "files": [{"path": "config.json", "size": 2, "blob": "a" * 40}]}


def test_hub_context_holds_the_client_pin_the_script_and_one_spec_per_repo(
        tmp_path: Path) -> None:
    context = render(_hub_job(tmp_path), ca_bundle=False)
    out = context.write(tmp_path / "ctx")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["Dockerfile", "bake/hub-client.txt", "bake/hub/0.json", "bake/hub/1.json",
                       "bake/hubfetch.py", "bake/tool-requirements.txt",
                       "bake/wheelhouse/files.json", "bake/wheelhouse/wheelfetch.py",
                       "bake/wheelhouse/wheels.txt", "job/main.py"]
    # Every file of the client and its dependencies pinned by hash (pip --require-hashes
    # --no-deps): one logical line per pin, an exact version, and its files' digests.
    text = (out / "bake/hub-client.txt").read_text()
    logical = [line.split("#", 1)[0].strip() for line in text.replace("\\\n", " ").splitlines()]
    pins = [line for line in logical if line]
    assert len(pins) > 10
    for pin in pins:
        assert re.match(r"[a-z0-9-]+==[0-9][^ ;]* ", pin), pin
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", pin), pin
    assert {p.split(" ")[0] for p in pins} >= {"huggingface-hub==2.4.0", "huggingface-hub==0.36.2"}
    assert "--require-hashes --no-deps -r /tmp/bake/hub-client.txt" in context.dockerfile


def test_jobs_without_models_render_no_hub_stage(tmp_path: Path) -> None:
    job = resolved(write_job(tmp_path, CASES["python-requirements"][0], {"main.py": "x"}))
    dockerfile = render(job, ca_bundle=True, hub_token=True).dockerfile
    assert "fetcher" not in dockerfile and "HF_HOME" not in dockerfile
    assert "hf_token" not in dockerfile


def test_a_job_file_changed_after_the_key_is_refused(tmp_path: Path) -> None:
    from bake.errors import SetupError

    spec_path = write_job(tmp_path / "job", CASES["python-requirements"][0],
                          {"main.py": "print(1)\n"})
    context = render(resolved(spec_path), ca_bundle=False)
    (tmp_path / "job" / "main.py").write_text("print('swapped')\n")
    with pytest.raises(SetupError, match=r"main\.py changed"):
        context.write(tmp_path / "ctx")


def test_a_job_file_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    spec_path = write_job(tmp_path / "job", CASES["python-requirements"][0],
                          {"main.py": "print(1)\n"})
    context = render(resolved(spec_path), ca_bundle=False)
    (tmp_path / "job" / "main.py").unlink()
    (tmp_path / "job" / "main.py").symlink_to("/etc/passwd")
    from bake.errors import SetupError

    with pytest.raises(SetupError, match=r"main\.py"):
        context.write(tmp_path / "ctx")

"""Keys from the lock, and the locked build context: what the declared inputs locked to is keyed,
not the declarations; the build installs and fetches exactly the locked bytes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from bake.builder.render import render
from bake.cache.key import canonical_json, compute_key, explain
from bake.job import PinnedJob
from bake.lock.format import Distribution, LockedFile, PythonLock
from bake.resolve import resolve
from bake.settings import Settings
from bake.spec import load_spec
from tests.conftest import write_job
from tests.unit.helpers import fixed_base
from tests.unit.lock_samples import DATA, DISTS, MODEL, TARGET, declared, sample_lock

SPEC = """\
template = "transformers"
[python]
requirements = ["numpy>=2", "six", "tokenizers"]
[[models]]
repo = "org/model"
include = ["*.json", "*.safetensors"]
[[datasets]]
repo = "org/data"
revision = "v1"
include = ["data/"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""


def _job(tmp_path: Path, spec: str = SPEC) -> PinnedJob:
    path = write_job(tmp_path / "job", spec, {"main.py": "print(1)\n"})
    return resolve(load_spec(path), Settings(), base_lookup=fixed_base)


def test_the_key_follows_the_lock_not_the_declared_ranges(tmp_path: Path) -> None:
    job = _job(tmp_path)
    lock = sample_lock()
    key = compute_key(job.locked(lock))
    text = canonical_json(key.manifest)
    assert "numpy>=2" not in text  # the range is not keyed...
    assert DISTS[0].sha256 in text and DISTS[0].file in text  # ...the file it locked to is
    assert MODEL.commit in text and MODEL.files[1].sha256 in text  # type: ignore[operator]
    # Another range that locked to the same files keys the same image.
    widened = replace(lock, declared=declared(requirements=("numpy", "six", "tokenizers")))
    assert compute_key(job.locked(widened)).digest == key.digest


def test_a_new_release_in_the_lock_moves_the_key(tmp_path: Path) -> None:
    job = _job(tmp_path)
    lock = sample_lock()
    numpy = Distribution("numpy", "2.2.0", "numpy-2.2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                         "1" * 64, "https://f.test/numpy-2.2.0-cp311-cp311-manylinux_2_17_x86_64.whl")
    newer = replace(lock, python=PythonLock(TARGET, (numpy, *DISTS[1:])))
    assert compute_key(job.locked(newer)).digest != compute_key(job.locked(lock)).digest


def test_other_bytes_of_a_hub_file_move_the_key(tmp_path: Path) -> None:
    job = _job(tmp_path)
    lock = sample_lock()
    files = (MODEL.files[0], LockedFile("model.safetensors", 4096, sha256="9" * 64))
    moved = replace(lock, models=(replace(MODEL, files=files),))
    assert compute_key(job.locked(moved)).digest != compute_key(job.locked(lock)).digest
    assert compute_key(job.locked(replace(lock, base_digest="sha256:" + "7" * 64))).digest != \
        compute_key(job.locked(lock)).digest


def test_where_a_file_was_served_is_not_keyed(tmp_path: Path) -> None:
    job = _job(tmp_path)
    lock = sample_lock()
    assert lock.python is not None
    mirrored = PythonLock(TARGET, tuple(
        replace(d, url=d.url.replace("https://files.example.test", "http://mirror.test:3141"))
        for d in lock.python.distributions))
    assert compute_key(job.locked(replace(lock, python=mirrored))).digest == \
        compute_key(job.locked(lock)).digest


def test_explain_shows_the_declared_inputs_and_the_lock(tmp_path: Path) -> None:
    job = _job(tmp_path)
    lock = sample_lock()
    doc = explain(job.locked(lock), compute_key(job.locked(lock)))
    assert doc["declared"]["python"]["requirements"] == ["numpy>=2", "six", "tokenizers"]
    assert doc["declared"]["models"][0] == {"repo": "org/model", "revision": "main",
                                            "include": ["*.json", "*.safetensors"], "exclude": []}
    assert doc["locked"] == lock.digest()
    assert doc["manifest"]["python"]["distributions"][0]["version"] == "2.1.3"
    assert doc["manifest"]["datasets"][0]["commit"] == DATA.commit
    json.dumps(doc)  # printable as JSON


# -- the locked build context ---------------------------------------------------------------------


def test_a_locked_context_installs_exactly_the_locked_files_with_hashes(tmp_path: Path) -> None:
    job = _job(tmp_path)
    lock = sample_lock()
    context = render(job.locked(lock), ca_bundle=True)
    files = {f.path: f for f in context.files}
    requirements = files["bake/wheelhouse/wheels.txt"].data
    assert requirements is not None and b">=" not in requirements
    assert requirements.decode().splitlines()[:2] == [
        f"--find-links /opt/bake/wheelhouse/{DISTS[0].sha256}",
        f"numpy==2.1.3 --hash=sha256:{DISTS[0].sha256}"]
    assert json.loads(files["bake/wheelhouse/files.json"].data or b"")["files"][0] == {
        "file": DISTS[0].file, "url": DISTS[0].url, "sha256": DISTS[0].sha256}
    assert "bake/tool-requirements.txt" in files
    dockerfile = context.dockerfile
    assert "FROM python:3.11-slim AS bake-tool" in dockerfile
    assert "--require-hashes --no-index --only-binary :all: --compile-bytecode" in dockerfile
    assert "--no-deps" in dockerfile and "from=bake-tool,source=/opt/bake/tool" in dockerfile
    # bake's wheelhouse step fetches the locked URLs; the job's install step reads them
    # read-only, with no index, no pip config of the seller's, no secret at all.
    deps = dockerfile.split("AS deps", 1)[1].split("\nFROM ", 1)[0]
    assert "type=secret" not in deps and "readonly" in deps
    wheels = dockerfile.split("AS bake-wheels", 1)[1].split("\nFROM ", 1)[0]
    assert "id=bake_index" in wheels and "id=bake_ca" in wheels and "bake_pip" not in wheels


def test_a_locked_context_fetches_the_locked_commit_and_checks_every_file(tmp_path: Path) -> None:
    job = _job(tmp_path)
    lock = sample_lock()
    files = {f.path: f for f in render(job.locked(lock), ca_bundle=False).files}
    model = json.loads(files["bake/hub/0.json"].data or b"")
    data = json.loads(files["bake/hub/1.json"].data or b"")
    assert model["commit"] == MODEL.commit and data["commit"] == DATA.commit
    assert model["files"] == [
        {"path": "config.json", "size": 23, "blob": "a" * 40},
        {"path": "model.safetensors", "size": 4096, "sha256": "d" * 64},
    ]


def test_rendering_a_lock_is_deterministic(tmp_path: Path) -> None:
    job = _job(tmp_path)
    one = render(job.locked(sample_lock()), ca_bundle=True)
    two = render(job.locked(sample_lock()), ca_bundle=True)
    assert one.dockerfile == two.dockerfile
    assert [(f.path, f.data) for f in one.files] == [(f.path, f.data) for f in two.files]

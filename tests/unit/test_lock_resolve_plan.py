"""The resolve build as a plan (no engine): its context and argv."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bake.builder.buildkit import DockerCLI, plan_build
from bake.builder.render import render
from bake.lock.format import PythonRequest
from bake.lock.python import resolve_context
from tests.unit.lock_samples import sample_lock
from tests.unit.test_key_lock import _job

REQUEST = PythonRequest(("numpy>=2", "six"), True, "python:3.11-slim", "sha256:" + "b" * 64)


def _tool_stage(dockerfile: str) -> str:
    start = dockerfile.index("FROM python:3.11-slim AS bake-tool")
    return dockerfile[start:dockerfile.index("\nFROM ", start + 1)].strip()


def test_the_resolve_context_holds_the_request_and_bakes_own_files_only() -> None:
    context = resolve_context(REQUEST, ca_bundle=True, nonce="n1")
    files = {f.path: f for f in context.files}
    assert set(files) == {"bake/tool-requirements.txt", "bake/resolve/resolve_step.py",
                          "bake/resolve/requirements.in", "bake/resolve/request.json"}
    assert files["bake/resolve/requirements.in"].data == b"numpy>=2\nsix\n"
    assert json.loads(files["bake/resolve/request.json"].data or b"") == {
        "only_binary": True, "nonce": "n1"}
    dockerfile = context.dockerfile
    assert "# syntax" not in dockerfile
    assert dockerfile.rstrip().endswith("FROM scratch\nCOPY --from=bake-resolve /out/ /")
    step = dockerfile.split("AS bake-resolve", 1)[1].split("\nFROM ", 1)[0]
    # Buyer code may run in this step (sdists): the index URL and the CA, no pip config.
    assert "id=bake_index" in step and "id=bake_ca" in step and "bake_pip" not in step
    no_ca = resolve_context(REQUEST, ca_bundle=False, nonce="n1").dockerfile
    assert "bake_ca" not in no_ca


def test_every_resolution_is_a_new_step_for_buildkit() -> None:
    one = {f.path: f.data for f in resolve_context(REQUEST, ca_bundle=False, nonce="a").files}
    two = {f.path: f.data for f in resolve_context(REQUEST, ca_bundle=False, nonce="b").files}
    assert one["bake/resolve/request.json"] != two["bake/resolve/request.json"]


def test_the_tool_stage_is_the_same_in_the_resolve_build_and_the_job_build(
    tmp_path: Path,
) -> None:
    # Same text, same files: BuildKit builds it once per base for both builds.
    job = render(_job(tmp_path).locked(sample_lock()), ca_bundle=True)
    resolver = resolve_context(REQUEST, ca_bundle=True, nonce="x")
    assert _tool_stage(job.dockerfile) == _tool_stage(resolver.dockerfile)
    assert {f.path: f.source for f in job.files}["bake/tool-requirements.txt"] == \
        {f.path: f.source for f in resolver.files}["bake/tool-requirements.txt"]
    tool = Path(str({f.path: f.source for f in job.files}["bake/tool-requirements.txt"]))
    pins = [line for line in tool.read_text().splitlines() if line.startswith("uv==")]
    assert len(pins) == 1 and "--hash=sha256:" in tool.read_text()


def test_a_local_export_keeps_no_image(tmp_path: Path) -> None:
    buildx = DockerCLI(("docker", "buildx", "build", "--load"))
    plan = plan_build(buildx, tmp_path, iidfile=tmp_path / "iid", labels={}, proxy_url="http://p:1",
                      no_network=False, secrets={}, output=tmp_path / "out")
    assert f"type=local,dest={tmp_path / 'out'}" in plan.argv
    assert "--load" not in plan.argv and "--iidfile" not in plan.argv
    classic = plan_build(DockerCLI(("/usr/bin/docker", "build")), tmp_path, iidfile=tmp_path / "i",
                         labels={}, proxy_url=None, no_network=True, secrets={})
    assert "--iidfile" in classic.argv and "--output" not in classic.argv


def test_with_a_seller_index_the_resolve_step_asks_the_relay_and_the_lock_keeps_upstream_urls(
) -> None:
    from bake.builder.buildkit import DockerCLI as CLI
    from bake.pipeline import plan_resolve
    from bake.settings import BuildSettings, EgressSettings, Settings

    cfg = Settings(build=BuildSettings(pip_index_url="https://seller:s3cret@mirror.test/simple/"),
                   egress=EgressSettings(allow=("mirror.test",)))
    plan = plan_resolve(REQUEST, cfg, cli=CLI(("/usr/bin/docker", "build")),
                        gateway="172.17.0.1", engine_env={}, nonce="n")
    assert plan.relay is not None
    proxy = "http://172.17.0.1:39100"
    late = {s.name: s for s in plan.secrets}
    assert set(late) == {"bake_pip", "bake_index"}  # both written once the proxy listens
    from bake.pipeline import _late_texts

    texts = _late_texts(plan.relay, proxy, plan.secrets)
    assert texts["bake_index"] == f"{proxy}/bake-index/simple/"
    assert all("s3cret" not in t and "mirror.test" not in t for t in texts.values())
    # A file URL as uv saw it (the relay, this build's port) -> as the lock keeps it.
    assert plan.upstream_url(f"{proxy}/bake-index/origin/files/six-1.16.0-py3-none-any.whl",
                             proxy) == "https://mirror.test/files/six-1.16.0-py3-none-any.whl"
    # Files on another host (a CDN) stay as they are.
    assert plan.upstream_url("https://cdn.test/six.whl", proxy) == "https://cdn.test/six.whl"


def test_a_locked_file_on_the_seller_index_is_fetched_through_the_relay(tmp_path: Path) -> None:
    from bake.egress.relay import IndexRelay

    relay = IndexRelay.from_url("https://seller:s3cret@mirror.test/simple/")
    lock = sample_lock()
    assert lock.python is not None
    mirrored = dataclasses.replace(lock.python, distributions=(
        dataclasses.replace(lock.python.distributions[0],
                            url="https://mirror.test/files/" + lock.python.distributions[0].file),
        *lock.python.distributions[1:]))
    job = _job(tmp_path).locked(dataclasses.replace(lock, python=mirrored))
    context = render(job, ca_bundle=False, relay_path=relay.relay_path)
    doc = {f.path: f for f in context.files}["bake/wheelhouse/files.json"].data or b""
    files = json.loads(doc)["files"]
    assert files[0]["url"] == "/bake-index/origin/files/" + mirrored.distributions[0].file
    assert files[1]["url"] == lock.python.distributions[1].url  # another host: as locked
    wheels = context.dockerfile.split("AS bake-wheels", 1)[1].split("\nFROM ", 1)[0]
    assert "id=bake_index" in wheels  # where the relay is

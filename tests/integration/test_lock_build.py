"""The lock with real parts, through the CLI: a local PEP 503 index (tests/integration/pkgindex.py)
and tests/hubserver.py with the real Hub client, uv's resolution as a confined BuildKit step
through bake's proxy, and locked builds that install and fetch exactly the locked bytes.

- a range resolves to 1.0; a 1.1 release keeps the key until the TTL passes (or `bake lock
  --upgrade`), then the key moves and the image holds 1.1;
- other bytes under a locked file name: exit 3 naming the file and both digests, no image;
- index and Hub stopped: a baked job still builds (a hit) and runs, with a warning;
- a shipped bake.lock builds with the index stopped (its layers in the engine's build cache);
- malformed locks: exit 2 naming the field;
- the build's egress log and step log reconcile with its lock;
- buyer code in the resolve step (an sdist's metadata build) sees no seller secret and cannot
  forge the resolution.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bake.errors import SetupError
from bake.lock.format import PythonRequest, parse_lock
from bake.lock.locking import index_url_of
from bake.pipeline import resolve_requirements
from bake.types import NullReporter
from tests.integration.conftest import ENGINE, Host
from tests.integration.pkgindex import (
    RunningIndex,
    fetch_build_deps,
    fetch_hub_client,
    fetch_tool,
    sdist,
    serve_index,
    wheel,
    write_simple_index,
)
from tests.integration.test_fast_path import fast_build

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import HubRepo, RunningHub, start_hub

DEMO = "bakedemo"

# Buyer code in the resolve step (an sdist's metadata build, only_binary = false): it looks for
# what the seller might have left in reach, and says so in its failure.
PEEK_SETUP = """\
import json, os
found = {"secrets": sorted(os.listdir("/run/secrets")) if os.path.isdir("/run/secrets") else [],
         "env": sorted(k for k in os.environ if any(w in k for w in ("TOKEN", "PIP", "HF_")))}
for name in found["secrets"]:
    try:
        found[name] = open(os.path.join("/run/secrets", name)).read(200)
    except OSError as exc:
        found[name] = str(exc)
raise SystemExit("PEEK " + json.dumps(found))
"""
# ... and one that tries to forge the step's result for everyone who asks the same.
FORGE_SETUP = """\
import json, os
os.makedirs("/out", exist_ok=True)
with open("/out/result.json", "w") as fh:
    json.dump({"ok": True, "forged": True}, fh)
with open("/out/pylock.toml", "w") as fh:
    fh.write('lock-version = "1.0"\\ncreated-by = "forger"\\n')
from setuptools import setup
setup(name="bake-forge", version="1.0", py_modules=["bake_forge"])
"""

SPEC = """\
template = "python"
[python]
requirements = ["bakedemo>=1.0"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
MAIN = "import bakedemo\nprint(bakedemo.VERSION)\n"
MODEL = "bake-lock/model"
MODEL_FILES = {"config.json": b'{"model_type": "lock-test"}\n',
               "model.safetensors": b"w" * 4096, "notes.txt": b"not selected\n"}
HUB_SPEC = """\
template = "python"
[python]
requirements = ["bakedemo>=1.0"]
[[models]]
repo = "bake-lock/model"
include = ["*.json", "*.safetensors"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""


def _module(version: str) -> dict[str, str]:
    return {f"{DEMO}.py": f"VERSION = {version!r}\n"}


class Index:
    """The index of these tests: its files folder, and a server that can stop and start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.running: RunningIndex | None = None
        self._stop: Callable[[], None] | None = None
        self.port = 0

    def start(self) -> RunningIndex:
        server = serve_index(self.root, ENGINE.bridge_gateway(), port=self.port)
        self.running = server.__enter__()
        self.port = int(self.running.origin.rsplit(":", 1)[1])
        self._stop = lambda: server.__exit__(None, None, None)
        return self.running

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.url

    @property
    def origin(self) -> str:
        assert self.running is not None
        return self.running.origin

    @property
    def requests(self) -> list[str]:
        assert self.running is not None
        return self.running.requests

    def publish(self, version: str, module: dict[str, str] | None = None) -> Path:
        path = wheel(self.files, DEMO, version, module or _module(version))
        write_simple_index(self.files, self.root)
        return path

    def withdraw(self, path: Path) -> None:
        path.unlink()
        write_simple_index(self.files, self.root)


@pytest.fixture(scope="module")
def index(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    root = tmp_path_factory.mktemp("lock-index")
    idx = Index(root)
    idx.files.mkdir()
    wheel(idx.files, DEMO, "1.0", _module("1.0"))
    fetch_tool(idx.files)  # a seller's mirror has bake's own tool too
    fetch_build_deps(idx.files)  # setuptools and wheel, for the sdists' metadata builds
    fetch_hub_client(idx.files)  # the fetch stages' Hub client
    sdist(idx.files, "bake-peek", "1.0", PEEK_SETUP)
    sdist(idx.files, "bake-forge", "1.0", FORGE_SETUP)
    write_simple_index(idx.files, root)
    idx.start()
    yield idx
    idx.stop()


@pytest.fixture
def seller(host: Host, index: Index) -> Host:
    if index.running is None:
        index.start()
    host.egress["allow_http"] = [index.origin]
    host.build["pip_index_url"] = index.url
    return host


def _build(seller: Host, spec: Path, *args: str) -> tuple[dict[str, object], str]:
    proc = seller.bake("build", str(spec), "--json", *args, check=True)
    result = json.loads(proc.stdout)
    seller.forget(str(result["image"]))
    return result, proc.stderr


def _key(seller: Host, spec: Path) -> str:
    return seller.bake("key", str(spec), check=True).stdout.split()[0]


def _run(seller: Host, spec: Path) -> str:
    return seller.bake("run", str(spec), check=True).stdout.strip()


# -- a range, a new release, the TTL ------------------------------------------------------------


def test_a_new_release_moves_the_key_only_after_the_ttl(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
) -> None:
    seller.build["resolve_ttl"] = "6s"
    spec = job(SPEC, {"main.py": MAIN})
    first, _ = _build(seller, spec)
    resolved_at = time.monotonic()
    assert _run(seller, spec) == "1.0"
    newer = index.publish("1.1")
    try:
        # Within the TTL the resolution stands: the same key, a hit, no network.
        again, _ = _build(seller, spec)
        assert again["key"] == first["key"] and again["cached"] is True
        assert again["locked"] == first["locked"]
        time.sleep(max(0.0, 6.5 - (time.monotonic() - resolved_at)))
        moved, _ = _build(seller, spec)
        assert moved["key"] != first["key"] and moved["locked"] != first["locked"]
        assert moved["cached"] is False
        assert _run(seller, spec) == "1.1"
    finally:
        index.withdraw(newer)


def test_bake_lock_upgrade_moves_the_key_at_once(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
) -> None:
    spec = job(SPEC, {"main.py": MAIN})
    first = json.loads(seller.bake("lock", str(spec), "--json", check=True).stdout)
    lock_file = spec.parent / "bake.lock"
    assert Path(first["lock"]) == lock_file and first["changed"] is True
    (demo,) = parse_lock(lock_file.read_text()).distributions
    assert (demo.name, demo.version) == (DEMO, "1.0")
    assert demo.sha256 == hashlib.sha256((index.files / demo.file).read_bytes()).hexdigest()
    assert demo.url == f"{index.origin}/files/{demo.file}"
    newer = index.publish("1.1")
    try:
        # The shipped lock and the fresh cache both hold 1.0 ...
        assert _key(seller, spec) == first["key"]
        same = json.loads(seller.bake("lock", str(spec), "--json", check=True).stdout)
        assert same["changed"] is False and same["locked"] == first["locked"]
        # ... --upgrade resolves again.
        upgraded = json.loads(seller.bake("lock", str(spec), "--upgrade", "--json",
                                          check=True).stdout)
        assert upgraded["key"] != first["key"] and upgraded["changed"] is True
        assert parse_lock(lock_file.read_text()).distributions[0].version == "1.1"
        built, _ = _build(seller, spec)
        assert built["key"] == upgraded["key"] and built["locked"] == upgraded["locked"]
        assert _run(seller, spec) == "1.1"
    finally:
        index.withdraw(newer)


def test_the_fast_path_answers_while_the_lock_is_fresh_and_never_after(
    seller: Host, locked: None, index: Index, hub: RunningHub, job: Callable[..., Path],
) -> None:
    """A job with ranged requirements and a Hub model: the fast path (no lookup, no Hub, no
    index) answers its hits, with the lock's digest, until the resolution's TTL ends."""
    seller.egress["allow_http"] = [index.origin, hub.endpoint]
    seller.build["hf_endpoint"] = hub.endpoint
    seller.build["resolve_ttl"] = "4s"
    config = seller.config
    spec = job(HUB_SPEC, {"main.py": MAIN + "# fast\n"})
    first, _ = fast_build(config, spec)
    resolved_at = time.monotonic()
    seller.forget(str(first["image"]))
    hub.clear_requests()
    hit, fast = fast_build(config, spec)
    assert fast and hit["cached"] is True and hit["key"] == first["key"]
    assert hit["locked"] == first["locked"] and str(hit["locked"]).startswith("sha256:")
    assert hub.requests == []  # a hit asks the Hub nothing
    time.sleep(max(0.0, 4.5 - (time.monotonic() - resolved_at)))
    stale, fast = fast_build(config, spec)
    assert not fast and stale["key"] == first["key"]  # the CLI locked again: same answers
    again, fast = fast_build(config, spec)
    assert fast and again["key"] == first["key"]
    # A bake.lock written beside the spec is another input: the record no longer holds.
    seller.bake("lock", str(spec), check=True)
    shipped, fast = fast_build(config, spec)
    assert not fast and shipped["key"] == first["key"]
    shipped_again, fast = fast_build(config, spec)
    assert fast and shipped_again["locked"] == first["locked"]


# -- bytes -------------------------------------------------------------------------------------


def test_other_bytes_under_a_locked_name_fail_setup_exit_3_and_leave_no_image(
    seller: Host, locked: None, index: Index, job: Callable[..., Path], tmp_path: Path,
) -> None:
    spec = job(SPEC, {"main.py": MAIN + f"# {tmp_path.name}\n"})  # a key of its own
    seller.bake("lock", str(spec), check=True)
    (demo,) = parse_lock((spec.parent / "bake.lock").read_text()).distributions
    key = _key(seller, spec)
    seller.forget(f"bake:{key}")
    original = index.files / demo.file
    kept = tmp_path / "kept.whl"
    shutil.copy(original, kept)
    evil = wheel(tmp_path, DEMO, "1.0", {f"{DEMO}.py": "VERSION = 'evil'\n"})
    shutil.copy(evil, original)  # a mirror now serves other bytes under the locked name
    try:
        # --no-cache: the layer an earlier test installed from the good bytes is not used.
        proc = seller.bake("build", str(spec), "--json", "--no-cache")
    finally:
        shutil.copy(kept, original)
    assert proc.returncode == 3, proc.stderr
    received = hashlib.sha256(evil.read_bytes()).hexdigest()
    # One line names the file, the expected and the received digest.
    assert (f"{demo.file} does not match bake.lock: expected sha256:{demo.sha256}, received "
            f"sha256:{received}") in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ENGINE.inspect_image(f"bake:{key}") is None


def test_a_build_reconciles_with_its_lock(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
) -> None:
    """What the build fetched is what the lock names: the install step logs each file it
    fetched with the digest it computed, the index served exactly those files (and bake's own
    hash-pinned tool), and every egress decision went to a host the lock names."""
    spec = job(SPEC, {"main.py": MAIN})
    seller.bake("lock", str(spec), check=True)
    lock = parse_lock((spec.parent / "bake.lock").read_text())
    index.requests.clear()
    result, stderr = _build(seller, spec, "--no-cache")
    assert result["locked"] == lock.digest()
    fetched = {}
    for line in stderr.splitlines():
        if "bake-install: fetched " in line:
            words = line.split("bake-install: fetched ", 1)[1].split()
            fetched[words[0]] = words[1].removeprefix("sha256:")
    assert fetched == {d.file: d.sha256 for d in lock.distributions}
    served = {line.split()[1] for line in index.requests if "/files/" in line}
    assert {f for f in served if not f.startswith("/files/uv-")} == {
        f"/files/{d.file}" for d in lock.distributions}
    log = [json.loads(line) for line in Path(str(result["egress_log"])).read_text().splitlines()]
    hosts = {f"{e['host']}:{e['port']}" for e in log}
    assert hosts == {index.origin.removeprefix("http://")}
    assert all(e["decision"] == "allowed" for e in log)


# -- outages -------------------------------------------------------------------------------------


@pytest.fixture
def hub(engine: None) -> Iterator[RunningHub]:
    repos = [HubRepo("model", MODEL, branches={"main": MODEL_FILES})]
    with start_hub(repos, host=ENGINE.bridge_gateway()) as running:
        yield running


def test_index_and_hub_stopped_a_baked_job_still_builds_and_runs_with_a_warning(
    seller: Host, locked: None, index: Index, hub: RunningHub, job: Callable[..., Path],
) -> None:
    seller.egress["allow_http"] = [index.origin, hub.endpoint]
    seller.build["hf_endpoint"] = hub.endpoint
    seller.build["resolve_ttl"] = "1s"
    spec = job(HUB_SPEC, {"main.py": MAIN})
    first, _ = _build(seller, spec, "--no-cache")
    # The locked fetch asked for the locked files by path at the commit, no listing.
    served = {r.path.rsplit("/", 1)[-1] for r in hub.requests if "/resolve/" in r.path}
    assert served == {"config.json", "model.safetensors"}
    hub.close()
    index.stop()
    try:
        time.sleep(1.5)  # past the TTL: the lock stage asks, and nobody answers
        proc = seller.bake("build", str(spec), "--json", check=True)
        again = json.loads(proc.stdout)
        assert again["key"] == first["key"] and again["cached"] is True
        assert "warning:" in proc.stderr and "using the resolution of the requirements" in \
            proc.stderr and f"model {MODEL}@main" in proc.stderr, proc.stderr
        ran = seller.bake("run", str(spec))
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == "1.0" and "warning:" in ran.stderr
    finally:
        index.start()


def test_with_nothing_cached_an_outage_names_what_was_unreachable(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
) -> None:
    spec = job(SPEC.replace("bakedemo>=1.0", "bakedemo>=0.9"), {"main.py": MAIN})
    index.stop()
    try:
        proc = seller.bake("build", str(spec))
    finally:
        index.start()
    assert proc.returncode == 1, proc.stderr
    assert f"cannot reach the package index at {seller.build['pip_index_url']}" in proc.stderr
    assert "no earlier resolution of the requirements" in proc.stderr


def test_a_shipped_lock_builds_with_the_index_stopped(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
) -> None:
    spec = job(SPEC, {"main.py": MAIN})
    seller.bake("lock", str(spec), check=True)
    first, _ = _build(seller, spec)
    ENGINE.remove_image(str(first["image"]), force=True)
    index.stop()
    try:
        # No resolution (the shipped lock), no download (the engine's build cache holds the
        # locked install's layer): the image is made again with the index gone.
        proc = seller.bake("build", str(spec), "--json")
    finally:
        index.start()
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["key"] == first["key"] and again["cached"] is False
    assert "warning" not in proc.stderr
    assert _run(seller, spec) == "1.0"


# -- malformed locks -------------------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "field"), [
    (lambda t: t.replace('sha256 = "', 'sha256 = "zz', 1), "packages[0].wheels[0].hashes.sha256"),
    (lambda t: t.replace("py3-none-any.whl", "cp27-cp27m-win32.whl"),
     "packages[0].wheels[0].name"),
    (lambda t: t.replace('[tool.bake]', '[tool.bake]\nsurprise = 1', 1), "tool.bake.surprise"),
    (lambda t: t.replace('digest = "sha256:', 'digest = "md5:', 1), "tool.bake.base.digest"),
    (lambda t: "lock-version = [", "not valid TOML"),
])
def test_a_malformed_lock_is_exit_2_naming_the_field(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
    edit: Callable[[str], str], field: str,
) -> None:
    spec = job(SPEC, {"main.py": MAIN})
    seller.bake("lock", str(spec), check=True)
    path = spec.parent / "bake.lock"
    path.write_text(edit(path.read_text()))
    proc = seller.bake("build", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and "bake.lock" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_lock_the_spec_outgrew_is_exit_2_naming_the_fields_and_bake_lock(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
) -> None:
    spec = job(SPEC, {"main.py": MAIN})
    seller.bake("lock", str(spec), check=True)
    spec.write_text(SPEC.replace("bakedemo>=1.0", "bakedemo>=1.0,<2"))
    proc = seller.bake("build", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert "python.requirements changed" in proc.stderr and "bake lock" in proc.stderr


# -- the resolve step: buyer code there -----------------------------------------------------------


def _resolve(seller: Host, requirements: tuple[str, ...], only_binary: bool = True):  # type: ignore[no-untyped-def]
    cfg = seller.settings()
    from bake.resolve import base_digest

    base_from, digest = base_digest(ENGINE, "python:3.11-slim")
    request = PythonRequest(requirements, only_binary, base_from, digest, index_url_of(cfg))
    return resolve_requirements(request, cfg, ENGINE, NullReporter())


def test_buyer_code_in_the_resolve_step_sees_no_seller_secret(
    seller: Host, locked: None, index: Index,
) -> None:
    # Credentials in the seller's index URL never reach a step: the URL is passed without them.
    seller.build["pip_index_url"] = index.url.replace("http://", "http://seller:s3cret@")
    with pytest.raises(SetupError) as caught:
        _resolve(seller, ("bake-peek==1.0",), only_binary=False)
    text = caught.value.log_tail
    assert "PEEK " in text, text  # the attack ran
    found = json.loads(text.split("PEEK ", 1)[1].splitlines()[0].strip())
    # Only the index URL (no credentials) and the CA bundle: no pip config, no Hub token.
    assert set(found["secrets"]) <= {"bake_index", "bake_ca"}, found
    # The index is the proxy's relay of the seller's: no credentials, no upstream address.
    assert found["bake_index"].endswith("/bake-index/simple/"), found
    assert index.origin.removeprefix("http://") not in found["bake_index"]
    assert "s3cret" not in text
    assert not any("TOKEN" in name for name in found["env"]), found


def test_buyer_code_cannot_forge_the_resolution(
    seller: Host, locked: None, index: Index,
) -> None:
    python = _resolve(seller, ("bake-forge==1.0",), only_binary=False)
    (forge,) = python.distributions
    assert forge.file == "bake-forge-1.0.tar.gz"
    assert forge.sha256 == hashlib.sha256((index.files / forge.file).read_bytes()).hexdigest()


def test_a_private_index_is_resolved_and_installed_through_the_relay(
    seller: Host, locked: None, index: Index, job: Callable[..., Path],
) -> None:
    """build.pip_index_url with credentials: the resolve step and the install step reach it
    through the proxy's relay, which adds them; the lock keeps the upstream URLs, without
    them; every request the index saw was authorised."""
    with serve_index(index.root, ENGINE.bridge_gateway(), auth=("seller", "s3cret")) as private:
        seller.egress["allow_http"] = [private.origin]
        seller.build["pip_index_url"] = private.url.replace("http://", "http://seller:s3cret@")
        spec = job(SPEC, {"main.py": MAIN + "# private\n"})
        seller.bake("lock", str(spec), check=True)
        text = (spec.parent / "bake.lock").read_text()
        (demo,) = parse_lock(text).distributions
        assert demo.url == f"{private.origin}/files/{demo.file}"
        assert "s3cret" not in text and "seller@" not in text
        _, stderr = _build(seller, spec, "--no-cache")
        assert f"bake-install: fetched {demo.file} sha256:{demo.sha256}" in stderr
        assert _run(seller, spec) == "1.0"
        assert private.seen and all(s.authorized for s in private.seen), private.seen
        assert any(f"/files/{demo.file}" in s.line for s in private.seen)
        assert "s3cret" not in stderr

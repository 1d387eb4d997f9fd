"""Issue 4 end to end: models and datasets from a Hub, baked at setup, loaded offline.

The Hub is tests/hubserver.py on the bridge gateway (where build steps can reach
the host), named to bake as an ``allow_http`` origin and ``build.hf_endpoint``, so
the fetch steps reach it only through bake's egress proxy.  The fetch inside the
build uses the real huggingface_hub client; so does the job.

Two builds are shared by the tests that only read them (module fixtures): job A
(a model and a dataset with patterns, the Hub client in its venv, built with a
canary HF_TOKEN) and job B (the same model, no requirements), each with
``--no-cache`` so that both really fetched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bake.engine import Engine
from tests.conftest import write_job
from tests.integration.conftest import CA_BUNDLE, Host, machine_cidrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import Generated, HubRepo, RecordedRequest, RunningHub, start_hub

ENGINE = Engine.from_env()

# A token the server accepts, and a string that must appear nowhere bake leaves behind.
CANARY = "hf_bakeCanaryToken7f3e9a1c5b2d8e4f6a0c"
MODEL = "bake-test/model"
DATASET = "bake-test/data"
GATED = "bake-test/gated"
MOVING = "bake-test/moving"

MODEL_FILES = {
    "config.json": b'{"model_type": "bake-test", "hidden": 8}\n',
    "model.safetensors": Generated(256 * 1024, seed=7),
    "notes.txt": b"excluded by the include patterns\n",
    "extra/weights.bin": Generated(2 * 1024 * 1024, seed=8),
}
DATA_FILES = {
    "README.md": b"# data\n",
    "data/train.csv": b"text,label\ngood,1\n",
    "data/validation.csv": b"text,label\nbad,0\n",
}

SPEC_A = f"""\
name = "hub-a"
template = "transformers"
[python]
requirements = ["huggingface_hub==2.4.0"]
[[models]]
repo = "{MODEL}"
include = ["*.json", "*.safetensors"]
[[datasets]]
repo = "{DATASET}"
include = ["data/*.csv"]
exclude = ["*train*"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
[run]
memory = "512m"
timeout = "2m"
"""

# Unmodified Hub code: by repo name, no revision, no path; HF_HUB_OFFLINE comes from the image.
MAIN_A = f"""\
import json, os
from huggingface_hub import hf_hub_download, snapshot_download

def files(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)

config = hf_hub_download("{MODEL}", "config.json")
model = snapshot_download("{MODEL}")
data = snapshot_download("{DATASET}", repo_type="dataset")
with open(os.path.join(data, "data", "validation.csv")) as fh:
    rows = fh.read().splitlines()
print(json.dumps({{
    "config": json.load(open(config)),
    "weights": os.path.getsize(os.path.join(model, "model.safetensors")),
    "model_files": files(model),
    "data_files": files(data),
    "rows": rows,
    "offline": os.environ.get("HF_HUB_OFFLINE"),
    "version": "A",
}}))
"""

SPEC_B = f"""\
name = "hub-b"
template = "python"
[[models]]
repo = "{MODEL}"
include = ["*.json", "*.safetensors"]
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
MAIN_B = "import os; print(sorted(os.listdir('/opt/hf/hub')))\n"


@dataclass
class Built:
    spec: Path
    result: dict[str, object]
    stdout: str
    stderr: str
    requests: list[RecordedRequest]

    @property
    def image(self) -> str:
        return str(self.result["image"])


def _files_downloaded(requests: list[RecordedRequest]) -> list[str]:
    return [r.path for r in requests if "/resolve/" in r.path and r.method == "GET"]


def _layers(image: str) -> list[str]:
    info = ENGINE.inspect_image(image)
    assert info is not None, image
    return list(info["RootFS"]["Layers"])


@pytest.fixture(scope="module")
def hub(engine: None) -> Iterator[RunningHub]:
    repos = [
        HubRepo("model", MODEL, branches={"main": MODEL_FILES}),
        HubRepo("dataset", DATASET, branches={"main": DATA_FILES}),
        # A commit of its own per run, so that its fetch stage is never in BuildKit's cache.
        HubRepo("model", GATED, branches={"main": {"config.json": b"{}\n",
                                                    "run.txt": uuid.uuid4().hex.encode()}},
                gated=True),
        HubRepo("model", MOVING, branches={"main": {"config.json": b'{"v": 1}\n'}}),
    ]
    # On the bridge gateway: where a build step finds the host (and bake's proxy).
    with start_hub(repos, host=ENGINE.bridge_gateway(), tokens=[CANARY]) as running:
        yield running


@pytest.fixture(scope="module")
def seller(hub: RunningHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    folder = tmp_path_factory.mktemp("hub-seller")
    host = Host(
        folder=folder,
        egress={"allow_cidrs": machine_cidrs(), "allow_http": [hub.endpoint],
                "enforce": "warn", "setup_timeout": 300},
        build={"hf_endpoint": hub.endpoint,
               **({"ca_bundle": CA_BUNDLE} if Path(CA_BUNDLE).is_file() else {})},
    )
    yield host
    for image in host.made:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


def _build(seller: Host, hub: RunningHub, spec: Path, *args: str,
           token: str | None = None) -> Built:
    hub.clear_requests()
    proc = seller.bake("build", str(spec), "--json", *args,
                       env={"HF_TOKEN": token} if token else None, check=True)
    result = json.loads(proc.stdout)
    seller.forget(str(result["image"]))
    return Built(spec, result, proc.stdout, proc.stderr, hub.requests)


@pytest.fixture(scope="module")
def job_a(seller: Host, hub: RunningHub, tmp_path_factory: pytest.TempPathFactory) -> Built:
    spec = write_job(tmp_path_factory.mktemp("hub-a"), SPEC_A, {"main.py": MAIN_A})
    return _build(seller, hub, spec, "--no-cache", token=CANARY)


@pytest.fixture(scope="module")
def job_b(seller: Host, hub: RunningHub, tmp_path_factory: pytest.TempPathFactory) -> Built:
    spec = write_job(tmp_path_factory.mktemp("hub-b"), SPEC_B, {"main.py": MAIN_B})
    return _build(seller, hub, spec, "--no-cache")


def _run_json(seller: Host, spec: Path) -> dict[str, object]:
    proc = seller.bake("run", str(spec), check=True)
    value = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


# -- baked and loaded offline -----------------------------------------------------------------


def test_model_and_dataset_load_offline_in_the_job(seller: Host, job_a: Built) -> None:
    out = _run_json(seller, job_a.spec)
    assert out["config"] == {"model_type": "bake-test", "hidden": 8}
    assert out["weights"] == 256 * 1024
    assert out["rows"] == ["text,label", "bad,0"]
    assert out["offline"] == "1"
    # The fetch ran inside the build, through the proxy, with the token as a secret: the
    # server saw the files asked for with authorization (never the token itself: it keeps none).
    downloaded = _files_downloaded(job_a.requests)
    assert any(p.endswith("/model.safetensors") for p in downloaded)
    assert all(r.authorized for r in job_a.requests if "/resolve/" in r.path)
    # Progress in the build view, and the self-check with the job's own client.
    assert "bake-fetch: model bake-test/model" in job_a.stderr and "files" in job_a.stderr
    assert "loads offline with huggingface_hub 2.4.0" in job_a.stderr


def test_include_and_exclude_patterns_are_honoured(seller: Host, job_a: Built) -> None:
    out = _run_json(seller, job_a.spec)
    assert out["model_files"] == ["config.json", "model.safetensors"]
    assert out["data_files"] == ["data/validation.csv"]
    # Excluded files were never downloaded at all.
    downloaded = _files_downloaded(job_a.requests)
    for excluded in ("notes.txt", "extra/weights.bin", "README.md", "data/train.csv"):
        assert not any(p.endswith("/" + excluded) for p in downloaded), excluded


def test_the_token_is_in_no_image_part_log_or_output(seller: Host, job_a: Built) -> None:
    needle = CANARY.encode()
    with subprocess.Popen(["docker", "save", job_a.image], stdout=subprocess.PIPE) as save:
        assert save.stdout is not None
        tail = b""
        total = 0
        while chunk := save.stdout.read(1 << 20):
            assert needle not in tail + chunk, "the token is in `docker save` output"
            tail = chunk[-len(needle):]
            total += len(chunk)
    assert save.returncode == 0 and total > 1 << 20
    history = subprocess.run(["docker", "history", "--no-trunc", job_a.image],
                             capture_output=True, text=True, check=True).stdout
    inspect = subprocess.run(["docker", "inspect", job_a.image],
                             capture_output=True, text=True, check=True).stdout
    assert CANARY not in history and CANARY not in inspect
    assert "hf_token" not in inspect  # not even the secret's name in env or labels
    egress_log = Path(str(job_a.result["egress_log"]))
    assert egress_log.is_file() and CANARY not in egress_log.read_text()
    assert CANARY not in job_a.stdout and CANARY not in job_a.stderr
    # Nor in the running job's environment.
    proc = seller.bake("run", job_a.image, "--", "--version")
    assert CANARY not in proc.stdout + proc.stderr


# -- layers -------------------------------------------------------------------------------------


def test_two_jobs_with_the_same_model_share_its_layer(job_a: Built, job_b: Built) -> None:
    layers_a, layers_b = _layers(job_a.image), _layers(job_b.image)
    # Both builds fetched (--no-cache), with different deps layers before the model's.
    assert _files_downloaded(job_b.requests)
    first_own = next(i for i, (a, b) in enumerate(zip(layers_a, layers_b, strict=False))
                     if a != b)  # the deps layers: different requirements
    shared = [layer for layer in layers_a[first_own:] if layer in layers_b[first_own:]]
    assert shared, "the model's layer differs between the two jobs"
    # It is the model's: right after each job's deps (A's are two install layers, B's the
    # venv), then A's dataset, hubfetch.py, the fetch specs, the job's files, its WORKDIR.
    model = shared[0]
    assert layers_a.index(model) == len(layers_a) - 6, layers_a
    assert layers_b.index(model) == len(layers_b) - 5, layers_b
    # The dataset's layer is another one.
    assert layers_a[-5] != model


def test_code_only_change_rebuilds_without_refetching(seller: Host, hub: RunningHub,
                                                      job_a: Built, tmp_path: Path) -> None:
    # Job A as a seller builds it (job_a was built with --no-cache, whose steps BuildKit keeps
    # under that build's nonce: a plain build finds them only on an engine that built this
    # one plainly before), then the same job with one changed line of code.
    ENGINE.remove_image(str(job_a.result["image"]), force=True)
    plain = _build(seller, hub, job_a.spec, token=CANARY)
    assert plain.result["key"] == job_a.result["key"]
    spec = write_job(tmp_path / "a2", SPEC_A, {"main.py": MAIN_A.replace('"A"', '"A2"')})
    again = _build(seller, hub, spec, token=CANARY)
    assert again.result["key"] != job_a.result["key"]
    assert _files_downloaded(again.requests) == []  # not one file fetched again
    # From the end: WORKDIR, job files, hub/*.json, hubfetch.py, dataset, model, deps.  The
    # model's and the dataset's layers are the same bytes (a cache hit, or a fetch made
    # reproducible); only the job's files differ.
    layers, before = _layers(again.image), _layers(job_a.image)
    assert layers[-6:-4] == before[-6:-4]
    assert layers[-2] != before[-2]
    assert _run_json(seller, spec)["version"] == "A2"


# -- the key ----------------------------------------------------------------------------------


def test_key_follows_the_branch_once_the_lock_is_renewed(seller: Host, hub: RunningHub,
                                                         tmp_path: Path) -> None:
    """A branch is locked to its commit (and the commit's files) for build.resolve_ttl, like
    the requirements; `bake lock --upgrade` (or the TTL passing) follows it."""
    spec = write_job(tmp_path / "moving",
                     f'[[models]]\nrepo = "{MOVING}"\n[job]\ncommand = ["true"]\n')

    def key() -> str:
        return seller.bake("key", str(spec), check=True).stdout.strip()

    first = key()
    assert key() == first
    head = hub.commit(MOVING, "main", {"config.json": b'{"v": 2}\n'})
    assert key() == first  # within the TTL: the resolution stands, the Hub is not asked
    seller.bake("lock", str(spec), "--upgrade", check=True)
    moved = key()
    assert moved != first
    assert key() == moved
    explained = seller.bake("key", str(spec), "--explain", check=True).stdout
    assert head in explained and '"revision": "main"' in explained.replace('":"', '": "')


# -- errors -------------------------------------------------------------------------------------


def test_gated_repo_without_the_token_is_a_clear_exit_2(seller: Host, tmp_path: Path) -> None:
    spec = write_job(tmp_path / "gated",
                     f'[[models]]\nrepo = "{GATED}"\n[job]\ncommand = ["true"]\n')
    proc = seller.bake("build", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert "HF_TOKEN" in proc.stderr and GATED in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gated_repo_with_the_token_is_baked(seller: Host, hub: RunningHub,
                                            tmp_path: Path) -> None:
    spec = write_job(tmp_path / "gated",
                     f'[[models]]\nrepo = "{GATED}"\n[job]\ncommand = ["true"]\n')
    built = _build(seller, hub, spec, token=CANARY)
    assert any(r.authorized and r.status == 200 for r in built.requests
               if "/resolve/" in r.path and r.method == "GET")
    assert CANARY not in built.stderr


@pytest.mark.parametrize(("tail", "named"), [
    ('[[models]]\nrepo = "bake-test/no-such-model"\n', ["bake-test/no-such-model"]),
    (f'[[models]]\nrepo = "{MODEL}"\nrevision = "no-such-branch"\n', [MODEL, "no-such-branch"]),
    (f'[[datasets]]\nrepo = "{MODEL}"\n', [MODEL, "dataset"]),  # a model is not a dataset
    (f'[[models]]\nrepo = "{MODEL}"\ninclude = ["*.onnx"]\n', [MODEL, "*.onnx"]),
], ids=["repo", "revision", "kind", "include"])
def test_what_the_hub_lacks_is_exit_2_naming_it(seller: Host, tmp_path: Path, tail: str,
                                               named: list[str]) -> None:
    spec = write_job(tmp_path / "missing", tail + '[job]\ncommand = ["true"]\n')
    proc = seller.bake("build", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert all(word in proc.stderr for word in named), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "building" not in proc.stderr  # it failed at key time, before any build


BROKEN_TEMPLATE = """\
{% extends "_base/Dockerfile.j2" %}
{% block env %}
RUN rm /opt/hf/hub/models--bake-test--model/snapshots/*/config.json
{% endblock %}
"""


def test_a_failing_self_check_fails_the_build_and_leaves_no_image(
        seller: Host, hub: RunningHub, tmp_path: Path) -> None:
    # A seller template that loses a baked file after the fetch: only the self-check can see it.
    templates = tmp_path / "templates"
    (templates / "broken").mkdir(parents=True)
    (templates / "broken" / "Dockerfile.j2").write_text(BROKEN_TEMPLATE)
    (templates / "broken" / "template.toml").write_text('default_base = "python:3.11-slim"\n')
    host = Host(folder=tmp_path / "seller", egress=dict(seller.egress),
                build={**seller.build, "templates": [str(templates)]})
    host.folder.mkdir()
    spec = write_job(tmp_path / "job", SPEC_B.replace('"python"', '"broken"'),
                     {"main.py": MAIN_B})
    key = host.bake("key", str(spec), check=True).stdout.strip()
    proc = host.bake("build", str(spec))
    assert proc.returncode == 3, proc.stderr
    assert "self-check" in proc.stderr and "config.json" in proc.stderr
    assert ENGINE.inspect_image(f"bake:{key}") is None


def test_a_hub_the_proxy_would_refuse_fails_before_the_build(seller: Host, hub: RunningHub,
                                                             tmp_path: Path) -> None:
    host = Host(folder=tmp_path / "seller", build=dict(seller.build),
                egress={k: v for k, v in seller.egress.items() if k != "allow_http"})
    host.folder.mkdir()
    # Code of its own: a key another test built would be a hit, which needs no network.
    spec = write_job(tmp_path / "job", SPEC_B, {"main.py": MAIN_B + "# refused\n"})
    proc = host.bake("build", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert "egress.allow_http" in proc.stderr and hub.endpoint in proc.stderr
    assert "building" not in proc.stderr

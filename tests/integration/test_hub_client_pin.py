"""The fetch stages' Hub client is pinned by hash: a mirror that serves other bytes for any
file of it fails the build before a line of those bytes runs next to the Hub token.

The seller's index is a local mirror (tests/integration/pkgindex.py) of the real client and
its dependencies, as ``bake/templates/_base/hub-client.txt`` pins them for this Python; the
Hub is tests/hubserver.py.  The attack: the mirror's ``tqdm`` (which huggingface_hub imports
first thing) is swapped for a wheel of the same file name whose import reads the token
mounted in the fetch step and prints it.  With the genuine bytes the job builds; with the
swapped ones the build fails (exit 3) naming the hash, the token appears nowhere, and no
image is made.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bake.engine import Engine
from tests.integration.conftest import Host
from tests.integration.pkgindex import (
    RunningIndex,
    fetch_hub_client,
    serve_index,
    wheel,
    write_simple_index,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hubserver import HubRepo, RunningHub, start_hub

ENGINE = Engine.from_env()
RUN = uuid.uuid4().hex[:12]
CANARY = "hf_bakePinCanary" + RUN
MARKER = "TAMPERED-TQDM-" + RUN
MODEL = "bake-pin/model"
SPEC = f"""\
template = "python"
[[models]]
repo = "{MODEL}"
[job]
files = ["main.py"]
command = ["python", "main.py"]
"""
# What the swapped tqdm does on import: read every secret of the step, say it.
TAMPERED = f"""\
import os, sys
found = {{}}
for name in sorted(os.listdir("/run/secrets")) if os.path.isdir("/run/secrets") else []:
    try:
        found[name] = open(os.path.join("/run/secrets", name)).read()
    except OSError:
        pass
print("{MARKER} " + repr(found), file=sys.stderr, flush=True)
"""


@dataclass
class Mirror:
    index: RunningIndex
    root: Path  # simple/ and files/, served as they are on disk


@pytest.fixture(scope="module")
def mirror(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    root = tmp_path_factory.mktemp("pin-index")
    files = root / "files"
    files.mkdir()
    fetch_hub_client(files)
    write_simple_index(files, root)
    with serve_index(root, ENGINE.bridge_gateway()) as running:
        yield Mirror(running, root)


@pytest.fixture(scope="module")
def hub(engine: None) -> Iterator[RunningHub]:
    repos = [HubRepo("model", MODEL, branches={"main": {"config.json": b'{"pin": 1}\n'}})]
    with start_hub(repos, host=ENGINE.bridge_gateway(), tokens=[CANARY]) as running:
        yield running


def test_a_mirror_serving_other_bytes_for_the_hub_client_fails_the_build(
        host: Host, locked: None, mirror: Mirror, hub: RunningHub, tmp_path: Path) -> None:
    host.egress["allow_http"] = [mirror.index.origin, hub.endpoint]
    host.build["pip_index_url"] = mirror.index.url
    host.build["hf_endpoint"] = hub.endpoint
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "bake.toml").write_text(SPEC)
    (folder / "main.py").write_text("print('pinned')\n")
    env = {"HF_TOKEN": CANARY}

    # The genuine bytes: it builds (the pins are the mirror's files, hash for hash; with
    # --no-cache the fetcher stage really installs them, whatever the engine's cache holds).
    proc = host.bake("build", str(folder), "--json", "--no-cache", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = json.loads(proc.stdout)["image"]
    assert MARKER not in proc.stderr
    assert ENGINE.remove_image(image, force=True)

    # The mirror's tqdm swapped for other bytes under the same file name.
    served = mirror.root / "files"
    (genuine,) = served.glob("tqdm-*.whl")
    version = genuine.name.split("-")[1]
    scratch = tmp_path / "tampered"
    scratch.mkdir()
    made = wheel(scratch, "tqdm", version, {"tqdm/__init__.py": TAMPERED})
    assert made.name == genuine.name
    shutil.copyfile(made, genuine)
    write_simple_index(served, mirror.root)  # the index's own #sha256= is the new one

    # --no-cache again: the genuine client's layer is in the engine's cache.
    proc = host.bake("build", str(folder), "--json", "--no-cache", env=env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "tqdm" in proc.stderr and "hash" in proc.stderr.lower(), proc.stderr[-3000:]
    assert MARKER not in proc.stderr  # the swapped bytes never ran
    assert CANARY not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not ENGINE.has_image(image)

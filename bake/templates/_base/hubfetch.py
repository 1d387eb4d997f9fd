#!/usr/bin/env python3
"""bake-fetch: one Hugging Face repo into the standard cache, inside a build step.

    python hubfetch.py fetch SPEC.json           download, pin refs, make the tree reproducible
    python hubfetch.py check SPEC.json [...]     offline: every selected file loads from the cache

SPEC.json (written by bake; unknown keys are refused)::

    {"kind": "model" | "dataset", "repo": "org/name",
     "revision": "main",           # what the job spec said: a branch, a tag or a commit
     "commit": "<40 hex>",         # what bake pinned it to at key time
     "include": ["*.json"], "exclude": []},
     "files": [{"path": "config.json", "size": 512, "blob": "<40 hex>"},       # from bake.lock
               {"path": "model.safetensors", "size": 9, "sha256": "<64 hex>"}]}

With ``files`` (a locked fetch) exactly those files are downloaded, by path at the commit, with no
listing, and each one's bytes are checked against its digest (sha256 for Git LFS files, the git
blob id otherwise) before the step ends: a mismatch fails the step naming the file, the expected
and the received digest, so no layer is made of other bytes than the lock's.

Where things come from (never from argv, and the token is never printed):

- the cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (``fetch`` needs one of them set);
- the Hub: ``$HF_ENDPOINT``, else the file ``/run/secrets/bake_hf_endpoint``, else huggingface.co;
- the token: the file ``/run/secrets/hf_token`` when it exists and is not empty (a BuildKit
  secret; ``$BAKE_FETCH_TOKEN_FILE`` names another path, for tests);
- the proxy: the standard ``HTTPS_PROXY`` / ``HTTP_PROXY`` variables, which the client honours.

This file runs in the image with the standard library and ``huggingface_hub`` only (no bake) on
Python >= 3.9, and works with the old and new releases of the client that use the same cache.
Exit status: 0 done, 1 the fetch or check failed, 2 bad arguments or spec; one line says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

TOKEN_FILE = "/run/secrets/hf_token"
ENDPOINT_FILE = "/run/secrets/bake_hf_endpoint"
# Every mtime in the fetched tree: two fetches of the same files give byte-identical layers,
# so two images that bake the same model share its layer.  Not 0, which some tools read as unset.
EPOCH = 1
# Inside each repo's cache folder: which files a fetch selected, so that ``check`` can tell a
# missing file from one never asked for.  The client's cache tools ignore unknown entries there.
MANIFEST_DIR = ".bake-fetch"

_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_SPEC_KEYS = {"kind", "repo", "revision", "commit", "include", "exclude", "files"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Leftovers of the client's downloads and atomic writes, per folder of a repo's cache: partial
# blobs and its umask probe "tmp_<uuid>", refs' "<ref>.<8 hex>.tmp".
_LEFTOVERS = {
    "blobs": re.compile(r".+\.incomplete|.+\.lock|tmp_[0-9a-f-]{36}"),
    "refs": re.compile(r".+\.[0-9a-f]{8}\.tmp"),
}


class Failed(Exception):
    """A fetch or check failed (exit 1); the message is the one line to print."""

    exit_code = 1


class Usage(Failed):
    """Bad arguments or spec (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class LockedFile:
    path: str
    size: int
    sha256: str | None  # Git LFS files
    blob: str | None  # the others: git blob id

    @property
    def expected(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"git-blob:{self.blob}"


@dataclass(frozen=True)
class Spec:
    kind: str
    repo: str
    revision: str
    commit: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    files: tuple[LockedFile, ...] = ()  # empty: not locked, select by the patterns

    @property
    def label(self) -> str:
        return f"{self.kind} {self.repo}@{self.commit[:7]}"

    @property
    def folder(self) -> str:
        # The client's repo_folder_name(): "models--org--name".
        return f"{self.kind}s--{self.repo.replace('/', '--')}"

    @property
    def named_revision(self) -> str | None:
        """The branch or tag the job spec named, if it named one rather than a commit."""
        return None if _COMMIT.fullmatch(self.revision) else self.revision

    @property
    def manifest_name(self) -> str:
        patterns = json.dumps([list(self.include), list(self.exclude)], separators=(",", ":"))
        return f"{self.commit}-{hashlib.sha256(patterns.encode()).hexdigest()[:12]}.json"


def load_spec(path: str) -> Spec:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise Usage(f"cannot read spec {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise Usage(f"{path}: a spec is a JSON object")
    unknown = sorted(set(doc) - _SPEC_KEYS)
    missing = sorted({"kind", "repo", "commit"} - set(doc))
    if unknown or missing:
        raise Usage(f"{path}: unknown keys {unknown}, missing keys {missing}")
    kind, repo, commit = doc["kind"], doc["repo"], doc["commit"]
    revision = doc.get("revision", commit)
    include, exclude = doc.get("include", []), doc.get("exclude", [])
    if kind not in ("model", "dataset"):
        raise Usage(f"{path}: kind must be 'model' or 'dataset', not {kind!r}")
    if not isinstance(repo, str) or not _REPO.fullmatch(repo) or ".." in repo:
        raise Usage(f"{path}: repo must be 'org/name', not {repo!r}")
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise Usage(f"{path}: commit must be 40 lowercase hex digits, not {commit!r}")
    if not isinstance(revision, str) or not _safe_ref(revision):
        raise Usage(f"{path}: revision {revision!r} cannot be a ref name")
    for name, value in (("include", include), ("exclude", exclude)):
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise Usage(f"{path}: {name} must be a list of patterns")
    files = _load_files(path, doc.get("files", []))
    return Spec(kind, repo, revision, commit, tuple(include), tuple(exclude), files)


def _load_files(where: str, value: Any) -> tuple[LockedFile, ...]:
    if not isinstance(value, list):
        raise Usage(f"{where}: files must be a list")
    out: dict[str, LockedFile] = {}
    for item in value:
        if not isinstance(item, dict) or set(item) - {"path", "size", "sha256", "blob"}:
            raise Usage(f"{where}: a file is {{path, size, sha256 | blob}}, not {item!r}")
        path, size = item.get("path"), item.get("size")
        sha, blob = item.get("sha256"), item.get("blob")
        if not isinstance(path, str) or not _safe_ref(path) or path in out:
            raise Usage(f"{where}: file path {path!r} is not a new path inside the repo")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise Usage(f"{where}: file '{path}' needs a size in bytes")
        if (sha is None) == (blob is None) or not (
            (isinstance(sha, str) and _HEX64.fullmatch(sha))
            or (isinstance(blob, str) and _COMMIT.fullmatch(blob))
        ):
            raise Usage(f"{where}: file '{path}' needs a sha256 (64 hex) or a blob (40 hex)")
        out[path] = LockedFile(path, size, sha, blob)
    return tuple(out[p] for p in sorted(out))


def _safe_ref(revision: str) -> bool:
    # The name becomes a path under refs/ (as the client writes it): no way out of that folder.
    parts = revision.split("/")
    return (
        bool(revision)
        and "\\" not in revision
        and "\0" not in revision
        and all(p not in ("", ".", "..") for p in parts)
    )


# -- environment ----------------------------------------------------------------------------------


def hub_cache_dir(*, required: bool) -> str:
    """The cache folder the client uses by default (HF_HUB_CACHE, else HF_HOME/hub, ...)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expanduser(os.environ[name])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    if required:
        # A fetch must land where the image says (ENV HF_HOME), not in some user's home.
        raise Usage("set HF_HOME (or HF_HUB_CACHE) to the cache the image uses")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(xdg, "huggingface", "hub")


def read_token() -> str | None:
    path = os.environ.get("BAKE_FETCH_TOKEN_FILE") or TOKEN_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Failed(f"cannot read the token file {path}: {exc.strerror}") from None


def prepare_env(*, offline: bool) -> None:
    """Set what the client reads at import time; call before importing huggingface_hub."""
    env = os.environ
    env["HF_HUB_OFFLINE"] = "1" if offline else "0"
    env.pop("TRANSFORMERS_OFFLINE", None)  # the client reads it as HF_HUB_OFFLINE too
    # Plain lines in BuildKit's log instead of tqdm bars; this script prints its own progress.
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    # The token comes from the secret file only, passed explicitly; nothing else may supply one.
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    # Plain HTTPS downloads through the client's own HTTP stack, which honours HTTPS_PROXY and
    # the CA bundle variables; the Xet transfer library is a separate stack with its own rules
    # and its own cache under HF_HOME.  The Hub serves every file over plain HTTPS too.
    env["HF_HUB_DISABLE_XET"] = "1"
    # Keep blobs inside the repo's folder (no cache-wide store): the layer holds one repo whole.
    env["HF_HUB_DISABLE_SHARED_BLOBS"] = "1"
    if not env.get("HF_ENDPOINT") and os.path.isfile(ENDPOINT_FILE):
        with open(ENDPOINT_FILE, encoding="utf-8") as fh:
            endpoint = fh.read().strip()
        if endpoint:
            env["HF_ENDPOINT"] = endpoint


def say(message: str) -> None:
    print(f"bake-fetch: {message}", flush=True)


def _mb(n: int) -> str:
    return f"{n / 1e3:.1f} kB" if n < 100_000 else f"{n / 1e6:.1f} MB"


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


# -- fetch ----------------------------------------------------------------------------------------


def fetch(spec_path: str) -> None:
    spec = load_spec(spec_path)
    cache_dir = os.path.abspath(hub_cache_dir(required=True))
    token = read_token()
    prepare_env(offline=False)
    try:
        _fetch(spec, cache_dir, token)
    except Failed:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback that could hold the token
        raise Failed(f"{spec.label}: {describe(exc, spec, token)}") from None


def _fetch(spec: Spec, cache_dir: str, token: str | None) -> None:
    if spec.files:
        _fetch_locked(spec, cache_dir, token)
        return
    from huggingface_hub import HfApi, snapshot_download

    started = time.monotonic()
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    say(f"{spec.label}: listing files at {endpoint}" + (" (with token)" if token else ""))
    api = HfApi(token=token or False)
    # One request without the client's retries first: a dead proxy or Hub, a wrong repo or commit
    # fails in a second here, where the listing below would back off for half a minute.
    api.repo_info(
        spec.repo, repo_type=spec.kind, revision=spec.commit, timeout=30, token=token or False
    )
    sizes = list_files(api, spec, token)
    selected = select(spec, sizes)
    total = sum(sizes[p] for p in selected)
    say(f"{spec.label}: {_files(len(selected))}, {_mb(total)} to fetch")

    storage = os.path.join(cache_dir, spec.folder)
    snapshot = os.path.join(storage, "snapshots", spec.commit)
    progress = Progress(
        spec, snapshot, os.path.join(storage, "blobs"), {p: sizes[p] for p in selected}
    )
    progress.start()
    try:
        snapshot_download(
            spec.repo,
            repo_type=spec.kind,
            revision=spec.commit,
            cache_dir=cache_dir,
            allow_patterns=list(spec.include) or None,
            ignore_patterns=list(spec.exclude) or None,
            token=token or False,
        )
    finally:
        progress.stop()
    missing = [p for p in selected if not os.path.isfile(os.path.join(snapshot, p))]
    if missing:
        raise Failed(f"{spec.label}: '{missing[0]}' is missing after the download")
    if spec.named_revision:
        write_ref(storage, spec.named_revision, spec.commit)
    write_manifest(storage, spec, {p: sizes[p] for p in selected})
    normalize(cache_dir, storage)
    took = time.monotonic() - started
    say(f"{spec.label}: done, {_files(len(selected))}, {_mb(total)} in {took:.1f} s")


def _fetch_locked(spec: Spec, cache_dir: str, token: str | None) -> None:
    """Exactly the locked files, by path at the commit; each checked against its digest."""
    from huggingface_hub import hf_hub_download

    started = time.monotonic()
    sizes = {f.path: f.size for f in spec.files}
    total = sum(sizes.values())
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    say(f"{spec.label}: {_files(len(sizes))}, {_mb(total)} to fetch from {endpoint} (locked)"
        + (" (with token)" if token else ""))
    storage = os.path.join(cache_dir, spec.folder)
    snapshot = os.path.join(storage, "snapshots", spec.commit)
    progress = Progress(spec, snapshot, os.path.join(storage, "blobs"), sizes)
    progress.start()
    try:
        for locked in spec.files:
            hf_hub_download(
                spec.repo,
                locked.path,
                repo_type=spec.kind,
                revision=spec.commit,
                cache_dir=cache_dir,
                token=token or False,
            )
    finally:
        progress.stop()
    for locked in spec.files:
        verify(spec, snapshot, locked)
    if spec.named_revision:
        write_ref(storage, spec.named_revision, spec.commit)
    write_manifest(storage, spec, sizes)
    normalize(cache_dir, storage)
    took = time.monotonic() - started
    say(f"{spec.label}: done, {_files(len(sizes))} checked against bake.lock, "
        f"{_mb(total)} in {took:.1f} s")


def verify(spec: Spec, snapshot: str, locked: LockedFile) -> None:
    """The fetched file holds the locked bytes, or the step fails naming both digests."""
    local = os.path.join(snapshot, *locked.path.split("/"))
    if not os.path.isfile(local):
        raise Failed(f"{spec.label}: '{locked.path}' is missing after the download")
    size = os.path.getsize(local)
    digest = hashlib.sha256() if locked.sha256 else hashlib.sha1(b"blob %d\0" % size)
    with open(local, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    kind = "sha256" if locked.sha256 else "git-blob"
    received = f"{kind}:{digest.hexdigest()}"
    if received != locked.expected or size != locked.size:
        raise Failed(
            f"{spec.label}: '{locked.path}' does not match bake.lock: expected "
            f"{locked.expected} ({locked.size} bytes), received {received} ({size} bytes)"
        )


def list_files(api: Any, spec: Spec, token: str | None) -> dict[str, int]:
    """Every file of the repo at the commit, with its size (what snapshot_download lists)."""
    lister = getattr(api, "list_repo_tree", None)
    if lister is not None:
        entries = lister(
            spec.repo,
            revision=spec.commit,
            repo_type=spec.kind,
            recursive=True,
            token=token or False,
        )
        # Files have a blob id; folders (RepoFolder) do not.
        return {e.path: int(e.size or 0) for e in entries if hasattr(e, "blob_id")}
    # Releases before list_repo_tree (< 0.20) list files as the repo's siblings.
    info = api.repo_info(
        spec.repo,
        revision=spec.commit,
        repo_type=spec.kind,
        files_metadata=True,
        token=token or False,
    )
    return {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}


def select(spec: Spec, sizes: dict[str, int]) -> list[str]:
    """The files the patterns select, with snapshot_download's own filter; fail on no match."""
    # Public (documented, in utils' lazy __all__), but not re-exported in a way mypy sees.
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    paths = sorted(sizes)
    for pattern in spec.include:
        if not list(filter_repo_objects(paths, allow_patterns=[pattern])):
            raise Failed(f"{spec.label}: include pattern '{pattern}' matches no file")
    selected: list[str] = sorted(
        filter_repo_objects(
            paths,
            allow_patterns=list(spec.include) or None,
            ignore_patterns=list(spec.exclude) or None,
        )
    )
    if not selected:
        raise Failed(f"{spec.label}: the include/exclude patterns select no file")
    return selected


class Progress:
    """Progress lines for BuildKit's plain log, read from the cache folder as it fills.

    Watching the files rather than hooking the client's progress bars works with every release.
    """

    def __init__(self, spec: Spec, snapshot: str, blobs: str, sizes: dict[str, int]) -> None:
        self.spec, self.snapshot, self.blobs, self.sizes = spec, snapshot, blobs, sizes
        self.total = sum(sizes.values())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bake-fetch-progress", daemon=True)
        self._last: tuple[int, int] = (-1, -1)
        self._last_time = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.report()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.report()

    def report(self) -> None:
        done = [p for p in self.sizes if os.path.isfile(os.path.join(self.snapshot, p))]
        partial = 0
        try:
            with os.scandir(self.blobs) as it:
                partial = sum(e.stat().st_size for e in it if e.name.endswith(".incomplete"))
        except OSError:
            pass  # the folder does not exist yet, or a file was renamed under us
        got = min(self.total, sum(self.sizes[p] for p in done) + partial)
        now = time.monotonic()
        # A line per finished file; in between, one every 5 s while bytes arrive.
        if len(done) != self._last[0] or (got != self._last[1] and now - self._last_time >= 5):
            self._last, self._last_time = (len(done), got), now
            say(
                f"{self.spec.label}: {len(done)}/{len(self.sizes)} files, "
                f"{_mb(got)} of {_mb(self.total)}"
            )


def write_ref(storage: str, revision: str, commit: str) -> None:
    # What the client writes when it resolves a branch itself: refs/<name> holds the commit, no
    # newline.  from_pretrained("org/name") offline reads refs/main to find the snapshot.
    path = os.path.join(storage, "refs", *revision.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(commit)


def write_manifest(storage: str, spec: Spec, sizes: dict[str, int]) -> None:
    doc = {
        "format": 1,
        "kind": spec.kind,
        "repo": spec.repo,
        "commit": spec.commit,
        "include": list(spec.include),
        "exclude": list(spec.exclude),
        "files": sizes,
    }
    folder = os.path.join(storage, MANIFEST_DIR)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, spec.manifest_name), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def normalize(cache_dir: str, storage: str) -> None:
    """Make the repo's cache folder byte-identical for the same files: no locks or leftovers,
    fixed modes (0644 files, 0755 folders) and one fixed mtime everywhere, links included."""
    locks = os.path.join(cache_dir, ".locks")
    shutil.rmtree(os.path.join(locks, os.path.basename(storage)), ignore_errors=True)
    with contextlib.suppress(OSError):  # not there, or another repo's locks are still in it
        os.rmdir(locks)
    # Recent clients cache the commit's full file listing in trees/; offline, snapshot_download
    # then calls a snapshot of only the included files incomplete and refuses it.  Without the
    # listing it serves what is there, as every older client does; the listing is only a cache.
    shutil.rmtree(os.path.join(storage, "trees"), ignore_errors=True)
    for sub, leftover in _LEFTOVERS.items():
        for root, _dirs, files in os.walk(os.path.join(storage, sub)):
            for name in files:
                if leftover.fullmatch(name) and not os.path.islink(os.path.join(root, name)):
                    os.remove(os.path.join(root, name))
    # Bottom-up, so that a folder's mtime is fixed after everything in it changed.
    for root, dirs, files in os.walk(storage, topdown=False):
        for name in files + dirs:
            _fix(os.path.join(root, name))
    _fix(storage)
    tag = os.path.join(cache_dir, "CACHEDIR.TAG")
    if os.path.isfile(tag):
        _fix(tag)
    _fix(cache_dir)
    hf_home = os.environ.get("HF_HOME")
    if hf_home and os.path.abspath(os.path.join(hf_home, "hub")) == cache_dir:
        _fix(os.path.abspath(hf_home))


def _fix(path: str) -> None:
    mode = os.lstat(path).st_mode
    if not stat.S_ISLNK(mode):
        os.chmod(path, 0o755 if stat.S_ISDIR(mode) else 0o644)
    os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


# -- check ----------------------------------------------------------------------------------------


def check(spec_paths: list[str]) -> None:
    specs = [load_spec(p) for p in spec_paths]
    cache_dir = os.path.abspath(hub_cache_dir(required=False))
    prepare_env(offline=True)
    version = _client_version()
    for spec in specs:
        files = check_layout(spec, cache_dir)
        # The layout check alone when the image has no client (a job that reads the files itself).
        how = "cache layout only: no huggingface_hub in the image"
        if version is not None:
            check_client(spec, files)
            how = f"loads offline with huggingface_hub {version}"
        say(f"check {spec.label}: {_files(len(files))} ok ({how})")
        if spec.named_revision and spec.named_revision != "main":
            say(
                f"check {spec.label}: note: baked at '{spec.named_revision}', so load it with "
                f"revision='{spec.named_revision}' (there is no refs/main)"
            )
        elif not spec.named_revision:
            say(f"check {spec.label}: note: pinned by commit, so load it with that revision")


def _client_version() -> str | None:
    try:
        import huggingface_hub
    except ImportError:
        return None
    return str(huggingface_hub.__version__)


def check_layout(spec: Spec, cache_dir: str) -> list[str]:
    """The selected files are in the cache as the client lays it out; their list."""
    storage = os.path.join(cache_dir, spec.folder)
    if not os.path.isdir(storage):
        raise Failed(f"check {spec.label}: not in the cache at {cache_dir}")
    manifest = os.path.join(storage, MANIFEST_DIR, spec.manifest_name)
    try:
        with open(manifest, encoding="utf-8") as fh:
            sizes: dict[str, int] = json.load(fh)["files"]
    except (OSError, ValueError, KeyError):
        raise Failed(
            f"check {spec.label}: no fetch with these patterns in the cache ({manifest})"
        ) from None
    if spec.named_revision:
        ref = os.path.join(storage, "refs", *spec.named_revision.split("/"))
        try:
            with open(ref, encoding="utf-8") as fh:
                pointed = fh.read().strip()
        except OSError:
            pointed = ""
        if pointed != spec.commit:
            raise Failed(
                f"check {spec.label}: refs/{spec.named_revision} does not point at {spec.commit}"
            )
    snapshot = os.path.join(storage, "snapshots", spec.commit)
    for path, size in sorted(sizes.items()):
        local = os.path.join(snapshot, *path.split("/"))
        if not os.path.isfile(local):  # follows the link: a missing blob counts as missing
            raise Failed(f"check {spec.label}: missing file '{path}' in the cache")
        actual = os.path.getsize(local)
        if actual != size:
            raise Failed(f"check {spec.label}: file '{path}' has {actual} bytes, expected {size}")
        try:
            with open(local, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise Failed(
                f"check {spec.label}: file '{path}' cannot be read: {exc.strerror}"
            ) from None
    return sorted(sizes)


def check_client(spec: Spec, files: list[str]) -> None:
    """The same calls from_pretrained makes, offline, by commit and by the name the job gave."""
    from huggingface_hub import hf_hub_download, snapshot_download

    revisions = [spec.commit] + ([spec.named_revision] if spec.named_revision else [])
    for revision in revisions:
        for path in files:
            _offline(
                spec,
                f"'{path}'",
                hf_hub_download,
                spec.repo,
                path,
                repo_type=spec.kind,
                revision=revision,
            )
        _offline(
            spec,
            "the snapshot",
            snapshot_download,
            spec.repo,
            repo_type=spec.kind,
            revision=revision,
            allow_patterns=list(spec.include) or None,
            ignore_patterns=list(spec.exclude) or None,
            local_files_only=True,
        )


def _offline(spec: Spec, what: str, load: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    try:
        load(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        raise Failed(
            f"check {spec.label}: {what} does not load offline: {type(exc).__name__}: "
            f"{_one_line(str(exc), None)}"
        ) from None


# -- errors ---------------------------------------------------------------------------------------


def describe(exc: BaseException, spec: Spec, token: str | None) -> str:
    """One line for a client error, built from its type: no header or token can leak through."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if "GatedRepoError" in names:
        if token:
            return "the repo is gated and the token has no access to it"
        return "the repo is gated; set HF_TOKEN in the seller's environment"
    if "RevisionNotFoundError" in names:
        return f"commit {spec.commit} not found in the repo"
    if "RepositoryNotFoundError" in names:
        return "repo not found" + ("" if token else " (a private repo needs HF_TOKEN)")
    if "EntryNotFoundError" in names or "RemoteEntryNotFoundError" in names:
        return "a file of the repo is missing on the Hub"
    if "OfflineModeIsEnabled" in names:
        return "offline mode is on (HF_HUB_OFFLINE)"
    if status == 401 and token:
        return "the Hub rejected the token (401 Unauthorized)"
    if status is not None and ("HfHubHTTPError" in names or "HTTPError" in names):
        return f"the Hub answered HTTP {status}"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    text = _one_line(str(exc), token)
    if isinstance(exc, OSError) or any(
        cls.__module__.split(".")[0] in ("httpx2", "httpx", "httpcore", "requests", "urllib3")
        for cls in type(exc).__mro__
    ):
        return f"cannot reach the Hub at {endpoint}: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}"


def _one_line(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: list[str]) -> int:
    usage = "usage: hubfetch.py fetch SPEC.json | hubfetch.py check SPEC.json [SPEC.json ...]"
    try:
        if len(argv) == 2 and argv[0] == "fetch":
            fetch(argv[1])
        elif len(argv) >= 2 and argv[0] == "check":
            check(argv[1:])
        else:
            raise Usage(usage)
    except Failed as exc:
        print(f"bake-fetch: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bake-fetch: error: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

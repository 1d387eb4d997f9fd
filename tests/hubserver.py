"""A small server that speaks enough of the Hugging Face Hub's HTTP protocol for the real client.

huggingface.co cannot be reached from the machines bake is tested on, so tests (and the demo) point
``HF_ENDPOINT`` at this server and let the real ``huggingface_hub`` client talk to it: the same
requests, headers and error codes the client sees from the Hub, so that what passes here is what
the client does against the real thing.  Endpoints served::

    GET       /api/{models,datasets}/{repo}[/revision/{rev}]   repo info (sha, siblings, gated;
                                                              ?blobs=true: each file's size,
                                                              blobId and lfs)
    GET       /api/{models,datasets}/{repo}/tree/{rev}[/{path}] tree listing (?recursive=true,
                                                              ?expand=true: lastCommit, security)
    POST      /api/{models,datasets}/{repo}/paths-info/{rev}  paths info (form: paths, expand)
    HEAD/GET  /{repo}/resolve/{rev}/{path}                    a model file (Range supported)
    HEAD/GET  /datasets/{repo}/resolve/{rev}/{path}           a dataset file

Repos are plain Python values (:class:`HubRepo`); commits are sha1 digests of their contents, so
the same files always give the same commit.  Large files can be :class:`Generated`: deterministic
pseudo-random bytes made on the fly, never held in memory.  Every request is recorded (never the
token itself) for assertions.

Run it alone for the demo and benchmarks::

    python tests/hubserver.py --listen 172.17.0.1:8765 --demo [--big-mb 256] [--token hf_xxx]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import signal
import socket
import struct
import sys
import threading
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, Self
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "Generated",
    "HubRepo",
    "RecordedRequest",
    "RunningHub",
    "demo_repos",
    "start_hub",
]

Kind = Literal["model", "dataset"]

# Files the Hub stores with Git LFS (by the usual .gitattributes patterns, or by size): the client
# gets their sha256 through X-Linked-Etag and uses it as the blob name, as it does on the Hub.
_LFS_SUFFIXES = (
    ".bin",
    ".safetensors",
    ".parquet",
    ".arrow",
    ".pt",
    ".pth",
    ".onnx",
    ".h5",
    ".gguf",
)
_LFS_MIN_SIZE = 10 * 1024 * 1024
_CHUNK = 1024 * 1024
# A fixed date: nothing the server says may depend on when it runs.
_DATE = "2024-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class Generated:
    """``size`` deterministic pseudo-random bytes from ``seed``, made chunk by chunk on demand."""

    size: int
    seed: int = 0

    def chunk(self, index: int) -> bytes:
        # One Mersenne Twister per 1 MiB chunk: any offset can be served without generating the
        # bytes before it (Range requests), at about 500 MB/s.
        n = min(_CHUNK, self.size - index * _CHUNK)
        return random.Random(self.seed * 1_000_003 + index).randbytes(n)

    def iter_range(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)``, in chunks of at most 1 MiB."""
        index = start // _CHUNK
        while start < end:
            data = self.chunk(index)
            lo = start - index * _CHUNK
            hi = min(len(data), end - index * _CHUNK)
            yield data[lo:hi]
            start = index * _CHUNK + hi
            index += 1


Content = bytes | Generated

_SHA256_CACHE: dict[Generated, str] = {}
_SHA256_LOCK = threading.Lock()


def _sha256(content: Content) -> str:
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest()
    with _SHA256_LOCK:
        # Hashing 200 MB takes about a second: once per process, and only when asked for.
        if content not in _SHA256_CACHE:
            digest = hashlib.sha256()
            for part in content.iter_range(0, content.size):
                digest.update(part)
            _SHA256_CACHE[content] = digest.hexdigest()
        return _SHA256_CACHE[content]


def _size(content: Content) -> int:
    return len(content) if isinstance(content, bytes) else content.size


def _is_lfs(path: str, content: Content) -> bool:
    return (
        isinstance(content, Generated)
        or path.endswith(_LFS_SUFFIXES)
        or _size(content) >= _LFS_MIN_SIZE
    )


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(content: Content) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{_sha256(content)}\n"
        f"size {_size(content)}\n"
    ).encode()


@dataclass
class HubRepo:
    """A repo as tests define it: branches (and tags) map file paths to contents.

    A tag is either its own file mapping or the name of a branch (it then points at that branch's
    first commit, as a tag made when the repo was created would).
    """

    kind: Kind
    repo_id: str
    branches: dict[str, Mapping[str, Content]] = field(default_factory=dict)
    tags: dict[str, str | Mapping[str, Content]] = field(default_factory=dict)
    gated: bool = False
    private: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # the request target as sent, query included
    authorized: bool  # an Authorization header was present (its value is never kept)
    status: int


@dataclass
class _Commit:
    sha: str
    files: dict[str, Content]


@dataclass
class _RepoState:
    kind: Kind
    repo_id: str
    gated: bool
    private: bool
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def add_commit(self, files: Mapping[str, Content]) -> str:
        # sha1 of the repo's name and contents: the same files always make the same commit, so
        # two servers (or two runs) agree, which determinism tests rely on.
        digest = hashlib.sha1(f"{self.kind}s/{self.repo_id}\n".encode())
        for path in sorted(files):
            content = files[path]
            ident = (
                hashlib.sha1(content).hexdigest()
                if isinstance(content, bytes)
                else f"generated:{content.size}:{content.seed}"
            )
            digest.update(f"{path}\0{ident}\n".encode())
        sha = digest.hexdigest()
        self.commits.setdefault(sha, _Commit(sha, dict(files)))
        return sha

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(sha)


class _HubError(Exception):
    """An error response, with the headers the client maps to its typed errors."""

    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.commit = commit


class _State:
    def __init__(self, repos: Iterable[HubRepo], tokens: Iterable[str]) -> None:
        self.lock = threading.Lock()
        self.tokens = frozenset(tokens)
        self.repos: dict[tuple[str, str], _RepoState] = {}
        self.requests: list[RecordedRequest] = []
        for repo in repos:
            self.add_repo(repo)

    def add_repo(self, repo: HubRepo) -> None:
        state = _RepoState(repo.kind, repo.repo_id, repo.gated, repo.private)
        for name, files in repo.branches.items():
            state.branches[name] = state.add_commit(files)
        for name, target in repo.tags.items():
            state.tags[name] = (
                state.branches[target] if isinstance(target, str) else state.add_commit(target)
            )
        with self.lock:
            self.repos[(repo.kind, repo.repo_id)] = state

    def find(self, kind: str, repo_id: str) -> _RepoState:
        with self.lock:
            found = self.repos.get((kind, repo_id))
        if found is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return found


class RunningHub:
    """A server started by :func:`start_hub`; a context manager that closes it."""

    def __init__(self, server: _Server, state: _State) -> None:
        self._server = server
        self._state = state
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.endpoint = f"http://{self.host}:{self.port}"
        # A short poll interval: close() waits for the loop to notice, once per test.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="hubserver", daemon=True
        )
        self._thread.start()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.requests.clear()

    def add_repo(self, repo: HubRepo) -> None:
        self._state.add_repo(repo)

    def commit(
        self, repo_id: str, branch: str, files: Mapping[str, Content], *, kind: Kind | None = None
    ) -> str:
        """Make a commit with ``files`` (the whole tree) and move ``branch`` to it; its sha."""
        state = self._find_any(repo_id, kind)
        with self._state.lock:
            sha = state.add_commit(files)
            state.branches[branch] = sha
        return sha

    def tag(self, repo_id: str, tag: str, revision: str, *, kind: Kind | None = None) -> str:
        """Point ``tag`` at ``revision`` (a branch, tag or commit); the commit's sha."""
        state = self._find_any(repo_id, kind)
        with self._state.lock:
            commit = state.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            state.tags[tag] = commit.sha
        return commit.sha

    def tamper(
        self, repo_id: str, path: str, content: Content, *, revision: str = "main",
        kind: Kind | None = None,
    ) -> None:
        """Serve other bytes for ``path`` at the commit ``revision`` names, under the same commit:
        what a compromised mirror or a man in the middle would do (the Hub itself cannot)."""
        state = self._find_any(repo_id, kind)
        with self._state.lock:
            commit = state.resolve(revision)
            if commit is None or path not in commit.files:
                raise KeyError(f"{revision}:{path}")
            commit.files[path] = content

    def head(self, repo_id: str, revision: str = "main", *, kind: Kind | None = None) -> str:
        """The commit a branch or tag points at now."""
        state = self._find_any(repo_id, kind)
        with self._state.lock:
            commit = state.resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return commit.sha

    def _find_any(self, repo_id: str, kind: Kind | None) -> _RepoState:
        kinds: tuple[Kind, ...] = (kind,) if kind else ("model", "dataset")
        for k in kinds:
            with self._state.lock:
                found = self._state.repos.get((k, repo_id))
            if found is not None:
                return found
        raise KeyError(repo_id)

    def close(self) -> None:
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    # Handler threads sit in keep-alive reads; close() ends their sockets instead of joining them.
    daemon_threads = True
    block_on_close = False
    state: _State

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)


def start_hub(
    repos: Iterable[HubRepo],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tokens: Iterable[str] = (),
) -> RunningHub:
    """Serve ``repos`` on ``host:port`` (port 0: any free one) until closed.

    ``tokens`` are the tokens the server accepts; a request that carries any other token gets the
    Hub's 401 "Invalid credentials", and a gated or private repo is reachable only with a valid one.
    The server is ready when this returns.
    """
    state = _State(repos, tokens)
    return RunningHub(_Server((host, port), state), state)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_version = "bake-hubserver/1"
    server: _Server
    _recorded = False  # this request is in state.requests
    timeout = 60  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):  # the client hung up before the last flush
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are recorded in .requests; stderr stays quiet for tests and the demo

    def send_response(self, code: int, message: str | None = None) -> None:
        # Record the request before a byte of the answer leaves: a client that has its answer
        # (and a test that then reads .requests) must find the request already there.
        self._record(code)
        super().send_response(code, message)
        if self.close_connection:
            # Say so when the request asked for "Connection: close" (bake's egress proxy does, to
            # allow one request per connection), as real servers do: without it the client
            # would reuse the connection the proxy is about to close.
            self.send_header("Connection", "close")

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        self._serve(head=False)

    # -- dispatch ---------------------------------------------------------------------------------

    def _serve(self, *, head: bool) -> None:
        self._recorded = False
        unanswered = 500  # what is recorded if no answer was started
        try:
            authorized = self._check_token(self.headers.get("Authorization"))
            self._route(head=head, authorized=authorized)
        except _HubError as err:
            self._send_error(err, head=head)
        except (BrokenPipeError, ConnectionResetError):
            unanswered = 499  # the client went away before its answer
            self.close_connection = True
        finally:
            self._record(unanswered)

    def _record(self, status: int) -> None:
        if self._recorded:
            return
        self._recorded = True
        request = RecordedRequest(
            self.command, self.path, self.headers.get("Authorization") is not None, status
        )
        with self.server.state.lock:
            self.server.state.requests.append(request)

    def _check_token(self, auth: str | None) -> bool:
        if auth is None:
            return False
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token not in self.server.state.tokens:
            # What the Hub answers to any request with a wrong token, even for a public repo.
            raise _HubError(401, "Invalid credentials in Authorization header")
        return True

    def _route(self, *, head: bool, authorized: bool) -> int:
        url = urlsplit(self.path)
        raw = url.path.strip("/").split("/")
        parts = [unquote(p) for p in raw]
        if len(parts) >= 3 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            kind: Kind = "model" if parts[1] == "models" else "dataset"
            repo_id, rest = _split_repo(parts[2:], ("revision", "tree", "paths-info"))
            query = parse_qs(url.query)
            blobs = _flag(query, "blobs")
            if self.command == "POST":
                if len(rest) == 2 and rest[0] == "paths-info":
                    form = parse_qs(getattr(self, "_body", b"").decode())
                    return self._paths_info(
                        kind, repo_id, rest[1], form.get("paths", []), _flag(form, "expand"),
                        authorized,
                    )
                raise _HubError(404, f"Not found: {url.path}")
            if not rest:
                return self._info(kind, repo_id, "main", authorized, head=head, blobs=blobs)
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(kind, repo_id, rest[1], authorized, head=head, blobs=blobs)
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(
                    kind,
                    repo_id,
                    rest[1],
                    "/".join(rest[2:]),
                    _flag(query, "recursive"),
                    authorized,
                    head=head,
                    expand=_flag(query, "expand"),
                )
        else:
            kind = "model"
            if parts and parts[0] == "datasets":
                kind, parts = "dataset", parts[1:]
            repo_id, rest = _split_repo(parts, ("resolve",))
            if len(rest) >= 3 and rest[0] == "resolve":
                return self._resolve(
                    kind, repo_id, rest[1], "/".join(rest[2:]), authorized, head=head
                )
        raise _HubError(404, f"Not found: {url.path}")

    # -- endpoints --------------------------------------------------------------------------------

    def _repo(self, kind: Kind, repo_id: str, authorized: bool) -> _RepoState:
        repo = self.server.state.find(kind, repo_id)
        if repo.private and not authorized:
            # The Hub does not tell a private repo from a missing one.
            raise _HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: _RepoState, revision: str) -> _Commit:
        with self.server.state.lock:
            commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _info(
        self, kind: Kind, repo_id: str, revision: str, authorized: bool, *, head: bool,
        blobs: bool = False,
    ) -> int:
        # Like the Hub, a gated repo's metadata is public: only its files need a token.
        repo = self._repo(kind, repo_id, authorized)
        commit = self._commit(repo, revision)
        body: dict[str, object] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit.sha,
            "lastModified": _DATE,
            "createdAt": _DATE,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [
                _sibling(p, commit.files[p]) if blobs else {"rfilename": p}
                for p in sorted(commit.files)
            ],
        }
        if kind == "model":
            body["modelId"] = repo_id
        return self._send_json(body, head=head)

    def _tree(
        self,
        kind: Kind,
        repo_id: str,
        revision: str,
        path: str,
        recursive: bool,
        authorized: bool,
        *,
        head: bool,
        expand: bool = False,
    ) -> int:
        repo = self._repo(kind, repo_id, authorized)
        commit = self._commit(repo, revision)
        prefix = f"{path}/" if path else ""
        if path and not any(p.startswith(prefix) for p in commit.files):
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.sha)
        entries: list[dict[str, object]] = []
        folders: set[str] = set()
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :].split("/")
            # Folders on the way to the file, as the Hub lists them.
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                folder = prefix + "/".join(rest[:depth])
                if folder not in folders:
                    folders.add(folder)
                    entries.append(_folder_entry(commit, folder, expand))
            if recursive or len(rest) == 1:
                entries.append(_file_entry(file_path, commit.files[file_path], commit, expand))
        entries.sort(key=lambda e: str(e["path"]))
        return self._send_json(entries, head=head)

    def _paths_info(
        self,
        kind: Kind,
        repo_id: str,
        revision: str,
        paths: list[str],
        expand: bool,
        authorized: bool,
    ) -> int:
        # The Hub answers for the paths that exist (files and folders) and ignores the others.
        repo = self._repo(kind, repo_id, authorized)
        commit = self._commit(repo, revision)
        entries: list[dict[str, object]] = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in commit.files:
                entries.append(_file_entry(path, commit.files[path], commit, expand))
            elif path and any(p.startswith(path + "/") for p in commit.files):
                entries.append(_folder_entry(commit, path, expand))
        return self._send_json(entries, head=False)

    def _resolve(
        self, kind: Kind, repo_id: str, revision: str, path: str, authorized: bool, *, head: bool
    ) -> int:
        repo = self._repo(kind, repo_id, authorized)
        if repo.gated and not authorized:
            raise _HubError(
                401,
                f"Access to {kind} {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
                "GatedRepo",
            )
        commit = self._commit(repo, revision)
        content = commit.files.get(path)
        if content is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", commit.sha)
        size = _size(content)
        headers = {
            "X-Repo-Commit": commit.sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if _is_lfs(path, content):
            sha256 = _sha256(content)
            headers["ETag"] = f'"{sha256}"'
            headers["X-Linked-Etag"] = f'"{sha256}"'
            headers["X-Linked-Size"] = str(size)
        else:
            assert isinstance(content, bytes)
            headers["ETag"] = f'"{_git_blob_oid(content)}"'
        start, end, status = 0, size, 200
        if not head and "Range" in self.headers:
            start, end = _parse_range(self.headers["Range"], size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(size if head else end - start))
        self.end_headers()
        if not head:
            if isinstance(content, bytes):
                self.wfile.write(content[start:end])
            else:
                for part in content.iter_range(start, end):
                    self.wfile.write(part)
        return status

    # -- responses --------------------------------------------------------------------------------

    def _send_json(self, body: object, *, head: bool) -> int:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        return 200

    def _send_error(self, err: _HubError, *, head: bool) -> None:
        data = json.dumps({"error": err.message}).encode()
        self.send_response(err.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        # The client maps these two headers to RepositoryNotFoundError, GatedRepoError, ...
        if err.code:
            self.send_header("X-Error-Code", err.code)
        self.send_header("X-Error-Message", err.message)
        if err.commit:
            self.send_header("X-Repo-Commit", err.commit)
        self.end_headers()
        if not head:
            self.wfile.write(data)


def _split_repo(parts: list[str], keywords: tuple[str, ...]) -> tuple[str, list[str]]:
    """``org/name/<keyword>/...`` or ``name/<keyword>/...`` -> (repo id, rest from the keyword)."""
    if len(parts) >= 3 and parts[2] in keywords:
        return "/".join(parts[:2]), parts[2:]
    if len(parts) >= 2 and parts[1] in keywords:
        return parts[0], parts[1:]
    if len(parts) == 2:
        return "/".join(parts), []
    if len(parts) == 1:
        return parts[0], []
    raise _HubError(404, "Not found")


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    # The client sends Python booleans as the HTTP stack spells them ("true", "True") or 1.
    return query.get(name, ["false"])[-1].lower() in ("true", "1")


def _blob_id(path: str, content: Content) -> str:
    """The git blob id the Hub reports: of the LFS pointer for LFS files, else of the bytes."""
    if _is_lfs(path, content):
        return _git_blob_oid(_lfs_pointer(content))
    assert isinstance(content, bytes)
    return _git_blob_oid(content)


def _last_commit(commit: _Commit) -> dict[str, object]:
    # One commit per tree here: every path was last changed by the commit itself.
    return {"id": commit.sha, "title": f"Upload {commit.sha[:7]}", "date": _DATE}


def _folder_entry(commit: _Commit, folder: str, expand: bool) -> dict[str, object]:
    oid = hashlib.sha1(f"tree:{commit.sha}:{folder}".encode()).hexdigest()
    entry: dict[str, object] = {"type": "directory", "oid": oid, "size": 0, "path": folder}
    if expand:
        entry["lastCommit"] = _last_commit(commit)
    return entry


def _file_entry(
    path: str, content: Content, commit: _Commit | None = None, expand: bool = False
) -> dict[str, object]:
    """A file as the tree and paths-info endpoints list it (with ``expand``: its last commit and
    the security scan's verdict, as the Hub adds them)."""
    entry: dict[str, object] = {
        "type": "file",
        "oid": _blob_id(path, content),
        "size": _size(content),
        "path": path,
    }
    if _is_lfs(path, content):
        pointer = _lfs_pointer(content)
        entry["lfs"] = {
            "oid": _sha256(content),
            "size": _size(content),
            "pointerSize": len(pointer),
        }
    if expand and commit is not None:
        entry["lastCommit"] = _last_commit(commit)
        entry["securityFileStatus"] = {
            "status": "safe",
            "avScan": {"virusFound": False, "virusNames": None},
            "pickleImportScan": None,
        }
    return entry


def _sibling(path: str, content: Content) -> dict[str, object]:
    """A file in the repo info's ``siblings`` with ``blobs=true`` (``files_metadata=True``): the
    Hub names the LFS digest ``sha256`` here, where the tree endpoint says ``oid``."""
    entry: dict[str, object] = {
        "rfilename": path,
        "blobId": _blob_id(path, content),
        "size": _size(content),
    }
    if _is_lfs(path, content):
        pointer = _lfs_pointer(content)
        entry["lfs"] = {"sha256": _sha256(content), "size": _size(content),
                        "pointerSize": len(pointer)}
    return entry


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """A single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range -> [start, end)."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.partition("-")
    try:
        if unit.strip() != "bytes" or "," in spec:
            raise ValueError(header)
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
    except ValueError:
        raise _HubError(416, f"Unsupported range: {header}") from None
    if start >= end:
        raise _HubError(416, f"Range not satisfiable: {header}")
    return start, end


# -- demo repos -----------------------------------------------------------------------------------

_POSITIVE = ("good", "great", "excellent", "wonderful", "fun", "love", "loved", "best", "brilliant")
_NEGATIVE = (
    "bad",
    "awful",
    "boring",
    "terrible",
    "worst",
    "hate",
    "hated",
    "dull",
    "poor",
    "waste",
)
_DEMO_WORDS = (
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "not",
    "no",
    "is",
    "was",
    "are",
    "were",
    "be",
    "it",
    "this",
    "that",
    "movie",
    "film",
    "story",
    "plot",
    "acting",
    "actor",
    *_POSITIVE,
    *_NEGATIVE,
)


def _safetensors(tensors: Mapping[str, tuple[list[int], list[float]]]) -> bytes:
    """A valid safetensors file of float32 tensors (the format is a JSON header + raw data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        shape, values = tensors[name]
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _tiny_distilbert() -> dict[str, bytes]:
    """A real (tiny, untrained) DistilBERT classifier: transformers loads it with no warnings."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_DEMO_WORDS]
    dim, hidden, positions, labels = 16, 32, 64, 2
    rng = random.Random(20240101)

    def weights(*shape: int) -> tuple[list[int], list[float]]:
        n = 1
        for s in shape:
            n *= s
        return list(shape), [rng.uniform(-0.05, 0.05) for _ in range(n)]

    def const(value: float, n: int) -> tuple[list[int], list[float]]:
        return [n], [value] * n

    t: dict[str, tuple[list[int], list[float]]] = {
        "distilbert.embeddings.word_embeddings.weight": weights(len(vocab), dim),
        "distilbert.embeddings.position_embeddings.weight": weights(positions, dim),
        "distilbert.embeddings.LayerNorm.weight": const(1.0, dim),
        "distilbert.embeddings.LayerNorm.bias": const(0.0, dim),
        "pre_classifier.weight": weights(dim, dim),
        "pre_classifier.bias": const(0.0, dim),
        "classifier.weight": weights(labels, dim),
        "classifier.bias": const(0.0, labels),
    }
    layer = "distilbert.transformer.layer.0"
    for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
        t[f"{layer}.attention.{lin}.weight"] = weights(dim, dim)
        t[f"{layer}.attention.{lin}.bias"] = const(0.0, dim)
    for norm in ("sa_layer_norm", "output_layer_norm"):
        t[f"{layer}.{norm}.weight"] = const(1.0, dim)
        t[f"{layer}.{norm}.bias"] = const(0.0, dim)
    t[f"{layer}.ffn.lin1.weight"] = weights(hidden, dim)
    t[f"{layer}.ffn.lin1.bias"] = const(0.0, hidden)
    t[f"{layer}.ffn.lin2.weight"] = weights(dim, hidden)
    t[f"{layer}.ffn.lin2.bias"] = const(0.0, dim)
    config = {
        "architectures": ["DistilBertForSequenceClassification"],
        "model_type": "distilbert",
        "activation": "gelu",
        "attention_dropout": 0.1,
        "dim": dim,
        "dropout": 0.1,
        "hidden_dim": hidden,
        "initializer_range": 0.02,
        "max_position_embeddings": positions,
        "n_heads": 2,
        "n_layers": 1,
        "pad_token_id": 0,
        "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2,
        "sinusoidal_pos_embds": False,
        "tie_weights_": True,
        "vocab_size": len(vocab),
        "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
        "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
    }
    tokenizer_config = {
        "tokenizer_class": "DistilBertTokenizer",
        "do_lower_case": True,
        "model_max_length": positions,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    # A word list that needs no ML library: the demo job can score text with the stdlib alone.
    lexicon = {w: (1 if w in _POSITIVE else -1) for w in sorted({*_POSITIVE, *_NEGATIVE})}
    return {
        "README.md": b"# tiny-sentiment\n\nA tiny untrained DistilBERT classifier for the demo.\n",
        "config.json": _dumps(config),
        "tokenizer_config.json": _dumps(tokenizer_config),
        "special_tokens_map.json": _dumps(
            {
                k: tokenizer_config[k]
                for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
            }
        ),
        "vocab.txt": ("\n".join(vocab) + "\n").encode(),
        "lexicon.json": _dumps(lexicon),
        "model.safetensors": _safetensors(t),
    }


def _dumps(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _reviews_csv(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    good, bad = sorted(_POSITIVE), sorted(_NEGATIVE)
    lines = ["text,label"]
    for _ in range(n):
        label = rng.randrange(2)
        word = rng.choice(good if label else bad)
        lines.append(f"the movie was {word},{label}")
    return ("\n".join(lines) + "\n").encode()


def demo_repos(big_mb: int = 0) -> list[HubRepo]:
    """The demo's repos: a tiny model, a tiny dataset, a gated copy; a big model if ``big_mb``."""
    model = _tiny_distilbert()
    repos = [
        HubRepo(
            "model", "bake-demo/tiny-sentiment", branches={"main": model}, tags={"v1.0": "main"}
        ),
        HubRepo(
            "dataset",
            "bake-demo/tiny-reviews",
            branches={
                "main": {
                    "README.md": b"# tiny-reviews\n\nMovie reviews made up for bake's demo.\n",
                    "data/train.csv": _reviews_csv(1, 64),
                    "data/validation.csv": _reviews_csv(2, 16),
                }
            },
        ),
        HubRepo("model", "bake-demo/tiny-gated", branches={"main": model}, gated=True),
    ]
    if big_mb:
        repos.append(
            HubRepo(
                "model",
                "bake-demo/big-model",
                branches={
                    "main": {
                        "config.json": _dumps({"model_type": "bake-demo-big", "size_mb": big_mb}),
                        "weights.bin": Generated(big_mb * 1024 * 1024, seed=big_mb),
                    }
                },
            )
        )
    return repos


def _interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--demo", action="store_true", help="serve the demo repos")
    parser.add_argument("--big-mb", type=int, default=0, help="add bake-demo/big-model of N MiB")
    parser.add_argument("--token", action="append", default=[], help="a token the server accepts")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    repos = demo_repos(args.big_mb) if args.demo or args.big_mb else []
    hub = start_hub(repos, host.strip("[]") or "127.0.0.1", int(port), tokens=args.token)
    # SIGTERM ends the server as Ctrl-C does, so a script can stop it cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    names = ", ".join(f"{r.kind} {r.repo_id}" for r in repos) or "no repos"
    print(f"hubserver: serving {hub.endpoint} ({names})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

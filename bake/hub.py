"""The Hugging Face Hub at key time: pin a revision to its commit, check the patterns early.

The only module of bake that imports ``huggingface_hub``, and only inside the functions that
talk to the Hub, so that a cache hit never pays for the import.  The fetch itself runs inside the
build (``builder/hubfetch.py``); this side only answers what the key needs and fails early, with
bake's own errors, when the fetch could not succeed:

- :func:`resolve_revision`: a branch or tag -> the 40-hex commit it points at now.
- :func:`list_matching_files`: the files a fetch of (repo, commit, include, exclude) would get,
  with the same pattern rules as ``snapshot_download``; an include pattern that matches nothing
  is an error here rather than a silently empty layer later.
- :func:`lock_repo`: (commit, every selected file's path, size and digest) in one request, the
  repo info with ``files_metadata=True``: the commit and each file's size, git blob id and, for
  Git LFS files, sha256, all of one commit.

The token is the seller's ``HF_TOKEN``, passed in by the caller.  It never appears in a message:
every message here is built by bake, and when a token was sent the client's exception (whose
request holds the ``Authorization`` header) is not chained at all.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bake.errors import BakeError, HubError, UnreachableError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = [
    "HubFile",
    "Kind",
    "RepoSnapshot",
    "is_commit",
    "list_matching_files",
    "lock_repo",
    "resolve_revision",
]

Kind = Literal["model", "dataset"]
T = TypeVar("T")

# The client's own notion of a commit (``REGEX_COMMIT_HASH``): anything else is a branch or tag.
_COMMIT = re.compile(r"[0-9a-f]{40}")
_UNREACHABLE_HINT = "check build.hf_endpoint / HF_ENDPOINT or the network"
# Exceptions from the client's HTTP stack (httpx2 today, httpx or requests in older releases)
# that are not HTTP answers: the Hub was not reached.
_TRANSPORT_MODULES = frozenset({"httpx2", "httpx", "httpcore", "requests", "urllib3"})


def is_commit(revision: str) -> bool:
    """Whether ``revision`` is a full commit id (and so needs no resolving)."""
    return _COMMIT.fullmatch(revision) is not None


def resolve_revision(
    kind: Kind,
    repo: str,
    revision: str,
    *,
    endpoint: str | None,
    token: str | None,
    timeout: float = 20,
) -> str:
    """The 40-hex commit that ``revision`` (a branch, tag or commit) of ``repo`` points at now.

    A commit is returned as it is, with no request.  ``endpoint=None`` means the client's default
    (``HF_ENDPOINT``, else the public Hub).  Raises :class:`HubError` (exit 2) for a missing repo
    or revision or a gated repo without access, :class:`BakeError` when the Hub cannot be reached.
    """
    if is_commit(revision):
        return revision
    ctx = _Context(kind, repo, revision, endpoint, token or None)
    return _repo_info(ctx, timeout)


@dataclass(frozen=True)
class HubFile:
    """A file of a repo at a commit: ``sha256`` for Git LFS files, else None (``blob_id``, the
    git blob id, is then the digest of its bytes)."""

    path: str
    size: int
    blob_id: str
    sha256: str | None


@dataclass(frozen=True)
class RepoSnapshot:
    commit: str
    files: tuple[HubFile, ...]  # the selected files, sorted by path


def lock_repo(
    kind: Kind,
    repo: str,
    revision: str,
    include: Sequence[str],
    exclude: Sequence[str],
    *,
    endpoint: str | None,
    token: str | None,
    timeout: float = 20,
) -> RepoSnapshot:
    """The commit ``revision`` names now and every file a fetch with these patterns gets.

    One request (two for a gated repo, whose access only a file request proves).  Errors as
    :func:`list_matching_files`; :class:`~bake.errors.UnreachableError` when the Hub cannot be
    reached.
    """
    ctx = _Context(kind, repo, revision, endpoint, token or None)
    info = _info(ctx, timeout, files_metadata=True)
    commit = ctx.commit
    ctx.revision = commit
    files: dict[str, HubFile] = {}
    for sibling in info.siblings or []:
        if sibling.size is None or not sibling.blob_id:
            raise BakeError(
                f"the Hub at {ctx.where} gave no size or blob id for '{sibling.rfilename}' of "
                f"{kind} repo '{repo}'",
                hint=_UNREACHABLE_HINT,
            )
        lfs = sibling.lfs
        files[sibling.rfilename] = HubFile(
            sibling.rfilename, int(sibling.size), sibling.blob_id,
            lfs.sha256 if lfs is not None else None,
        )
    chosen = _select(ctx, sorted(files), include, exclude, timeout)
    return RepoSnapshot(commit, tuple(files[p] for p in chosen))


def list_matching_files(
    kind: Kind,
    repo: str,
    commit: str,
    include: Sequence[str],
    exclude: Sequence[str],
    *,
    endpoint: str | None,
    token: str | None,
    timeout: float = 20,
) -> list[str]:
    """The files of ``repo`` at ``commit`` that a fetch with these patterns gets, sorted.

    Empty ``include`` means every file.  Raises :class:`HubError` when an include pattern matches
    no file, when the patterns leave nothing, or when the repo, commit or access is missing.
    """
    ctx = _Context(kind, repo, commit, endpoint, token or None)
    # The info call first: it has a timeout and no retries, so an unreachable Hub or a missing
    # repo fails in a second, where the tree listing would retry for half a minute.
    _repo_info(ctx, timeout)
    paths = sorted(_call(ctx, lambda: _list_files(ctx)))
    return _select(ctx, paths, include, exclude, timeout)


def _select(ctx: _Context, paths: list[str], include: Sequence[str], exclude: Sequence[str],
            timeout: float) -> list[str]:
    """The paths the patterns select (snapshot_download's own filter); errors for a pattern that
    matches nothing, for nothing left, and for a gated repo the token cannot read."""
    # Public (documented, in utils' lazy __all__), but not re-exported in a way mypy sees.
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]  # noqa: PLC0415

    kind, repo = ctx.kind, ctx.repo
    where = f"{kind} repo '{repo}' at {ctx.revision[:12]}"
    if not paths:
        raise HubError(f"{where} has no files", repo=repo)
    for pattern in include:
        if not list(filter_repo_objects(paths, allow_patterns=[pattern])):
            raise HubError(
                f"include pattern '{pattern}' matches no file in {where}",
                repo=repo,
                hint=_files_hint(paths, pattern),
            )
    selected = list(
        filter_repo_objects(
            paths, allow_patterns=list(include) or None, ignore_patterns=list(exclude) or None
        )
    )
    if not selected:
        raise HubError(
            f"the exclude patterns {list(exclude)} leave no file of {where}",
            repo=repo,
            hint=_files_hint(paths, None),
        )
    if ctx.gated:
        # A gated repo's listing is public; only a file request proves the token was granted
        # access, and failing here (exit 2) beats failing in the middle of a build.
        _call(ctx, lambda: _probe_file(ctx, selected[0], timeout))
    return selected


# -- talking to the client ------------------------------------------------------------------------


@dataclass
class _Context:
    """What a request was about, for the error messages."""

    kind: Kind
    repo: str
    revision: str
    endpoint: str | None
    token: str | None
    gated: bool = False
    commit: str = ""

    def api(self) -> HfApi:
        from huggingface_hub import HfApi  # noqa: PLC0415

        # token=False, not None: bake uses HF_TOKEN as the caller passes it, never a token the
        # client would find on its own (~/.cache/huggingface/token, a stale login).
        return HfApi(endpoint=self.endpoint, token=self.token or False)

    @property
    def where(self) -> str:
        if self.endpoint:
            return self.endpoint
        from huggingface_hub import constants  # noqa: PLC0415

        return constants.ENDPOINT


def _repo_info(ctx: _Context, timeout: float) -> str:
    _info(ctx, timeout, files_metadata=False)
    return ctx.commit


def _info(ctx: _Context, timeout: float, *, files_metadata: bool) -> Any:
    api = ctx.api()
    info = _call(
        ctx,
        lambda: api.repo_info(ctx.repo, repo_type=ctx.kind, revision=ctx.revision,
                              timeout=timeout, files_metadata=files_metadata),
    )
    ctx.gated = bool(getattr(info, "gated", False))
    if ctx.gated and not ctx.token:
        # The Hub shows a gated repo's metadata to anyone; its files need a token.
        raise HubError(
            f"{ctx.kind} repo '{ctx.repo}' is gated; set HF_TOKEN in the seller's environment",
            repo=ctx.repo,
            hint="use a token of an account that has accepted the repo's terms on the Hub",
        )
    sha = info.sha
    if not sha or not is_commit(sha):
        raise BakeError(
            f"the Hub at {ctx.where} gave no commit for {ctx.kind} repo '{ctx.repo}' "
            f"revision '{ctx.revision}'",
            hint=_UNREACHABLE_HINT,
        )
    ctx.commit = sha
    return info


def _list_files(ctx: _Context) -> list[str]:
    from huggingface_hub.hf_api import RepoFile  # noqa: PLC0415

    # The same listing snapshot_download makes, so the patterns see the same paths.
    tree = ctx.api().list_repo_tree(
        ctx.repo, repo_type=ctx.kind, revision=ctx.revision, recursive=True
    )
    return [entry.path for entry in tree if isinstance(entry, RepoFile)]


def _probe_file(ctx: _Context, path: str, timeout: float) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url  # noqa: PLC0415

    url = hf_hub_url(
        ctx.repo, path, repo_type=ctx.kind, revision=ctx.revision, endpoint=ctx.endpoint
    )
    get_hf_file_metadata(url, token=ctx.token or False, timeout=timeout)


def _call(ctx: _Context, request: Callable[[], T]) -> T:
    """Run one client call; translate whatever it raises into a bake error."""
    try:
        return request()
    except Exception as exc:  # noqa: BLE001 - every foreign error is translated, none leaks
        error = _translate(ctx, exc)
        # With a token, drop the client's exception entirely: its request object carries the
        # Authorization header.  Raising outside the except block keeps it out of __context__ too.
        cause = None if ctx.token else exc
    raise error from cause


def _translate(ctx: _Context, exc: Exception) -> BakeError:
    from huggingface_hub import errors as hf  # noqa: PLC0415

    kind, repo, where = ctx.kind, ctx.repo, ctx.where
    # Most specific first: GatedRepoError is a RepositoryNotFoundError, and both are HTTP errors.
    if isinstance(exc, hf.GatedRepoError):
        if ctx.token:
            return HubError(
                f"{kind} repo '{repo}' is gated and HF_TOKEN has no access to it",
                repo=repo,
                hint="accept the repo's terms on the Hub with the account the token belongs to",
            )
        return HubError(
            f"{kind} repo '{repo}' is gated; set HF_TOKEN in the seller's environment",
            repo=repo,
            hint="use a token of an account that has accepted the repo's terms on the Hub",
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubError(
            f"revision '{ctx.revision}' not found in {kind} repo '{repo}'",
            repo=repo,
            hint="use a branch, a tag or a full 40-character commit of the repo",
        )
    if isinstance(exc, hf.DisabledRepoError):
        return HubError(f"{kind} repo '{repo}' is disabled on the Hub", repo=repo)
    if isinstance(exc, hf.RepositoryNotFoundError):
        return HubError(
            f"{kind} repo '{repo}' not found at {where}",
            repo=repo,
            hint=(
                "check the name, and that HF_TOKEN can read it if it is private"
                if ctx.token
                else f"check the name and that it is a {kind}; a private repo needs HF_TOKEN "
                "in the seller's environment"
            ),
        )
    if isinstance(exc, hf.EntryNotFoundError):  # RemoteEntryNotFoundError since 1.0
        return HubError(f"a file of {kind} repo '{repo}' is missing at {ctx.revision}", repo=repo)
    if isinstance(exc, hf.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401 and ctx.token:
            return HubError(
                f"the Hub at {where} rejected HF_TOKEN (401 Unauthorized) for {kind} repo '{repo}'",
                repo=repo,
                hint="set HF_TOKEN in the seller's environment to a valid read token",
            )
        if status in (401, 403):
            return HubError(
                f"{kind} repo '{repo}' needs a token with access (HTTP {status})",
                repo=repo,
                hint="set HF_TOKEN in the seller's environment to a token that can read it",
            )
        if status >= 500 or status == 429:
            return UnreachableError(
                f"the Hub at {where} answered HTTP {status} for {kind} repo '{repo}'",
                what=where,
                hint=f"try again later, or {_UNREACHABLE_HINT}",
            )
        return BakeError(
            f"the Hub at {where} answered HTTP {status} for {kind} repo '{repo}'",
            hint=f"try again later, or {_UNREACHABLE_HINT}",
        )
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return BakeError(
            f"cannot reach the Hugging Face Hub at {where}: HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE in bake's environment",
        )
    if isinstance(exc, hf.HFValidationError):
        return HubError(f"'{repo}' is not a valid {kind} repo id", repo=repo)
    why = _scrub(str(exc), ctx.token) or type(exc).__name__
    if isinstance(exc, OSError) or _is_transport_error(exc):
        return UnreachableError(
            f"cannot reach the Hugging Face Hub at {where}: {why}", what=where,
            hint=_UNREACHABLE_HINT,
        )
    return BakeError(
        f"the Hub client failed on {kind} repo '{repo}': {type(exc).__name__}: {why}",
        hint=_UNREACHABLE_HINT,
    )


def _is_transport_error(exc: Exception) -> bool:
    return any(cls.__module__.split(".")[0] in _TRANSPORT_MODULES for cls in type(exc).__mro__)


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _files_hint(paths: Sequence[str], pattern: str | None) -> str:
    close = difflib.get_close_matches(pattern, paths, n=3, cutoff=0.5) if pattern else []
    if close:
        return "did you mean " + " or ".join(f"'{p}'" for p in close) + "?"
    shown = ", ".join(paths[:8]) + (f", ... ({len(paths) - 8} more)" if len(paths) > 8 else "")
    return f"the repo has: {shown}"

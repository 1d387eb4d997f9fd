"""bake-install: fetch exactly the locked files a job lacks, each checked, inside a build step.

    python3 -I -S wheelfetch.py FILES.json FOLDER OUT [REQUIREMENTS PARTS]

FILES.json (written by bake from bake.lock; unknown keys are refused)::

    {"format": 1, "refetch": false,
     "files": [{"file": "numpy-2.1.3-cp311-...whl", "url": "https://.../numpy-2.1.3-...whl",
                "sha256": "<64 hex>"}, ...]}

FOLDER is laid out by content: ``FOLDER/<sha256>/<file>``.  For wheels it is bake's
wheelhouse, a BuildKit cache mount shared by every build on the engine; this script, in
a step of bake's own on the base image, is the only thing that ever writes it.  So it
runs no buyer code: the base's interpreter, isolated and without ``site`` (no ``.pth``
file of any package runs), the standard library only.  For an sdist (``only_binary =
false``) it is a tmpfs of the job's own step, never shared.

Each file not yet in FOLDER (every file with ``"refetch": true``, ``bake build
--no-cache``) is fetched by its locked URL through the build's proxy (the standard
``HTTPS_PROXY``/``HTTP_PROXY`` variables); a URL that is a path (``/bake-index/origin/...``)
is a file of the seller's index, fetched from the proxy's relay of it, whose address is
the origin of the index URL in ``/run/secrets/bake_index`` (the relay adds the
credentials).  It is streamed through sha256 into ``FOLDER/.incoming`` and linked into
place only when its digest is the locked one; a file once in place is replaced only with
``"refetch": true``, and then only by bytes just checked.
One line per fetched file says what was fetched and its digest (``bake-install: fetched
FILE sha256:... N bytes from HOST``), so that the build's log can be reconciled with its
lock and its egress log; a mismatch fails the step naming the file, the expected and the
received digest.  OUT gets one "<sha256> <file>" line per listed file (what is in place),
and the install lists below go beside it: the same bytes for the same files, so that the
install steps, which mount those lists, stay cached when this step runs again.

With REQUIREMENTS (the install step's list: lines that name a wheel by its sha256) and
PARTS (a number, at least 1), it also writes ``install-<i>.txt`` beside OUT for each of the
PARTS layers the install is split into: the REQUIREMENTS lines of the wheels of layer i.  The
wheels are dealt out by size, largest first, each to the layer lightest so far (ties by
sha256), so that the layers are about equal: the engine digests an image's layers in
parallel, and one 6 GB layer is what a cold torch build spends the longest exporting.  The
sizes are the checked files', so the same wheels give the same layers on every engine.

Python >= 3.8; the CA bundle is ``/run/secrets/bake_ca`` when mounted.
Exit status: 0 done, 1 a fetch failed or bytes did not match, 2 bad arguments.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import unquote, urlsplit

SECRETS = "/run/secrets"
CHUNK = 1 << 20
WORKERS = 16  # downloads at once: the largest file should never wait for a free worker
TRIES = 3
TIMEOUT = 60
STALE = 3600  # seconds after which a download in flight was left by a build that died
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,250}\Z")
_SHA_IN_LINE = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


class Failed(Exception):
    exit_code = 1


class Usage(Failed):
    exit_code = 2


def say(message):
    print("bake-install: " + message, flush=True)


def load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise Usage("error: cannot read {}: {}".format(path, exc)) from None
    if not isinstance(doc, dict) or doc.get("format") != 1 or set(doc) != {
            "format", "refetch", "files"} or not isinstance(doc["files"], list):
        raise Usage("error: {}: not a list of locked files bake wrote".format(path))
    out = []
    for item in doc["files"]:
        if not isinstance(item, dict) or set(item) != {"file", "url", "sha256"}:
            raise Usage("error: {}: a file is {{file, url, sha256}}, not {!r}".format(
                path, item)[:300])
        name, url, sha = item["file"], item["url"], item["sha256"]
        parts = urlsplit(url) if isinstance(url, str) else None
        if (not isinstance(name, str) or not _FILE.match(name) or parts is None
                or (parts.scheme not in ("http", "https") and not url.startswith("/"))
                or unquote(parts.path.rsplit("/", 1)[-1]) != name
                or not isinstance(sha, str) or not _HEX64.match(sha)):
            raise Usage("error: {}: bad entry {!r}".format(path, item)[:300])
        out.append((name, url, sha))
    return out, doc["refetch"] is True


def _secret(name):
    try:
        with open(os.path.join(SECRETS, name), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _context():
    cafile = os.path.join(SECRETS, "bake_ca")
    if os.path.isfile(cafile):
        return ssl.create_default_context(cafile=cafile)
    return ssl.create_default_context()


def relay_origin():
    parts = urlsplit(_secret("bake_index"))
    if not parts.scheme or not parts.netloc:
        raise Failed("error: cannot read the relay's address from {}/bake_index".format(SECRETS))
    return "{}://{}".format(parts.scheme, parts.netloc)


def _remove(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def _download(url, sha, incoming, context):
    """(a temporary file holding the response, its sha256, its size)."""
    tmp = os.path.join(incoming, "{}.{}.part".format(sha, uuid.uuid4().hex))
    digest = hashlib.sha256()
    size = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "bake-wheelfetch/1"})
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer, \
                open(tmp, "wb") as out:
            for chunk in iter(lambda: answer.read(CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except BaseException:
        _remove(tmp)
        raise
    return tmp, digest.hexdigest(), size


def fetch(name, url, sha, folder, context, refetch=False):
    """Put one locked file in place; return the bytes fetched."""
    if url.startswith("/"):
        url = relay_origin() + url
    host = urlsplit(url).netloc
    incoming = os.path.join(folder, ".incoming")
    last = None
    for attempt in range(TRIES):
        try:
            tmp, received, size = _download(url, sha, incoming, context)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code < 500:
                raise Failed("error: {} from {} answered HTTP {}".format(
                    name, host, exc.code)) from None
            last = "HTTP {}".format(exc.code)
        except (OSError, ValueError) as exc:
            if getattr(exc, "errno", None) == 28:  # ENOSPC: no retry fixes a full disk
                raise Failed("error: {}".format(exc)) from None
            last = str(getattr(exc, "reason", exc))
        else:
            if received != sha:
                _remove(tmp)
                raise Failed(
                    "error: {} does not match bake.lock: expected sha256:{}, received "
                    "sha256:{} ({} bytes from {})".format(name, sha, received, size, host))
            place = os.path.join(folder, sha)
            os.makedirs(place, exist_ok=True)
            # A link is atomic and never replaces: a reader sees the whole file or none,
            # and a build that lost a race to put the same bytes there leaves the winner's.
            # Asked to fetch again (--no-cache), the checked bytes replace what is there:
            # the way to mend a copy that changed on disk.
            try:
                if refetch:
                    os.replace(tmp, os.path.join(place, name))
                else:
                    os.link(tmp, os.path.join(place, name))
            except FileExistsError:
                pass
            finally:
                _remove(tmp)
            say("fetched {} sha256:{} {} bytes from {}".format(name, received, size, host))
            return size
        if attempt + 1 < TRIES:
            time.sleep(0.5 * (attempt + 1))
    raise Failed("error: cannot fetch {} from {}: {}".format(name, host, last))


def _sweep(incoming):
    """Drop downloads that a build which died left in flight."""
    now = time.time()
    for entry in os.scandir(incoming):
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > STALE:
                os.unlink(entry.path)
        except OSError:
            continue


def layers(sizes, parts):
    """{sha256: layer}: the wheels dealt out by size, largest first, each to the layer
    lightest so far (the lower layer on a tie); ``sizes`` is {sha256: bytes}."""
    weight = [0] * parts
    out = {}
    for sha in sorted(sizes, key=lambda s: (-sizes[s], s)):
        lightest = min(range(parts), key=lambda i: (weight[i], i))
        weight[lightest] += sizes[sha]
        out[sha] = lightest
    return out


def split(requirements, files, folder, parts, out_folder):
    """Write ``install-<i>.txt`` in ``out_folder``: the requirement lines of layer i."""
    try:
        with open(requirements, encoding="utf-8") as fh:
            lines = fh.read().splitlines(True)
    except OSError as exc:
        raise Usage("error: cannot read {}: {}".format(requirements, exc)) from None
    sizes = {sha: os.path.getsize(os.path.join(folder, sha, name)) for name, _, sha in files}
    layer = layers(sizes, parts)
    chunks = [[] for _ in range(parts)]
    for line in lines:
        named = set(_SHA_IN_LINE.findall(line))
        if len(named) != 1 or next(iter(named)) not in layer:
            raise Usage("error: {}: a line names no one listed file: {!r}".format(
                requirements, line)[:300])
        chunks[layer[named.pop()]].append(line)
    for i, chunk in enumerate(chunks):
        with open(os.path.join(out_folder, "install-{}.txt".format(i)), "w",
                  encoding="utf-8") as fh:
            fh.writelines(chunk)
    return [sum(sizes[s] for s, i in layer.items() if i == n) for n in range(parts)]


def main(argv):
    if len(argv) not in (3, 5):
        raise Usage("error: usage: wheelfetch.py FILES.json FOLDER OUT [REQUIREMENTS PARTS]")
    parts = 0
    if len(argv) == 5:
        if not argv[4].isdigit() or not 1 <= int(argv[4]) <= 16:
            raise Usage("error: PARTS is a number from 1 to 16, not {!r}".format(argv[4]))
        parts = int(argv[4])
    files, refetch = load(argv[0])
    folder, out = argv[1], argv[2]
    started = time.monotonic()
    incoming = os.path.join(folder, ".incoming")
    os.makedirs(incoming, exist_ok=True)
    _sweep(incoming)
    wanted = [(name, url, sha) for name, url, sha in files
              if refetch or not os.path.isfile(os.path.join(folder, sha, name))]
    # Platform wheels (the large ones: torch, CUDA libraries) first, pure Python last, so
    # that the longest download starts first.
    wanted.sort(key=lambda f: (f[0].endswith("-none-any.whl"), f[0]))
    total = 0
    if wanted:
        context = _context()
        with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(fetch, name, url, sha, folder, context, refetch)
                       for name, url, sha in wanted]
            for future in concurrent.futures.as_completed(futures):
                total += future.result()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.writelines("{} {}\n".format(sha, name) for name, _, sha in sorted(
            files, key=lambda f: (f[2], f[0])))
    say("{} locked files: {} in place already, {} fetched ({:.1f} MB) in {:.1f} s".format(
        len(files), len(files) - len(wanted), len(wanted), total / 1e6,
        time.monotonic() - started))
    if parts:
        loads = split(argv[3], files, folder, parts, os.path.dirname(out) or ".")
        say("installed in {} layer{}: {}".format(parts, "" if parts == 1 else "s", ", ".join(
            "{:.1f} MB".format(n / 1e6) for n in loads)))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Failed as exc:
        say(str(exc))
        sys.exit(exc.exit_code)

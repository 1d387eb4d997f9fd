"""bake's wheelhouse download step: put the lock's wheels into the shared wheelhouse.

    python3 -I -S wheelhouse.py fetch WHEELS.json WHEELHOUSE OUT

Runs inside a setup step of its own, on the base image, with the wheelhouse (a BuildKit
cache mount shared by every build on the engine) writable.  It is the only step that
ever writes the wheelhouse, so it runs no buyer code: the base's interpreter, isolated
and without ``site`` (no ``.pth`` file of any package runs), the standard library only.

For every wheel of WHEELS.json not yet at ``WHEELHOUSE/<sha256>/<file>``: download it
(through the build's egress proxy, from the URL the lock recorded, else from the index
page of the index in ``/run/secrets/bake_index``), check its sha256, and only then
link it into place.  A file whose bytes differ from the lock's is never kept, and a
file once in place is never replaced.  OUT gets one "<sha256> <file>" line per wheel.

Errors are one line, ``bake-wheels: error: ...``, and exit status 1.
"""

import concurrent.futures
import contextlib
import hashlib
import html.parser
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

PREFIX = "bake-wheels: "
SECRETS = "/run/secrets"
CHUNK = 1 << 20
WORKERS = 4
ATTEMPTS = 3
TIMEOUT = 60
STALE = 3600  # seconds after which a download in flight was left by a build that died
USER_AGENT = "bake-wheelhouse/1"
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,250}\.whl\Z")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")


class Failure(Exception):
    """One line for the build log."""


class Mismatch(Failure):
    """The bytes served are not the locked bytes: never retried elsewhere."""


def say(text):
    print(PREFIX + text, flush=True)


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


def _load(path):
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise Failure(f"{path}: not a wheelhouse list bake wrote")
    wheels = []
    for entry in doc.get("wheels", []):
        name, file, sha, url = (str(entry.get(k, "")) for k in ("name", "file", "sha256", "url"))
        if not (_NAME.match(name) and _FILE.match(file) and _SHA256.match(sha)):
            raise Failure(f"{path}: not a locked wheel: {entry!r}"[:300])
        wheels.append({"name": name, "file": file, "sha256": sha, "url": url})
    return wheels


def _host(url):
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or url


class _Links(html.parser.HTMLParser):
    """The anchors of a PEP 503 page: (href, text)."""

    def __init__(self):
        super().__init__()
        self.links = []
        self._href = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def _open(url, context, accept=None):
    headers = {"User-Agent": USER_AGENT}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=TIMEOUT, context=context)


def _from_index(index, wheel, context):
    """The URL the index's project page gives for the wheel's file (PEP 691 JSON or 503)."""
    page = index.rstrip("/") + "/" + wheel["name"] + "/"
    accept = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
              "text/html;q=0.1")
    with _open(page, context, accept) as response:
        base = response.geturl()
        kind = response.headers.get_content_type()
        body = response.read(64 << 20).decode("utf-8", "replace")
    candidates = []
    if kind.endswith("+json") or kind == "application/json":
        for entry in json.loads(body).get("files", []):
            candidates.append((str(entry.get("url", "")), str(entry.get("filename", ""))))
    else:
        parser = _Links()
        parser.feed(body)
        for href, text in parser.links:
            path = urllib.parse.urlsplit(href).path
            candidates.append((href, text or urllib.parse.unquote(path.rsplit("/", 1)[-1])))
    for href, filename in candidates:
        if filename == wheel["file"]:
            return urllib.parse.urljoin(base, href).split("#", 1)[0]
    raise Failure(f"the index at {_host(index)} lists no {wheel['file']}")


def _download(url, wheel, incoming, context):
    """Download into ``incoming``; return the temporary path of exactly the locked bytes."""
    tmp = os.path.join(incoming, f"{wheel['sha256']}.{uuid.uuid4().hex}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with _open(url, context) as response, open(tmp, "wb") as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        _remove(tmp)
        raise
    if digest.hexdigest() != wheel["sha256"]:
        _remove(tmp)
        raise Mismatch(f"{wheel['file']} from {_host(url)} does not match its locked hash: "
                       f"expected sha256:{wheel['sha256']}, received sha256:{digest.hexdigest()}")
    return tmp, size


def _remove(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fetch(wheel, root, incoming, index, context):
    """Put one wheel in place; return the bytes downloaded."""
    folder = os.path.join(root, wheel["sha256"])
    final = os.path.join(folder, wheel["file"])
    urls = [u for u in (wheel["url"],) if u.startswith(("https://", "http://"))]
    last = None
    for attempt in range(ATTEMPTS):
        for url in urls + ([None] if index else []):
            try:
                if url is None:
                    url = _from_index(index, wheel, context)
                tmp, size = _download(url, wheel, incoming, context)
            except Mismatch:
                raise
            except (OSError, ValueError, urllib.error.URLError, Failure) as exc:
                last = f"{wheel['file']}: {getattr(exc, 'reason', None) or exc}"
                continue
            os.makedirs(folder, exist_ok=True)
            # A link is atomic and never replaces: a reader sees the whole file or none, and
            # a build that lost a race to put the same bytes there leaves the winner's.
            try:
                os.link(tmp, final)
            except FileExistsError:
                pass
            finally:
                _remove(tmp)
            return size
        if attempt + 1 < ATTEMPTS:
            time.sleep(0.5 * (attempt + 1))
    raise Failure(f"cannot download {last or wheel['file']}"[:300])


def _sweep(incoming):
    """Drop downloads that a build which died left in flight."""
    now = time.time()
    for entry in os.scandir(incoming):
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > STALE:
                os.unlink(entry.path)
        except OSError:
            continue


def fetch(spec_path, root, out):
    started = time.monotonic()
    wheels = _load(spec_path)
    incoming = os.path.join(root, ".incoming")
    os.makedirs(incoming, exist_ok=True)
    _sweep(incoming)
    missing = [w for w in wheels
               if not os.path.isfile(os.path.join(root, w["sha256"], w["file"]))]
    total = 0
    if missing:
        index = _secret("bake_index")
        context = _context()
        with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(_fetch, w, root, incoming, index, context) for w in missing]
            for future in concurrent.futures.as_completed(futures):
                total += future.result()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.writelines(f"{w['sha256']} {w['file']}\n"
                      for w in sorted(wheels, key=lambda w: (w["sha256"], w["file"])))
    say(f"{len(wheels)} locked wheels: {len(wheels) - len(missing)} already in the wheelhouse, "
        f"{len(missing)} downloaded ({total / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")


def main(argv):
    if len(argv) != 4 or argv[0] != "fetch":
        say("error: usage: wheelhouse.py fetch WHEELS.json WHEELHOUSE OUT")
        return 2
    try:
        fetch(*argv[1:])
    except Failure as exc:
        say(f"error: {exc}")
        return 1
    except OSError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""bake-install: fetch exactly the locked files of a job, each checked, inside a build step.

    python3 wheelfetch.py FILES.json FOLDER

FILES.json (written by bake from bake.lock; unknown keys are refused)::

    [{"file": "numpy-2.1.3-cp311-...whl", "url": "https://.../numpy-2.1.3-...whl",
      "sha256": "<64 hex>"}, ...]

Each file is fetched once, by its locked URL, through the build's proxy (the standard
``HTTPS_PROXY``/``HTTP_PROXY`` variables); a URL that is a path (``/bake-index/origin/...``)
is a file of the seller's index, fetched from the proxy's relay of it, whose address is the
origin of the index URL in ``/run/secrets/bake_index`` (the relay adds the credentials).
Each is streamed through sha256 and kept in FOLDER only when its digest is the locked one.
One line per file says what was fetched and its digest
(``bake-install: fetched FILE sha256:... N bytes from HOST``), so that the build's log can
be reconciled with its lock and its egress log; a mismatch fails the step naming the file,
the expected and the received digest.  bake's uv then installs from FOLDER with no index
(``--require-hashes --no-deps``).

Standard library only, Python >= 3.8; the CA bundle is ``$SSL_CERT_FILE`` when set.
Exit status: 0 done, 1 a fetch failed or bytes did not match, 2 bad arguments.
"""

import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_TRIES = 3
INDEX_FILE = "/run/secrets/bake_index"


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
        raise Usage("cannot read {}: {}".format(path, exc)) from None
    if not isinstance(doc, list):
        raise Usage("{}: not a list of files".format(path))
    out = []
    for item in doc:
        if not isinstance(item, dict) or set(item) != {"file", "url", "sha256"}:
            raise Usage("{}: a file is {{file, url, sha256}}, not {!r}".format(path, item))
        name, url, sha = item["file"], item["url"], item["sha256"]
        parts = urlsplit(url) if isinstance(url, str) else None
        if (not isinstance(name, str) or not _FILE.fullmatch(name) or parts is None
                or (parts.scheme not in ("http", "https") and not url.startswith("/"))
                or unquote(parts.path.rsplit("/", 1)[-1]) != name
                or not isinstance(sha, str) or not _HEX64.fullmatch(sha)):
            raise Usage("{}: bad entry {!r}".format(path, item))
        out.append((name, url, sha))
    return out


def relay_origin():
    try:
        with open(INDEX_FILE, encoding="utf-8") as fh:
            parts = urlsplit(fh.read().strip())
    except OSError as exc:
        raise Failed("error: cannot read the relay's address: {}".format(exc)) from None
    return "{}://{}".format(parts.scheme, parts.netloc)


def fetch(name, url, sha, folder):
    if url.startswith("/"):
        url = relay_origin() + url
    target = os.path.join(folder, name)
    host = urlsplit(url).netloc
    last = None
    for attempt in range(_TRIES):
        digest = hashlib.sha256()
        size = 0
        try:
            with urllib.request.urlopen(url, timeout=60) as answer, \
                    open(target, "wb") as out:
                for chunk in iter(lambda: answer.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise Failed("error: {} from {} answered HTTP {}".format(
                    name, host, exc.code)) from None
            last = "HTTP {}".format(exc.code)
        except (OSError, ValueError) as exc:
            last = str(getattr(exc, "reason", exc))
        else:
            received = digest.hexdigest()
            if received != sha:
                os.unlink(target)
                raise Failed(
                    "error: {} does not match bake.lock: expected sha256:{}, received "
                    "sha256:{} ({} bytes from {})".format(name, sha, received, size, host))
            say("fetched {} sha256:{} {} bytes from {}".format(name, received, size, host))
            return size
        time.sleep(0.5 * (attempt + 1))
    raise Failed("error: cannot fetch {} from {}: {}".format(name, host, last))


def main(argv):
    if len(argv) != 2:
        raise Usage("usage: wheelfetch.py FILES.json FOLDER")
    files = load(argv[0])
    os.makedirs(argv[1], exist_ok=True)
    started = time.monotonic()
    total = sum(fetch(name, url, sha, argv[1]) for name, url, sha in files)
    say("{} locked files, {:.1f} MB, checked in {:.1f} s".format(
        len(files), total / 1e6, time.monotonic() - started))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Failed as exc:
        say(str(exc))
        sys.exit(exc.exit_code)

"""Where bake keeps its own records, and what of the environment they depend on.  Ground floor.

Locks per key, "last used" stamps, egress logs, run staging, the resolver cache, the
fast path's records: all under ``$BAKE_STATE_DIR``, else ``$XDG_STATE_HOME/bake``,
else ``~/.local/state/bake``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SETTINGS_VARIABLES", "environment_digest", "state_dir"]

#: The environment variables the seller settings depend on, besides every ``BAKE_*``
#: (bake/settings.py reads them; a unit test keeps the two lists together).
SETTINGS_VARIABLES = (
    "HOME", "XDG_CONFIG_HOME", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT",
    "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG", "DOCKER_CONTEXT",
)


def environment_digest(environ: Mapping[str, str]) -> str:
    """A digest of every environment variable the settings depend on (values hashed in)."""
    names = sorted(n for n in environ if n.startswith("BAKE_") or n in SETTINGS_VARIABLES)
    text = "\0".join(f"{n}={environ[n]}" for n in names)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def state_dir() -> Path:
    """Where bake keeps locks, egress logs and run records (``$BAKE_STATE_DIR`` wins)."""
    explicit = os.environ.get("BAKE_STATE_DIR")
    if explicit:
        base = Path(explicit)
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = Path(xdg) / "bake"
    base.mkdir(parents=True, exist_ok=True)
    return base

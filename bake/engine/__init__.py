"""The Docker Engine: bake's one doorway to it.

Every Engine API call bake makes goes through :class:`Engine` (the key hit's two
inspects, tagging, the canary, the job's containers, pulls and pushes), over
the standard library, so that a key hit costs no import of an HTTP stack, and
every failure reaches the rest of bake as one :class:`~bake.errors.EngineError`
with its ``status`` and ``unreachable`` attributes.  Where the engine is comes
from the seller's settings (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``, read once): a unix socket, or TCP with or without TLS.
"""

from __future__ import annotations

from .client import (
    Container,
    Engine,
    EngineAddress,
    Progress,
    engine_hint,
    registry_auth,
)

__all__ = ["Container", "Engine", "EngineAddress", "Progress", "engine_hint", "registry_auth"]

"""bake: bake a job's dependencies into an image, then run it with no network.

The Python API (for a seller's agent)::

    import bake
    result = bake.build("jobs/sst2/bake.toml")      # -> BuildResult
    outcome = bake.run("jobs/sst2")                  # -> RunResult
    image_key = bake.key("jobs/sst2")                # -> ImageKey

Every failure is a :class:`bake.BakeError` (see :mod:`bake.errors`).  Nothing
here prints or exits.  The pipeline loads on first use of its verbs, so that
``import bake`` (and the fast path's ``import bake.fast``) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BakeError,
    ConfigError,
    ConfinementError,
    EngineError,
    HubError,
    Interrupted,
    RegistryError,
    RunError,
    SetupError,
    SetupTimeout,
    SpecError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "BakeError",
    "ConfigError",
    "ConfinementError",
    "EngineError",
    "HubError",
    "Interrupted",
    "RegistryError",
    "RunError",
    "SetupError",
    "SetupTimeout",
    "SpecError",
    "UsageError",
    "__version__",
    "build",
    "key",
    "load_settings",
    "load_spec",
    "render_to",
    "run",
]

if TYPE_CHECKING:
    from .pipeline import build, key, render_to, run
    from .settings import load_settings
    from .spec import load_spec

_LAZY = {
    "build": "pipeline",
    "run": "pipeline",
    "key": "pipeline",
    "render_to": "pipeline",
    "load_settings": "settings",
    "load_spec": "spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bake' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - the lazy door of the public API

    return getattr(importlib.import_module(f"bake.{module}"), name)

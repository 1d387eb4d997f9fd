"""Every failure bake reports, as one tree rooted at ``Exception``.

A seller's agent catches :class:`BakeError`; the CLI maps each family to an
exit code (DESIGN.md "CLI").  Context travels as attributes, not only text::

    BakeError (1)                 anything else
    ├── UsageError (2)            bad spec, config or arguments
    │   ├── SpecError             a field of bake.toml (``field``)
    │   ├── ConfigError           a seller setting (``field``, ``source``)
    │   └── HubError              a model or dataset the Hub cannot give us
    ├── SetupError (3)            the setup build failed
    │   └── SetupTimeout (4)      ... or ran past ``egress.setup_timeout``
    ├── ConfinementError (5)      enforce = "require" and confinement unproven
    ├── EngineError (1)           the Docker Engine or CLI is missing or failing
    ├── RegistryError (1)         the image registry refused or failed
    ├── EgressError (1)           the egress proxy could not start or died
    ├── UnreachableError (1)      the package index or the Hub did not answer (``what``)
    ├── NotLocked (1)             no fresh lock, and no resolver to ask (the fast path's "no")
    ├── RunError (125)            bake failed before the job started
    └── Interrupted (130/143)     SIGINT / SIGTERM

Messages say what failed, why, and what to do, in one or two lines.
"""

from __future__ import annotations

__all__ = [
    "BakeError",
    "ConfigError",
    "ConfinementError",
    "EgressError",
    "EngineError",
    "HubError",
    "Interrupted",
    "NotLocked",
    "RegistryError",
    "RunError",
    "SetupError",
    "SetupTimeout",
    "SpecError",
    "UnreachableError",
    "UsageError",
]


class BakeError(Exception):
    """Base of every error bake raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(BakeError):
    """Bad input from the person or program calling bake."""

    exit_code = 2


class SpecError(UsageError):
    """A field of the job spec is wrong; ``field`` names it (``python.requirements[1]``)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.field = field
        self.path = path
        self.detail = message
        where = f"{path}: " if path else ""
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}", hint=hint)


class ConfigError(UsageError):
    """A seller setting is wrong; ``source`` says where the value came from."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.field = field
        self.source = source
        self.detail = message
        where = f"{source}: " if source else ""
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}", hint=hint)


class HubError(UsageError):
    """A model or dataset repo, revision or file the Hub cannot give us."""

    def __init__(self, message: str, *, repo: str | None = None, hint: str | None = None) -> None:
        self.repo = repo
        super().__init__(message, hint=hint)


class SetupError(BakeError):
    """The setup build failed; no image carries the key."""

    exit_code = 3

    def __init__(self, message: str, *, log_tail: str = "", hint: str | None = None) -> None:
        self.log_tail = log_tail
        super().__init__(message, hint=hint)


class SetupTimeout(SetupError):
    """The setup build ran past its time limit and was stopped."""

    exit_code = 4


class ConfinementError(BakeError):
    """``egress.enforce = "require"`` and the host's confinement is not proven."""

    exit_code = 5


class EngineError(BakeError):
    """The Docker Engine, or a BuildKit-capable docker CLI, is missing or failing.

    ``unreachable``: nothing answered at the engine's address; ``status``: the HTTP
    status of the Engine API answer that failed, when there was one; ``detail``: the
    engine's own words for it.
    """

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None,
                 unreachable: bool = False, detail: str = "") -> None:
        self.status = status
        self.unreachable = unreachable
        self.detail = detail or message
        super().__init__(message, hint=hint)


class RegistryError(BakeError):
    """The image registry refused or failed an operation; ``unreachable``: it did not answer."""

    def __init__(self, message: str, *, hint: str | None = None,
                 unreachable: bool = False) -> None:
        self.unreachable = unreachable
        super().__init__(message, hint=hint)


class EgressError(BakeError):
    """The egress proxy could not start, or stopped while a setup needed it."""


class UnreachableError(BakeError):
    """The package index or the Hub did not answer; ``what`` names it (a URL).

    ``unreachable`` is true, as on an :class:`EngineError` or :class:`RegistryError` whose
    server did not answer: the resolver cache lets an old resolution stand in for a failure
    with ``unreachable`` set (stale-if-error), and for no other.
    """

    unreachable = True

    def __init__(self, message: str, *, what: str, hint: str | None = None) -> None:
        self.what = what
        super().__init__(message, hint=hint)


class NotLocked(BakeError):
    """The lock stage needs a resolution and was given no resolver to ask.

    Only the fast path asks so (it makes no network request): it then hands over to the
    full CLI, so no person sees this one.
    """


class RunError(BakeError):
    """bake failed before the job started (``docker run`` uses 125 for the same)."""

    exit_code = 125


class Interrupted(BakeError):
    """Stopped by a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        super().__init__(f"interrupted by {name}; nothing was left half-made")

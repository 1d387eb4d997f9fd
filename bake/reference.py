"""Docker image references, validated by the distribution grammar.

A reference reaches ``docker`` argv and the Dockerfile's ``FROM``, so only the
grammar's words pass: no spaces, quotes, shell or newline characters, ever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ImageRef", "parse_image_ref"]

# github.com/distribution/reference/regexp.go, spelled out.
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_NAME = rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
_REFERENCE = re.compile(rf"{_NAME}(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII)
_MAX = 255


@dataclass(frozen=True)
class ImageRef:
    repository: str  # "python", "registry.example.com:5000/bake"
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def domain(self) -> str | None:
        first, sep, _ = self.repository.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            return first
        return None


def parse_image_ref(text: str) -> ImageRef:
    """Parse ``text`` or raise ``ValueError`` with the reason, in words a person can act on."""
    if not isinstance(text, str) or not text:
        raise ValueError("an image reference must be a non-empty string")
    if len(text) > _MAX:
        raise ValueError(f"an image reference is at most {_MAX} characters")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a valid image reference "
            "(expected e.g. 'python:3.11-slim' or 'registry:5000/team/image:tag')"
        )
    domain, path = match.group("domain"), match.group("path")
    looks_like_domain = domain is not None and (
        "." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")
    )
    if domain is not None and not looks_like_domain and not re.fullmatch(_COMPONENT, domain):
        # Docker reads a first part without "." or ":" as a path, and paths are lower case.
        raise ValueError(f"{text!r}: repository names are lower case")
    repository = f"{domain}/{path}" if domain else path
    return ImageRef(repository, match.group("tag"), match.group("digest"))

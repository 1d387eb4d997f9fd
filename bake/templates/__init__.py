"""bake's templates, and how a template is found by name and fingerprinted.

A template is a folder ``<name>/`` holding ``Dockerfile.j2`` and ``template.toml``.
bake's own live here, beside this file; the seller's folders (``build.templates``)
are searched first, so a seller may replace one of ours.  Every template extends
``_base/Dockerfile.j2``, and ``_base`` also holds the files the build context
carries into setup steps (``hubfetch.py``, ``hub-client.txt``), so the bytes of
``_base`` feed every template's digest.  No Jinja here: this runs on every key.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SpecError

__all__ = ["BUILTIN_DIR", "Template", "Variant", "find_template", "list_templates"]

BUILTIN_DIR = Path(__file__).resolve().parent
_SHARED = ("_base",)
_DEPS_BLOCK = re.compile(rb"\{%-?\s*block\s+deps\b")


@dataclass(frozen=True)
class Variant:
    """A shape of job that ``bake prebake`` bakes ahead of demand."""

    name: str
    base: str | None
    requirements: tuple[str, ...]
    models: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Template:
    name: str
    folder: Path
    search_path: tuple[Path, ...]
    default_base: str
    digest: str
    description: str = ""
    variants: tuple[Variant, ...] = field(default=())
    #: Every path read or probed to find and fingerprint it (the fast path's record).
    inputs: tuple[Path, ...] = field(default=(), compare=False)
    #: sha256 of what makes its deps layer (``_base``, and its own Dockerfile when it
    #: overrides the ``deps`` block): templates with the same recipe share stacks.
    recipe: str = ""

    def base_file(self, name: str) -> Path:
        """A file of ``_base`` from the first folder that has one: the same ``_base`` whose
        Dockerfile Jinja extends and whose files feed the template's digest."""
        for folder in self.search_path:
            candidate = folder / "_base" / name
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"no _base/{name} in {self.search_path}")


def _search_path(extra: tuple[str, ...]) -> tuple[Path, ...]:
    return (*(Path(p) for p in extra), BUILTIN_DIR)


def list_templates(extra: tuple[str, ...] = ()) -> list[str]:
    names: set[str] = set()
    for folder in _search_path(extra):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir()
                         if (p / "Dockerfile.j2").is_file() and not p.name.startswith("_"))
    return sorted(names)


def find_template(name: str, extra: tuple[str, ...] = ()) -> Template:
    search = _search_path(extra)
    probed: list[Path] = []
    for folder in search:
        candidate = folder / name
        probed.append(candidate / "Dockerfile.j2")
        if (candidate / "Dockerfile.j2").is_file() and not name.startswith("_"):
            return _load(name, candidate, search, tuple(probed))
    known = list_templates(extra)
    close = difflib.get_close_matches(name, known, n=1)
    raise SpecError(
        f"unknown template {name!r}",
        field="template",
        hint=f"did you mean {close[0]!r}?" if close else f"known templates: {', '.join(known)}",
    )


def _load(name: str, folder: Path, search: tuple[Path, ...],
          probed: tuple[Path, ...] = ()) -> Template:
    meta_path = folder / "template.toml"
    try:
        meta = tomllib.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"template {name!r}: cannot read {meta_path}: {exc}") from None
    default_base = meta.get("default_base")
    if not isinstance(default_base, str) or not default_base:
        raise ConfigError(f"template {name!r}: {meta_path} must set default_base")
    variants = []
    for i, entry in enumerate(meta.get("variants", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"template {name!r}: variants[{i}] needs a name")
        variants.append(Variant(
            name=entry["name"],
            base=entry.get("base"),
            requirements=tuple(entry.get("requirements", [])),
            models=tuple(entry.get("models", [])),
        ))
    digest, recipe, read = _digest(folder, search)
    return Template(
        name=name,
        folder=folder,
        search_path=search,
        default_base=default_base,
        digest=digest,
        description=str(meta.get("description", "")),
        variants=tuple(variants),
        inputs=(*probed, *read),
        recipe=recipe,
    )


def _digest(folder: Path, search: tuple[Path, ...]) -> tuple[str, str, tuple[Path, ...]]:
    """sha256 over the template's files and those of the shared ``_base``; the deps recipe;
    and every path it read or walked.

    The recipe is what makes a deps layer: the shared ``_base`` (whose Dockerfile holds
    the deps stage, the tool stage and the wheelhouse step) and, only when the template
    overrides the ``deps`` block, the template's own Dockerfile.  Two templates with the
    same recipe make the same deps layer from the same lock, so they share stacks.
    """
    h = hashlib.sha256()
    recipe = hashlib.sha256()
    roots = [("template", folder)]
    read: list[Path] = []
    for shared in _SHARED:
        for base in search:
            read.append(base / shared)
            if (base / shared).is_dir():
                roots.append((shared, base / shared))
                break
    for label, root in roots:
        entries = [p for p in root.rglob("*") if "__pycache__" not in p.parts]
        read += [root, *(p for p in entries if p.is_dir())]
        for path in sorted(p for p in entries if p.is_file()):
            read.append(path)
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes()
            entry = f"{label}/{rel}\0".encode() + hashlib.sha256(data).digest()
            h.update(entry)
            if label != "template" or (rel == "Dockerfile.j2" and _DEPS_BLOCK.search(data)):
                recipe.update(entry)
    return "sha256:" + h.hexdigest(), "sha256:" + recipe.hexdigest(), tuple(read)

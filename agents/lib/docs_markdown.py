"""Markdown API reference for a Python package: discovery, pages, the index, writing.

The pages are :mod:`orchestrator.agents.lib.apidocs`'s (griffe, static: the documented
package is never imported); this module keeps the file-level parts: :func:`render_index`
and :func:`write_docs` (atomic, confined to the output folder), and re-exports discovery.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import warnings
from pathlib import Path, PurePosixPath

from orchestrator.agents.lib.apidocs import SkippedPage, render_source
from orchestrator.agents.lib.apidocs.discover import ModuleInfo, discover_modules
from orchestrator.agents.lib.apidocs.render import finish
from orchestrator.agents.lib.files import write_atomic
from orchestrator.agents.lib.pyparse import PARSE_LOCK

__all__ = [
    "INDEX_FILENAME",
    "ModuleInfo",
    "UnsafePath",
    "discover_modules",
    "module_filename",
    "module_summary",
    "render_index",
    "render_module",
    "write_docs",
]

INDEX_FILENAME = "index.md"

_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")


def _escape_inline(text: str) -> str:
    return re.sub(r"([\\`*<])", r"\\\1", text)


class UnsafePath(ValueError):
    """Raised by :func:`write_docs` for a path that could escape the output dir."""


def render_module(source: str, name: str) -> str:
    """Render the Markdown API page of one module from its source text alone.

    Without its package, re-exports are not followed and nothing is cross-linked; the
    docs agent renders from the loaded package (:func:`.apidocs.render_page`).

    Args:
        source: The module's Python source (it is parsed, never executed).
        name: Dotted module name, used as the page heading.

    Returns:
        The page (the format is :mod:`.apidocs.render`'s). A module that cannot be parsed
        yields a page holding only a "Could not parse this module: ..." note. The text ends
        with exactly one newline. Never raises for bad source.
    """
    page = render_source(source, name)
    if isinstance(page, SkippedPage):
        return f"# {name}\n\nCould not parse this module: {page.reason}\n"
    return page.markdown


def _parse(source: str) -> ast.Module:
    """Parse ``source`` quietly (no SyntaxWarning noise from foreign code)."""
    if "\0" in source:
        raise SyntaxError("source contains a null byte")
    with PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source)


def module_summary(source: str) -> str:
    """Return the first sentence of the module docstring.

    Args:
        source: The module's Python source.

    Returns:
        The first sentence (or, lacking one, the first paragraph) of the module
        docstring on a single line, or ``""`` if there is no docstring or the
        source cannot be parsed.  Never raises for bad source.
    """
    try:
        doc = ast.get_docstring(_parse(source), clean=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
    if not doc:
        return ""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    match = _SENTENCE.match(paragraph)
    return match.group(1) if match else paragraph


def module_filename(name: str) -> str:
    """Return the file name of a module's page, e.g. ``"pkg.sub.mod.md"``.

    Args:
        name: Dotted module name.

    Returns:
        ``name + ".md"`` (the index page is :data:`INDEX_FILENAME`).
    """
    return f"{name}.md"


def render_index(
    package: str, modules: list[tuple[str, str]], *, skipped: list[tuple[str, str]] = ()
) -> str:
    """Render the index page linking every module page.

    Args:
        package: Top-level package name, used in the heading.
        modules: ``(module name, summary)`` pairs, in any order.
        skipped: ``(module name, reason)`` pairs of modules that could not be read.

    Returns:
        ``# <package> API reference`` followed by one bullet per module,
        ``- [pkg.mod](pkg.mod.md) — summary``, sorted by module name; then, if any were
        skipped, ``## Skipped modules`` with ``- pkg.mod — reason`` bullets.
    """
    blocks = [f"# {package} API reference"]
    items = []
    for mod_name, summary in sorted(modules):
        item = f"- [{mod_name}]({module_filename(mod_name)})"
        summary = " ".join(summary.split())
        items.append(f"{item} — {summary}" if summary else item)
    blocks.append("\n".join(items) if items else "No public modules.")
    if skipped:
        blocks.append("## Skipped modules")
        blocks.append("\n".join(f"- {_escape_inline(name)} — {_escape_inline(' '.join(why.split()))}"
                                for name, why in sorted(skipped)))
    return finish(blocks)


def _check_path(root: Path, rel: object) -> tuple[str, Path]:
    """Validate one relative path; return its normal form and resolved target."""
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        raise UnsafePath(f"unsafe output path {rel!r}: empty, NUL, backslash or not a str")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or rel.endswith("/"):
        raise UnsafePath(f"unsafe output path {rel!r}: must be a relative file path without '..'")
    target = (root / pure).resolve()
    if target == root or not target.is_relative_to(root):
        raise UnsafePath(f"unsafe output path {rel!r}: resolves outside {root}")
    if target.exists() and not target.is_file():
        raise UnsafePath(f"unsafe output path {rel!r}: exists and is not a regular file")
    for parent in target.parents:
        if parent == root:
            break
        if parent.exists() and not parent.is_dir():
            raise UnsafePath(f"unsafe output path {rel!r}: {parent} is not a directory")
    return str(pure), target


#: Temporary files of a page: ``.<page>.orchestrator-<mkstemp's random part>.tmp``, a name no
#: user file is likely to have, so that a writer can clear what a killed one left behind.
_TMP_MARK = "orchestrator-"
_TMP_RANDOM = re.compile(r"[a-z0-9_]{8}")


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporary files of ``target`` left by a writer killed before its rename: only
    regular files named exactly as the writer names them, never a user's file."""
    if not target.parent.is_dir():
        return
    prefix = f".{target.name}.{_TMP_MARK}"
    for stale in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        random_part = stale.name[len(prefix):-len(".tmp")]
        if _TMP_RANDOM.fullmatch(random_part) and stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


def write_docs(output_dir: str | os.PathLike[str], files: dict[str, str]) -> list[str]:
    """Write documentation files below ``output_dir``, atomically.

    All paths are validated before anything is written (``output_dir`` is not
    even created when one is refused).  A file whose content is unchanged is
    not rewritten, so it keeps its mtime.  Nothing is deleted but the temporary files a
    killed writer left (``.<page>.orchestrator-<random>.tmp``).

    Args:
        output_dir: Destination folder, created (with parents) if missing.
        files: Relative POSIX path -> text (written as UTF-8, newlines as is).

    Returns:
        The normalised relative paths written or found unchanged, sorted.

    Raises:
        UnsafePath: For an empty, absolute, ``..``-containing, NUL-containing
            or backslash-containing path, one resolving (through symlinks)
            outside ``output_dir``, one clashing with an existing non-file or
            with another entry, or a non-str content.
    """
    root = Path(os.path.abspath(os.fspath(output_dir))).resolve()
    planned: dict[str, tuple[Path, str]] = {}
    targets: set[Path] = set()
    for rel, text in files.items():
        norm, target = _check_path(root, rel)
        if not isinstance(text, str):
            raise UnsafePath(f"content for {rel!r} is not a str")
        if norm in planned or target in targets:
            raise UnsafePath(f"output path {rel!r} given twice")
        planned[norm] = (target, text)
        targets.add(target)
    for norm, (target, _) in planned.items():
        if any(parent in targets for parent in target.parents):
            raise UnsafePath(f"output path {norm!r} lies below another output file")
    root.mkdir(parents=True, exist_ok=True)
    for norm in sorted(planned):
        target, text = planned[norm]
        _remove_stale_temporaries(target)
        data = text.encode("utf-8")
        if target.is_file() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data, mark=_TMP_MARK)
    return sorted(planned)

"""Render Markdown API reference pages for a Python package from its source.

The documented package is never imported: modules are read as text and
inspected with :func:`ast.parse` only.  Everything is pure and deterministic
except :func:`discover_modules` (reads a tree) and :func:`write_docs` (writes).

Page layout of :func:`render_module` -- public classes and functions are
listed interleaved in SOURCE ORDER; property headings carry no ``()``::

    # pkg.mod                     then the module docstring
    ## class Name(Base1, Base2)   then ```python Name(a: int, b=1)``` (__init__
                                  without self, if defined), class docstring
    ### Name.method()             then ```python @classmethod / async def
                                  method(cls, x: int) -> str```, docstring
    ## func()                     then ```python def func(a, /, b: int = 1,
                                  *args, c, **kw) -> str```, docstring

Docstrings become plain paragraphs; lines that would start a heading, rule or
raw HTML block are backslash-escaped and an unclosed code fence is closed, so
a docstring cannot break the page structure.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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

_Func = ast.FunctionDef | ast.AsyncFunctionDef
_Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
_RULE = re.compile(r"^ {0,3}([-=*_+])(?:[ \t]*\1)*[ \t]*$")
_HTML_BLOCK = re.compile(r"^ {0,3}<(?:[!?]|(?:script|pre|style|textarea)\b)", re.I)
_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")
_PROPERTY_DECORATORS = {"property", "cached_property", "setter", "getter", "deleter"}


@dataclass(frozen=True)
class ModuleInfo:
    """A module found by :func:`discover_modules`.

    ``name`` is dotted (``"pkg.sub.mod"``; ``__init__.py`` is named after its
    package); ``path`` is the file relative to the package folder, POSIX style.
    """

    name: str
    path: str


class UnsafePath(ValueError):
    """Raised by :func:`write_docs` for a path that could escape the output dir."""


def discover_modules(package_dir: str | os.PathLike[str]) -> list[ModuleInfo]:
    """List the public modules of the package stored in ``package_dir``.

    The folder's basename is the top-level package name.  Its ``*.py`` files
    are listed, recursing into sub-folders whose name is an identifier (not
    ``__pycache__``, hidden or symlinked ones): regular packages, and folders
    without ``__init__.py``, which Python imports as namespace packages
    (``langgraph.checkpoint`` is one) unless a same-named ``x.py`` shadows them.  Modules with a private
    component below the top-level name (``pkg._x``, ``pkg.__main__``) and
    non-identifier file names (``foo-bar.py``) are left out.  If both ``x.py``
    and ``x/__init__.py`` exist, the package wins, as on import.

    Args:
        package_dir: Folder of the package (a namespace package is accepted).

    Returns:
        The modules, sorted by dotted name.

    Raises:
        FileNotFoundError: If ``package_dir`` is not a directory.
    """
    root = Path(os.path.abspath(os.fspath(package_dir)))
    if not root.is_dir():
        raise FileNotFoundError(f"package directory not found (or not a directory): {root}")
    found: dict[str, ModuleInfo] = {}

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if name.endswith(".py") and entry.is_file():
                stem = name[:-3]
                if not stem.isidentifier():
                    continue
                mod_parts = parts if stem == "__init__" else (*parts, stem)
                if any(p.startswith("_") for p in mod_parts[1:]):
                    continue
                rel = "/".join((*parts[1:], name))
                dotted = ".".join(mod_parts)
                if dotted not in found or name == "__init__.py":
                    found[dotted] = ModuleInfo(dotted, rel)
            elif (
                name.isidentifier()
                and not name.startswith("_")
                and entry.is_dir(follow_symlinks=False)
                and (
                    (Path(entry.path) / "__init__.py").is_file()
                    or not (folder / f"{name}.py").is_file()  # x.py shadows namespace x/
                )
            ):
                walk(Path(entry.path), (*parts, name))

    walk(root, (root.name,))
    return [found[key] for key in sorted(found)]


def _parse(source: str) -> ast.Module:
    """Parse ``source`` quietly (no SyntaxWarning noise from foreign code)."""
    if "\0" in source:
        line = source.count("\n", 0, source.index("\0")) + 1
        raise SyntaxError(f"source contains a null byte (line {line})")
    with PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source)


def _parse_error(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        msg = exc.msg or "invalid syntax"
        if exc.lineno and f"line {exc.lineno}" not in msg:
            msg = f"{msg} (line {exc.lineno})"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())


def _collect_defs(body: list[ast.stmt]) -> list[_Def]:
    """Class/function definitions of ``body`` (also inside if/try), first wins."""
    found: dict[str, _Def] = {}

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.setdefault(node.name, node)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.TryStar)):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(body)
    return list(found.values())


def _format_arg(arg: ast.arg, default: ast.expr | None, prefix: str = "") -> str:
    text = prefix + arg.arg
    if arg.annotation is not None:
        text += ": " + ast.unparse(arg.annotation)
        if default is not None:
            text += " = " + ast.unparse(default)
    elif default is not None:
        text += "=" + ast.unparse(default)
    return text


def _format_params(args: ast.arguments, *, drop_first: bool = False) -> str:
    """Render an argument list the way it is written (PEP 8 spacing)."""
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    start = 1 if drop_first and positional else 0
    parts: list[str] = []
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        if index >= start:
            parts.append(_format_arg(arg, default))
        if index == len(args.posonlyargs) - 1 and index >= start:
            parts.append("/")
    if args.vararg is not None:
        parts.append(_format_arg(args.vararg, None, "*"))
    elif args.kwonlyargs:
        parts.append("*")
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        parts.append(_format_arg(arg, kw_default))
    if args.kwarg is not None:
        parts.append(_format_arg(args.kwarg, None, "**"))
    return ", ".join(parts)


def _type_params(node: ast.AST) -> str:
    params = getattr(node, "type_params", None) or []  # Python 3.12+ syntax
    return f"[{', '.join(ast.unparse(p) for p in params)}]" if params else ""


def _signature(node: _Func, *, ctor: bool = False) -> str:
    """``(params) -> ret``; for a constructor, without ``self`` and return type."""
    text = f"{_type_params(node)}({_format_params(node.args, drop_first=ctor)})"
    if node.returns is not None and not ctor:
        text += " -> " + ast.unparse(node.returns)
    return text


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return ast.unparse(target).rsplit(".", 1)[-1]


def _escape_inline(text: str) -> str:
    return re.sub(r"([\\`*<])", r"\\\1", text)


def _code(*lines: str) -> str:
    return "\n".join(["```python", *lines, "```"])


def _docstring_markdown(doc: str) -> str:
    """Make a cleaned docstring safe to embed as plain Markdown paragraphs."""
    out: list[str] = []
    fence: str | None = None
    for raw in doc.splitlines():
        line = raw.rstrip()
        if fence is not None:
            stripped = line.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                if len(line) - len(line.lstrip(" ")) <= 3:
                    fence = None
        elif match := _FENCE_OPEN.match(line):
            fence = match.group(1)
        elif _HEADING.match(line) or _RULE.match(line) or _HTML_BLOCK.match(line):
            indent = len(line) - len(line.lstrip(" "))
            line = f"{line[:indent]}\\{line[indent:]}"
        out.append(line)
    if fence is not None:
        out.append(fence)
    return "\n".join(out).strip("\n")


def _doc_block(node: ast.Module | _Def) -> list[str]:
    doc = ast.get_docstring(node, clean=True)
    text = _docstring_markdown(doc) if doc else ""
    return [text] if text.strip() else []


def _function_section(node: _Func, heading: str) -> list[str]:
    decorators = [_decorator_name(d) for d in node.decorator_list]
    is_property = bool(_PROPERTY_DECORATORS.intersection(decorators))
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    code = [f"@{ast.unparse(d)}" for d in node.decorator_list]
    code.append(f"{prefix} {node.name}{_signature(node)}")
    title = heading if is_property else f"{heading}()"
    return [title, _code(*code), *_doc_block(node)]


def _class_section(node: ast.ClassDef) -> list[str]:
    bases = [ast.unparse(b) for b in node.bases]
    bases += [
        f"{k.arg}={ast.unparse(k.value)}" if k.arg else f"**{ast.unparse(k.value)}"
        for k in node.keywords
    ]
    title = f"## class {node.name}{_type_params(node)}"
    if bases:
        title += f"({', '.join(bases)})"
    blocks = [_escape_inline(title)]
    members: list[_Func] = [
        m
        for m in _collect_defs(node.body)
        if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    init = next((m for m in members if m.name == "__init__"), None)
    if init is not None:
        blocks.append(_code(f"{node.name}{_signature(init, ctor=True)}"))
    blocks += _doc_block(node)
    for member in members:
        if not member.name.startswith("_"):
            blocks += _function_section(member, f"### {node.name}.{member.name}")
    return blocks


def _finish(blocks: list[str]) -> str:
    text = "\n\n".join(blocks)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


def render_module(source: str, name: str) -> str:
    """Render the Markdown API page of one module from its source text.

    Args:
        source: The module's Python source (it is parsed, never executed).
        name: Dotted module name, used as the page heading.

    Returns:
        The page: ``# name``, the module docstring, then every public class
        and function in source order (see the module docstring for the
        format).  A module that cannot be parsed yields a page holding only a
        "Could not parse this module: ..." note.  The text ends with exactly
        one newline.  Never raises for bad source.
    """
    blocks = [f"# {name}"]
    try:
        tree = _parse(source)
        blocks += _doc_block(tree)
        defs = [d for d in _collect_defs(tree.body) if not d.name.startswith("_")]
        for node in defs:
            if isinstance(node, ast.ClassDef):
                blocks += _class_section(node)
            else:
                blocks += _function_section(node, f"## {node.name}")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return _finish([blocks[0], f"Could not parse this module: {_parse_error(exc)}"])
    if not defs:
        blocks.append("No public classes or functions.")
    return _finish(blocks)


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
    return _finish(blocks)


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

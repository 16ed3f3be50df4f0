"""A module's Markdown page, from its loaded griffe tree.

Page layout (another tool parses it; keep it)::

    # pkg.mod                       then the module docstring
    ## class Name                   ```python Name(a: int, b: str = 'x')```, then its text
    ### Name.method()               ```python def method(self, x: int) -> str```
    ### Name.attr                   ```python attr: int = 0``` (fields, properties)
    ## func()                       ```python @overload def func(...) ... def func(...)```
    ## NAME                         ```python NAME: int = 3``` (constants, type aliases)

A re-exported name's text starts with ``Defined in [`pkg._impl`](pkg._impl.md#anchor).``
(no link when that module has no page); a line ``Types: ...`` links the package's types its
signature names; then its docstring.
"""

from __future__ import annotations

import re

import griffe
from orchestrator.agents.lib.apidocs.docstrings import docstring_markdown
from orchestrator.agents.lib.apidocs.links import LinkTable, heading
from orchestrator.agents.lib.apidocs.public import Entry, class_members, module_entries
from orchestrator.agents.lib.apidocs.signatures import (
    attribute_line,
    constructor_line,
    expr_text,
    function_lines,
    in_class_body,
    is_property,
    overloads_of,
)

__all__ = ["EMPTY_PAGE", "finish", "page_markdown", "summary"]

EMPTY_PAGE = "No public classes or functions."
_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")


def _code(lines: list[str]) -> str:
    return "\n".join(["```python", *lines, "```"])


def _escape_inline(text: str) -> str:
    return re.sub(r"([\\`<])", r"\\\1", text)


def _signature_exprs(obj: griffe.Object) -> list[object]:
    if obj.is_function:
        funcs = [*overloads_of(obj), obj]
        found: list[object] = []
        for func in funcs:
            found += [p.annotation for p in func.parameters] + [func.returns]
        return found
    if obj.is_class:
        init = obj.members.get("__init__")
        if init is not None and not init.is_alias and init.is_function:
            return [p.annotation for p in init.parameters]
        return [m.annotation for m in obj.members.values()
                if not m.is_alias and m.is_attribute and in_class_body(obj, m)]
    return [getattr(obj, "annotation", None)]


def _type_links(obj: griffe.Object, links: LinkTable | None) -> str:
    if links is None:
        return ""
    seen: dict[str, str] = {}
    for expr in _signature_exprs(obj):
        if not isinstance(expr, griffe.Expr):
            continue
        for part in expr.iterate(flat=True):
            if isinstance(part, griffe.ExprName) and part.name not in seen:
                try:
                    url = links.url(part.canonical_path) or links.resolve(part.canonical_path, obj)
                except Exception:  # noqa: BLE001 - a name griffe cannot resolve is not linked
                    url = None
                if url and part.canonical_path != obj.path:
                    seen[part.name] = url
    return "Types: " + ", ".join(f"[`{n}`]({u})" for n, u in sorted(seen.items())) if seen else ""


def _bases_line(cls: griffe.Class, links: LinkTable | None) -> str:
    shown = []
    for base in cls.bases:
        text = expr_text(base)
        url = None
        if links is not None and isinstance(base, griffe.Expr):
            try:
                url = links.url(base.canonical_path) or links.resolve(base.canonical_path, cls)
            except Exception:  # noqa: BLE001 - an unresolvable base is shown, not linked
                url = None
        shown.append(f"[`{text}`]({url})" if url else f"`{text}`")
    return "Bases: " + ", ".join(shown) if shown else ""


def _resolver(obj: griffe.Object, links: LinkTable | None):
    if links is None:
        return None
    return lambda name: links.resolve(name, obj)


def _object_blocks(obj: griffe.Object, name: str, level: str, owner: str | None,
                   links: LinkTable | None, defined_in: str | None = None) -> list[str]:
    title = heading(obj, name, owner)
    if obj.is_class:
        code = [constructor_line(obj) if name == obj.name else
                constructor_line(obj).replace(obj.name, name, 1)]
    elif obj.is_function:
        code = function_lines(obj)
        if not is_property(obj) and name != obj.name:
            code = [line.replace(f"def {obj.name}", f"def {name}", 1) for line in code]
    else:
        code = [attribute_line(obj, name)]
    blocks = [f"{level} {_escape_inline(title)}", _code(code)]
    if defined_in is not None:
        url = links.url(obj.path) if links is not None else None
        own_page = links is not None and defined_in in links.pages
        target = f"{defined_in}.md#{url.split('#', 1)[1]}" if url and own_page else None
        blocks.append(f"Defined in [`{defined_in}`]({target})." if target
                      else f"Defined in `{defined_in}`.")
    if obj.is_class and (bases := _bases_line(obj, links)):
        blocks.append(bases)
    if types := _type_links(obj, links):
        blocks.append(types)
    if text := docstring_markdown(obj, _resolver(obj, links)):
        blocks.append(text)
    if obj.is_class:
        for member in class_members(obj):
            blocks += _object_blocks(member, member.name, "###", name, links)
    return blocks


def _external_blocks(entry: Entry) -> list[str]:
    return [f"## {_escape_inline(entry.name)}",
            _code([f"from {entry.defined_in} import {entry.target_path.rsplit('.', 1)[-1]}"
                   + (f" as {entry.name}" if not entry.target_path.endswith("." + entry.name)
                      else "")]),
            f"Defined in `{entry.defined_in}`."]


def finish(blocks: list[str]) -> str:
    """Blocks joined by blank lines; no trailing spaces; one final newline."""
    text = "\n\n".join(blocks)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


def page_markdown(mod: griffe.Module, name: str, links: LinkTable | None,
                  entries: list[Entry] | None = None) -> str:
    """The page of ``mod``, titled ``name``."""
    blocks = [f"# {name}"]
    if text := docstring_markdown(mod, _resolver(mod, links)):
        blocks.append(text)
    entries = module_entries(mod) if entries is None else entries
    for entry in entries:
        if entry.obj is None:
            blocks += _external_blocks(entry)
        else:
            blocks += _object_blocks(entry.obj, entry.name, "##", None, links, entry.defined_in)
    if not entries:
        blocks.append(EMPTY_PAGE)
    return finish(blocks)


def summary(mod: griffe.Module) -> str:
    """The first sentence (or, lacking one, paragraph) of the module docstring, one line."""
    if mod.docstring is None:
        return ""
    paragraph = " ".join(mod.docstring.value.strip().split("\n\n", 1)[0].split())
    match = _SENTENCE.match(paragraph)
    return match.group(1) if match else paragraph


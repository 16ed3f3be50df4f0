"""Docstrings as Markdown, parsed by griffe (Google, NumPy or Sphinx style, detected).

Sections become bold-titled lists; doctest examples and reST literal blocks become fenced
code; reST roles, ``literals`` and mkdocs admonitions become their Markdown forms; names the
package documents link to their heading. The result cannot break the page: lines that would
start a heading, a rule or raw HTML are escaped and an unclosed fence is closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import griffe
from orchestrator.agents.lib.apidocs.signatures import expr_text

__all__ = ["docstring_markdown", "safe_markdown", "text_markdown"]

Resolver = Callable[[str], str | None]

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
_RULE = re.compile(r"^ {0,3}([-=*_+])(?:[ \t]*\1)*[ \t]*$")
_HTML_BLOCK = re.compile(r"^ {0,3}<(?:[!?]|(?:script|pre|style|textarea)\b)", re.I)
_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|data|mod|exc|obj|const|type|ref|term|doc):"
                   r"`([^`]+)`")
_AUTOREF = re.compile(r"\[([^\]\n]+)\]\[([\w.]*)\]")
_DOUBLE_TICKS = re.compile(r"``([^`\n]+?)``")
_CODE_SPAN = re.compile(r"(?<![`\\])`([^`\n]+)`(?!`)")
_DUNDER = re.compile(r"(?<![\w`\\])(__\w+?__)(?![\w`])")
_STARRED = re.compile(r"(?<![\w`\\*])(\*{1,2})(args|kwargs|kwds|kw|\w+_args|\w+_kwargs)\b")
_ADMONITION = re.compile(r"^( *)(?:!!!|\?\?\?\+?)\s+(\w+)(?:\s+\"([^\"]*)\")?\s*$")
_DIRECTIVE = re.compile(r"^( *)\.\. (note|warning|tip|important|caution|danger|attention|hint|"
                        r"seealso|versionadded|versionchanged|deprecated|code-block|code|"
                        r"sourcecode)::\s*(.*)$")
_ALERTS = {"note": "NOTE", "tip": "TIP", "hint": "TIP", "important": "IMPORTANT",
           "warning": "WARNING", "attention": "WARNING", "caution": "CAUTION",
           "danger": "CAUTION"}
_SECTION_TITLES = {
    "parameters": "Parameters", "other parameters": "Other parameters",
    "type parameters": "Type parameters", "raises": "Raises", "warns": "Warns",
    "returns": "Returns", "yields": "Yields", "receives": "Receives",
    "attributes": "Attributes", "functions": "Functions", "classes": "Classes",
    "type aliases": "Type aliases", "modules": "Modules",
}


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _take_block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines indented deeper than ``indent`` from ``start`` (blank lines inside kept)."""
    block: list[str] = []
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > indent):
        block.append(lines[i])
        i += 1
    while block and not block[-1].strip():
        block.pop()
        i -= 1
    depth = min((_indent_of(b) for b in block if b.strip()), default=0)
    return [b[depth:] for b in block], i


def _structure(text: str) -> list[str]:
    """Doctests, literal blocks, directives and admonitions to fences and quotes."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    fence: str | None = None
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if fence is not None:
            out.append(line)
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                fence = None
            i += 1
            continue
        if match := _FENCE_OPEN.match(line):
            fence = match.group(1)
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            indent = _indent_of(line)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][indent:] if _indent_of(lines[i]) >= indent else lines[i].strip())
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        admon = _ADMONITION.match(line)
        directive = None if admon else _DIRECTIVE.match(line)
        if admon or directive:
            if admon:
                indent, kind, title = len(admon.group(1)), admon.group(2).lower(), admon.group(3)
            else:
                indent, kind, title = len(directive.group(1)), directive.group(2), directive.group(3)
            body, i = _take_block(lines, i + 1, indent)
            if kind in ("code-block", "code", "sourcecode"):
                out += [f"```{title.strip() or 'python'}", *[b for b in body], "```"]
                continue
            if kind in ("versionadded", "versionchanged", "deprecated"):
                words = {"versionadded": "New in version", "versionchanged": "Changed in version",
                         "deprecated": "Deprecated since version"}[kind]
                out.append(f"*{words} {title.strip()}.*" + (" " + " ".join(body) if body else ""))
                continue
            if directive and title.strip():  # ``.. note:: text``: the text is the body's start
                body, title = [title.strip(), *body], None
            head = f"> [!{_ALERTS[kind]}]" if kind in _ALERTS and not title else \
                f"> **{title or ('See also' if kind == 'seealso' else kind.capitalize())}**"
            out += [head, *[f"> {b}".rstrip() for b in _structure("\n".join(body))]]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent_of(lines[j]) > _indent_of(line):
                head = line.rstrip()[:-2].rstrip()
                out.append(head + ":" if head.strip() else "")
                body, i = _take_block(lines, j, _indent_of(line))
                out += ["", "```", *body, "```"]
                continue
        out.append(line)
        i += 1
    if fence is not None:
        out.append(fence)
    return out


def _inline(line: str, resolve: Resolver | None) -> str:
    """reST roles and literals, autorefs, code spans that name documented objects, dunders."""
    def link(code: str, target: str) -> str:
        url = resolve(target) if resolve else None
        return f"[`{code}`]({url})" if url else f"`{code}`"

    def role(m: re.Match[str]) -> str:
        target = m.group(2)
        if "<" in target and target.endswith(">"):
            shown, target = target[:-1].split("<", 1)
            return link(shown.strip(), target.strip())
        shown = target.lstrip("~").rsplit(".", 1)[-1] if target.startswith("~") else target
        return link(shown, target)

    def autoref(m: re.Match[str]) -> str:
        url = resolve(m.group(2) or m.group(1).strip("`")) if resolve else None
        return f"[{m.group(1)}]({url})" if url else m.group(1)

    line = _ROLE.sub(role, line)
    line = _DOUBLE_TICKS.sub(lambda m: f"`{m.group(1)}`", line)
    line = _AUTOREF.sub(autoref, line)
    parts = re.split(r"(\[`[^`]*`\]\([^)]*\)|`[^`\n]+`)", line)
    for index, part in enumerate(parts):
        if index % 2:
            if not part.startswith("[") and resolve:
                code = part[1:-1]
                parts[index] = link(code, code) if re.fullmatch(r"[\w.]+(\(\))?", code) else part
            continue
        part = _DUNDER.sub(r"`\1`", part)
        parts[index] = _STARRED.sub(lambda m: "\\*" * len(m.group(1)) + m.group(2), part)
    return "".join(parts)


def _unquote(line: str) -> str:
    """A line without its blockquote markers (``> > text`` is ``text``)."""
    while line.lstrip(" ").startswith(">"):
        line = line.lstrip(" ")[1:]
        line = line[1:] if line.startswith(" ") else line
    return line


def safe_markdown(lines: list[str], resolve: Resolver | None = None) -> str:
    """Escape what could break the page; convert inline markup outside code."""
    out: list[str] = []
    fence: str | None = None
    for raw in lines:
        line = raw.rstrip()
        inner = _unquote(line)  # a fence inside a blockquote closes inside it, too
        if fence is not None:
            stripped = inner.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]} and _indent_of(inner) <= 3:
                fence = None
        elif match := _FENCE_OPEN.match(inner):
            fence = match.group(1)
        else:
            if _HEADING.match(line) or _RULE.match(line) or _HTML_BLOCK.match(line):
                indent = _indent_of(line)
                line = f"{line[:indent]}\\{line[indent:]}"
            line = _inline(line, resolve)
        out.append(line)
    if fence is not None:
        out.append(fence)
    return "\n".join(out).strip("\n")


def text_markdown(text: str, resolve: Resolver | None = None) -> str:
    """Free docstring text as Markdown."""
    return safe_markdown(_structure(text), resolve)


def _item(head: str, description: str, resolve: Resolver | None) -> str:
    body = text_markdown(description, resolve) if description.strip() else ""
    lines = body.splitlines()
    if not head:
        first = f"- {lines[0]}" if lines else "-"
    else:
        first = f"- {head}" + (f": {lines[0]}" if lines else "")
    rest = [f"  {line}" if line else "" for line in lines[1:]]
    return "\n".join([first, *rest])


def _annotation(value: object, resolve: Resolver | None) -> str:
    text = expr_text(value) if value is not None else ""
    if not text:
        return ""
    url = resolve(text) if resolve else None
    return f"[`{text}`]({url})" if url else f"`{text}`"


def _section(section: griffe.DocstringSection, resolve: Resolver | None) -> list[str]:
    kind = section.kind.value
    if kind == "text":
        return [text_markdown(section.value, resolve)]
    if kind == "examples":
        blocks = ["**Examples:**"]
        for sub_kind, text in section.value:
            if sub_kind.value == "examples":
                blocks.append("\n".join(["```pycon", text.strip("\n"), "```"]))
            else:
                blocks.append(text_markdown(text, resolve))
        return blocks
    if kind == "admonition":
        admon = section.value
        body = text_markdown(admon.description, resolve).splitlines()
        label = str(admon.kind or "note").lower()
        title = section.title or label.capitalize()
        head = f"> [!{_ALERTS[label]}]" if label in _ALERTS and title.lower() == label else \
            f"> **{title}**"
        return ["\n".join([head, *[f"> {b}".rstrip() for b in body]])]
    if kind == "deprecated":
        dep = section.value
        version = f" since {dep.version}" if dep.version else ""
        return [f"**Deprecated{version}:** {text_markdown(dep.description, resolve)}".rstrip()]
    title = section.title or _SECTION_TITLES.get(kind, kind.capitalize())
    items = []
    for element in section.value:
        name = getattr(element, "name", "")
        annotation = _annotation(element.annotation, resolve)
        default = getattr(element, "default", None) if kind == "parameters" else None
        details = [annotation] if annotation else []
        if default is not None and expr_text(default) not in ("()", "{}"):
            details.append(f"default `{expr_text(default)}`")
        if name:
            head = f"`{name}`" + (f" ({', '.join(details)})" if details else "")
        else:
            head = annotation
        items.append(_item(head, element.description, resolve))
    return [f"**{title}:**", "\n".join(items)] if items else []


def docstring_markdown(obj: griffe.Object, resolve: Resolver | None = None) -> str:
    """The object's docstring as Markdown blocks (``""`` if it has none)."""
    if obj.docstring is None or not obj.docstring.value.strip():
        return ""
    try:
        sections = obj.docstring.parsed
    except Exception:  # noqa: BLE001 - a parser crash on odd text: show the text as it is
        sections = [griffe.DocstringSectionText(obj.docstring.value)]
    blocks: list[str] = []
    for section in sections:
        blocks += [b for b in _section(section, resolve) if b.strip()]
    return "\n\n".join(blocks)

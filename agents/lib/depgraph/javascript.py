"""JavaScript / TypeScript imports: extracted with tree-sitter, resolved to files of the
repository.

JavaScript / TypeScript resolution
    Specifiers are taken from ``import ... from "s"``, ``import "s"``, ``import type``,
    ``export ... from "s"``, ``export * from "s"``, TypeScript's ``import x = require("s")``,
    ``require("s")`` and dynamic / type-level ``import("s")`` whose single argument is a
    string literal or a template literal without substitutions (computed ones are ignored).

    * Relative specifiers (``./``, ``../``, ``.``, ``..``) resolve against the importer's
      folder: the exact file, then the specifier plus each of ``.ts .tsx .d.ts .js .jsx
      .mjs .cjs``, then ``<dir>/index.<ext>`` in the same order.  A ``.js`` / ``.jsx``
      specifier may name the TypeScript source (``./a.js`` -> ``a.ts`` or ``a.tsx``;
      TypeScript importers try that first, as ``tsc`` does).  An exact match on
      a non-source file (``./styles.css``, ``./data.json``) satisfies the import without an
      edge.  Nothing matching -> unresolved.  A specifier leaving the repository is ignored.
    * Bare specifiers use the nearest ``tsconfig.json`` (else ``jsconfig.json``) in the
      importer's folder or above, up to the repository root, following relative
      ``extends``.  ``compilerOptions.paths`` is tried first -- an exact key, else the
      ``*`` pattern with the longest matching prefix (TypeScript's rule), its targets in
      order, relative to ``baseUrl`` (default: the folder of the config defining
      ``paths``) -- then ``baseUrl`` itself.  A bare specifier that matched a ``paths``
      pattern other than a lone ``*`` but no file is unresolved; any other unmatched bare
      specifier is an npm package or a Node built-in and is ignored.  Configs may contain
      comments and trailing commas.
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterable
from typing import Any

from orchestrator.agents.lib.depgraph.repo import _Repo
from orchestrator.agents.lib.depgraph.tsconfig import _config_for, _match_paths

# Probing order for extension-less JS/TS specifiers (TypeScript's, then Node's).
_PROBE_EXTS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs")
# A JavaScript-extension specifier may name a TypeScript source (ESM convention).
_TS_FOR_JS = {".js": (".ts", ".tsx"), ".jsx": (".tsx",), ".mjs": (), ".cjs": ()}

_QUERY_SOURCE = """
(import_statement source: (string) @s)
(export_statement source: (string) @s)
(call_expression function: (import) arguments: (arguments . [(string) (template_string)] @s .))
(call_expression function: (identifier) @f
  arguments: (arguments . [(string) (template_string)] @s .) (#eq? @f "require"))
"""
_TS_EXTRA_QUERY = "(import_require_clause source: (string) @s)"
_LANGS: dict[str, tuple[Any, Any]] = {}
_LANGS_LOCK = threading.Lock()


def _language(kind: str) -> tuple[Any, Any]:
    """(Language, Query) for "js", "ts" or "tsx", built once."""
    with _LANGS_LOCK:
        if kind not in _LANGS:
            import tree_sitter

            if kind == "js":
                import tree_sitter_javascript

                lang = tree_sitter.Language(tree_sitter_javascript.language())
                source = _QUERY_SOURCE
            else:
                import tree_sitter_typescript

                raw = (tree_sitter_typescript.language_typescript() if kind == "ts"
                       else tree_sitter_typescript.language_tsx())
                lang = tree_sitter.Language(raw)
                source = _QUERY_SOURCE + _TS_EXTRA_QUERY
            _LANGS[kind] = (lang, tree_sitter.Query(lang, source))
        return _LANGS[kind]


def _js_imports(
    files: list[tuple[str, bytes | str]], errors: dict[str, str]
) -> Iterable[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    if not files:
        return out
    import tree_sitter

    parsers: dict[str, tuple[Any, Any]] = {}
    for rel, data in files:
        suffix = posixpath.splitext(rel)[1]
        kind = "ts" if suffix == ".ts" else "tsx" if suffix == ".tsx" else "js"
        if kind not in parsers:
            lang, query = _language(kind)
            parsers[kind] = (tree_sitter.Parser(lang), query)
        parser, query = parsers[kind]
        tree = parser.parse(data if isinstance(data, bytes) else data.encode())
        if tree.root_node.has_error:
            errors[rel] = _ts_error(tree.root_node)
        captures = tree_sitter.QueryCursor(query).captures(tree.root_node)
        specs = []
        for node in captures.get("s", ()):
            spec = _string_value(node)
            if spec is not None:
                specs.append(spec)
        out.append((rel, specs))
    return out


def _ts_error(root: Any) -> str:
    node = root
    while True:  # descend to the first erroneous leaf-most node
        for child in node.children:
            if child.is_error or child.is_missing or child.has_error:
                node = child
                break
        else:
            break
        if node.is_error or node.is_missing:
            break
    line = node.start_point[0] + 1
    if node.is_missing:
        return f"syntax error: missing {node.type!r} (line {line})"
    return f"syntax error (line {line})"


def _string_value(node: Any) -> str | None:
    """The value of a string / template literal node, None if it has substitutions."""
    text = node.text.decode("utf-8", "replace")
    if node.type == "template_string":
        if any(child.type == "template_substitution" for child in node.children):
            return None
    body = text[1:-1]
    return _unescape(body) if "\\" in body else body


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\" or i + 1 == len(body):
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1]
        try:
            if nxt == "u" and body[i + 2:i + 3] == "{":
                end = body.index("}", i)
                out.append(chr(int(body[i + 3:end], 16)))
                i = end + 1
                continue
            if nxt in "ux":
                width = 4 if nxt == "u" else 2
                out.append(chr(int(body[i + 2:i + 2 + width], 16)))
                i += 2 + width
                continue
        except ValueError:
            pass
        out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(nxt, nxt))
        i += 2
    return "".join(out)


def _resolve_js(
    repo: _Repo, rel: str, specs: list[str], out: set[str], missing: set[str],
    errors: dict[str, str],
) -> None:
    folder = rel.rpartition("/")[0]
    is_ts = rel.endswith((".ts", ".tsx"))
    cache = repo.js_cache
    for spec in specs:
        key = (folder, is_ts, spec)
        found = cache.get(key, False)
        if found is False:
            found = cache[key] = _resolve_js_spec(repo, folder, is_ts, spec, errors)
        if found is None:
            missing.add(spec)
        elif found:
            out.add(found)


def _resolve_js_spec(
    repo: _Repo, folder: str, is_ts: bool, spec: str, errors: dict[str, str]
) -> str | None:
    """The file ``spec`` names from ``folder``; "" when satisfied without an edge (external,
    non-source file, computed away), None when unresolved."""
    if not spec:
        return ""
    if spec in (".", "..") or spec.startswith(("./", "../")):
        joined = posixpath.normpath(posixpath.join(folder, spec))
        if joined == ".." or joined.startswith("../"):
            return ""  # outside the repository
        return _probe(repo, "" if joined == "." else joined, spec.endswith("/"), is_ts)
    if spec.startswith("/") or ":" in spec.split("/", 1)[0]:
        return ""  # absolute path, URL or "node:fs"
    config = _config_for(repo, folder, errors)
    if config is None:
        return ""
    matched_alias = False
    match = _match_paths(config, spec)
    if match is not None:
        pattern, targets, star = match
        matched_alias = pattern != "*"
        base = config.target_base()
        for target in targets:
            candidate = posixpath.normpath(posixpath.join(base, target.replace("*", star, 1)))
            if candidate == ".." or candidate.startswith("../"):
                continue
            found = _probe(repo, "" if candidate == "." else candidate, False, is_ts)
            if found is not None:
                return found
    if config.base_url is not None:
        candidate = posixpath.normpath(posixpath.join(config.base_url, spec))
        if not (candidate == ".." or candidate.startswith("../")):
            found = _probe(repo, "" if candidate == "." else candidate, False, is_ts)
            if found is not None:
                return found
    return None if matched_alias else ""


def _probe(repo: _Repo, base: str, dir_only: bool, is_ts: bool) -> str | None:
    """The source file ``base`` names: "" for an existing non-source file, None if none."""
    sources = repo.sources
    if not dir_only and base:
        dot = base.rfind(".")
        ext = base[dot:] if dot > base.rfind("/") + 1 else ""
        swaps = tuple(base[:dot] + alt for alt in _TS_FOR_JS.get(ext, ()))
        if is_ts:
            for candidate in swaps:
                if candidate in sources:
                    return candidate
        if base in sources:
            return base
        if base in repo.existing:
            return ""
        for candidate_ext in _PROBE_EXTS:
            if base + candidate_ext in sources:
                return base + candidate_ext
        if not is_ts:
            for candidate in swaps:
                if candidate in sources:
                    return candidate
    index = base + "/index" if base else "index"
    for candidate_ext in _PROBE_EXTS:
        if index + candidate_ext in sources:
            return index + candidate_ext
    return None

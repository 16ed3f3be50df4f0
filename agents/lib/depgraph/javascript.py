"""JavaScript / TypeScript imports: extracted with tree-sitter, resolved to files of the
repository.

Extraction
    Specifiers are taken from ``import ... from "s"``, ``import "s"``, ``import type``,
    ``export ... from "s"``, ``export * from "s"``, TypeScript's ``import x = require("s")``,
    ``require("s")``, dynamic / type-level ``import("s")`` (comments before the specifier,
    as in webpack's and Vite's ``import(/* webpackChunkName: "x" */ "./x")``, and a second
    options argument are allowed) and TypeScript's ``/// <reference path="s" />`` (relative
    to the file) and ``/// <reference types="s" />`` directives at the top of a file.  The
    first argument of ``require()`` / ``import()`` must be a string literal or a template
    literal without substitutions; any other expression is listed as unresolved
    (``"computed"``) by its source text.  ``.js .jsx .mjs .cjs .ts .tsx .mts .cts`` files
    are scanned (``.mts`` / ``.cts`` with the TypeScript grammar).

Resolution (the reasons of unresolved imports are in :class:`DependencyGraph`)
    * Relative specifiers (``./``, ``../``, ``.``, ``..``) resolve against the importer's
      folder: the exact file, then the specifier plus each of ``.ts .tsx .d.ts .js .jsx
      .mjs .cjs .mts .cts .d.mts .d.cts``, then a folder's ``package.json`` entry point
      (``main``, then ``types`` / ``typings``, as dependency-cruiser does), then
      ``<dir>/index.<ext>`` in the same order.  A JavaScript extension may name the
      TypeScript source or its declaration file: ``./a.js`` -> ``a.ts``, ``a.tsx`` or
      ``a.d.ts``; ``.jsx`` -> ``.tsx``; ``.mjs`` -> ``.mts`` / ``.d.mts``; ``.cjs`` ->
      ``.cts`` / ``.d.cts`` (TypeScript importers try that first, as ``tsc`` does).  An
      exact match on a non-source file (``./styles.css``, ``./data.json``) satisfies the
      import without an edge.  A path leaving the repository is ``"outside_repository"``.
    * Bare specifiers, in order: the nearest ``tsconfig.json`` (else ``jsconfig.json``) at
      or above the importer's folder, following relative ``extends`` --
      ``compilerOptions.paths`` (an exact key, else the ``*`` pattern with the longest
      prefix, TypeScript's rule; targets relative to ``baseUrl``, default the folder of the
      config defining ``paths``), then ``baseUrl``; ``#`` specifiers through the
      ``imports`` of the importer's nearest ``package.json``; a workspace package's name
      (or the importer's own package's, Node's self-reference) through its ``exports``,
      else its entry point (``main`` / ``types`` / ``typings``, then ``index``) or, with a
      subpath, the file under its folder; ``exports`` / ``imports`` conditions follow the
      import's kind (``require()`` and ``import x = require()`` take ``require``, the
      others ``import``).  ``package.json`` handling is in
      :mod:`orchestrator.agents.lib.depgraph.packages`.  Node built-ins (``fs``,
      ``node:fs``) and URLs are external; any other bare specifier is a ``"package"`` not
      in the repository.  A specifier that matched a ``paths`` pattern (other than a lone
      ``*``), an ``imports`` key or a workspace package but no file is ``"not_found"``.
    * A ``package.json`` target in build output (``./dist/index.js``, usually absent from
      a checkout or skipped as build output) resolves to its source: a target under the
      package's tsconfig ``outDir`` maps to ``rootDir`` (default: the package's ``src/``
      when it exists, else the package folder); without an ``outDir``, a first folder
      named ``dist``, ``build``, ``lib``, ``out`` or ``esm`` / ``cjs`` maps to ``src/``.
      ``.js`` then names ``.ts`` as above, and ``.d.ts`` the ``.ts`` source.
"""

from __future__ import annotations

import posixpath
import re
import threading
from collections.abc import Iterable
from typing import Any

from orchestrator.agents.lib.depgraph.graph import (
    COMPUTED,
    NOT_FOUND,
    OUTSIDE_REPOSITORY,
    PACKAGE,
)
from orchestrator.agents.lib.depgraph.packages import MAIN_FIELDS, _Package, _Packages, _targets
from orchestrator.agents.lib.depgraph.repo import _Repo
from orchestrator.agents.lib.depgraph.tsconfig import _config_for, _match_paths

# Probing order for extension-less JS/TS specifiers (TypeScript's, then Node's, then the
# module-format variants).
_PROBE_EXTS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts", ".d.mts",
               ".d.cts")
# A JavaScript-extension specifier may name a TypeScript source or declaration file.
_TS_FOR_JS = {".js": (".ts", ".tsx", ".d.ts"), ".jsx": (".tsx",), ".mjs": (".mts", ".d.mts"),
              ".cjs": (".cts", ".d.cts")}
_TS_SUFFIXES = (".ts", ".tsx", ".mts", ".cts")
# Node's built-in modules (``require("module").builtinModules`` of Node 20, top-level names).
_NODE_BUILTINS = frozenset({
    "assert", "async_hooks", "buffer", "child_process", "cluster", "console", "constants",
    "crypto", "dgram", "diagnostics_channel", "dns", "domain", "events", "fs", "http", "http2",
    "https", "inspector", "module", "net", "os", "path", "perf_hooks", "process", "punycode",
    "querystring", "readline", "repl", "stream", "string_decoder", "sys", "timers", "tls",
    "trace_events", "tty", "url", "util", "v8", "vm", "wasi", "worker_threads", "zlib"})
# Build-output folders a package.json target may name when no tsconfig ``outDir`` says.
_OUTPUT_DIRS = frozenset({"dist", "build", "lib", "out", "esm", "cjs"})
_REFERENCE = re.compile(r"""^///\s*<reference\s+(path|types)\s*=\s*(["'])(.*?)\2""")
_COMPUTED_MAX = 120

_QUERY_SOURCE = """
(import_statement source: (string) @s)
(export_statement source: (string) @s)
(call_expression function: (import) arguments: (arguments) @a)
(call_expression function: (identifier) @f arguments: (arguments) @q (#eq? @f "require"))
"""
_TS_EXTRA_QUERY = "(import_require_clause source: (string) @r)"
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


# An extracted specifier: (text, kind) -- kind is "import" (import / export statements,
# ``import()``, references), "require" (``require()``, ``import x = require()``: package.json
# conditions then hold ``require`` instead of ``import``) or "computed" (an expression's
# source text).
_JsImport = tuple[str, str]


def _js_imports(
    files: list[tuple[str, bytes | str]], errors: dict[str, str]
) -> Iterable[tuple[str, list[_JsImport]]]:
    out: list[tuple[str, list[_JsImport]]] = []
    if not files:
        return out
    import tree_sitter

    parsers: dict[str, tuple[Any, Any]] = {}
    for rel, data in files:
        suffix = posixpath.splitext(rel)[1]
        kind = ("tsx" if suffix == ".tsx" else "ts" if suffix in _TS_SUFFIXES else "js")
        if kind not in parsers:
            lang, query = _language(kind)
            parsers[kind] = (tree_sitter.Parser(lang), query)
        parser, query = parsers[kind]
        tree = parser.parse(data if isinstance(data, bytes) else data.encode())
        root = tree.root_node
        if root.has_error:
            errors[rel] = _ts_error(root)
        captures = tree_sitter.QueryCursor(query).captures(root)
        specs: list[_JsImport] = []
        for name, kind in (("s", "import"), ("r", "require")):
            for node in captures.get(name, ()):
                spec = _string_value(node)
                if spec is not None:
                    specs.append((spec, kind))
        for name, kind in (("a", "import"), ("q", "require")):
            for node in captures.get(name, ()):
                first = next((c for c in node.named_children if c.type != "comment"), None)
                if first is None:
                    continue
                spec = (_string_value(first) if first.type in ("string", "template_string")
                        else None)
                if spec is not None:
                    specs.append((spec, kind))
                else:
                    text = first.text.decode("utf-8", "replace")
                    specs.append((text if len(text) <= _COMPUTED_MAX
                                  else text[:_COMPUTED_MAX] + "...", "computed"))
        for child in root.children:  # triple-slash directives: only before the first statement
            if child.type != "comment":
                break
            match = _REFERENCE.match(child.text.decode("utf-8", "replace"))
            if match:
                kind_of, spec = match.group(1), match.group(3)
                if kind_of == "path" and not spec.startswith(("./", "../", "/")):
                    spec = "./" + spec
                specs.append((spec, "import"))
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
    repo: _Repo, rel: str, specs: list[_JsImport], out: set[str], missing: dict[str, str],
    errors: dict[str, str],
) -> None:
    folder = rel.rpartition("/")[0]
    is_ts = rel.endswith(_TS_SUFFIXES)
    cache = repo.js_cache
    for spec, kind in specs:
        if kind == "computed":
            missing[spec] = COMPUTED
            continue
        key = (folder, is_ts, kind, spec)
        found = cache.get(key)
        if found is None:
            found = cache[key] = _resolve_js_spec(repo, folder, is_ts, spec, errors, kind)
        target, reason = found
        if reason is not None:
            missing[spec] = reason
        elif target:
            out.add(target)


# (file, None): an edge; ("", None): satisfied without an edge; ("", reason): unresolved.
_Resolution = tuple[str, str | None]


def _resolve_js_spec(
    repo: _Repo, folder: str, is_ts: bool, spec: str, errors: dict[str, str],
    kind: str = "import",
) -> _Resolution:
    """What ``spec`` names from a file of ``folder`` (the module docstring's rules)."""
    if not spec:
        return "", NOT_FOUND
    if spec in (".", "..") or spec.startswith(("./", "../")):
        joined = posixpath.normpath(posixpath.join(folder, spec))
        return _probe_path(repo, joined, spec.endswith("/"), is_ts)
    if spec.startswith("/"):
        root = repo.root.as_posix()
        if spec == root or spec.startswith(root + "/"):
            return _probe_path(repo, posixpath.normpath(spec[len(root) + 1:] or "."),
                               False, is_ts)
        return "", OUTSIDE_REPOSITORY
    head = spec.split("/", 1)[0]
    if ":" in head:
        return "", None  # "node:fs", a URL: external
    config = _config_for(repo, folder, errors)
    matched = False
    if config is not None:
        match = _match_paths(config, spec)
        if match is not None:
            pattern, targets, star = match
            matched = pattern != "*"
            base = config.target_base()
            for target in targets:
                candidate = posixpath.normpath(posixpath.join(base, target.replace("*", star, 1)))
                if candidate == ".." or candidate.startswith("../"):
                    continue
                found = _probe(repo, "" if candidate == "." else candidate, False, is_ts)
                if found is not None:
                    return found, None
        if config.base_url is not None:
            candidate = posixpath.normpath(posixpath.join(config.base_url, spec))
            if not (candidate == ".." or candidate.startswith("../")):
                found = _probe(repo, "" if candidate == "." else candidate, False, is_ts)
                if found is not None:
                    return found, None
    packages = _packages(repo, errors)
    if spec.startswith("#"):
        owner = packages.owner(folder)
        if owner is not None:
            hit, targets = _targets(owner.imports(), spec, kind)
            if hit:
                return _package_targets(repo, owner, targets, is_ts, errors, folder, kind)
        return "", NOT_FOUND
    named = packages.named(spec, folder)
    if named is not None:
        return _package_entry(repo, *named, is_ts, errors, kind)
    if matched:
        return "", NOT_FOUND
    if head in _NODE_BUILTINS:
        return "", None
    return "", PACKAGE


def _packages(repo: _Repo, errors: dict[str, str]) -> _Packages:
    if repo.packages is None:
        repo.packages = _Packages(repo)
    packages: _Packages = repo.packages
    errors.update(packages.errors)
    return packages


def _package_entry(
    repo: _Repo, package: _Package, subpath: str, is_ts: bool, errors: dict[str, str],
    kind: str,
) -> _Resolution:
    """A workspace package's ``subpath`` (``"."`` or ``"./x"``): exports, else its files."""
    exports = package.exports()
    if exports is not None:
        hit, targets = _targets(exports, subpath, kind)
        if not hit:
            return "", NOT_FOUND  # not exported
        return _package_targets(repo, package, targets, is_ts, errors, package.folder, kind)
    base = posixpath.normpath(posixpath.join(package.folder, subpath))
    base = "" if base == "." else base
    found = _probe(repo, base, False, is_ts)
    if found is None and subpath != ".":
        found = _from_output(repo, package, base, is_ts, errors)
    return (found, None) if found is not None else ("", NOT_FOUND)


def _package_targets(
    repo: _Repo, package: _Package, targets: list[str], is_ts: bool, errors: dict[str, str],
    folder: str, kind: str,
) -> _Resolution:
    """The first of an exports / imports entry's targets that is a file (or its source)."""
    for target in targets:
        if target.startswith("./"):
            candidate = posixpath.normpath(posixpath.join(package.folder, target))
            if candidate == ".." or candidate.startswith("../"):
                continue
            candidate = "" if candidate == "." else candidate
            found = _probe(repo, candidate, False, is_ts)
            if found is None:
                found = _from_output(repo, package, candidate, is_ts, errors)
            if found is not None:
                return found, None
        elif not target.startswith(("/", "#", "../")) and target:  # imports -> a package
            resolved = _resolve_js_spec(repo, folder, is_ts, target, errors, kind)
            if resolved[1] != NOT_FOUND:
                return resolved
    return "", NOT_FOUND


def _from_output(
    repo: _Repo, package: _Package, candidate: str, is_ts: bool, errors: dict[str, str]
) -> str | None:
    """The source file of ``candidate``, a path in the package's build output."""
    config = _config_for(repo, package.folder, errors)
    prefix = package.folder + "/" if package.folder else ""
    out_dir = config.out_dir if config is not None else None
    if out_dir is not None and (candidate + "/").startswith(out_dir + "/" if out_dir else ""):
        rest = candidate[len(out_dir) + 1:] if out_dir else candidate
        root_dir = config.root_dir if config is not None else None
        if root_dir is None:
            src = prefix + "src/"
            root_dir = src[:-1] if any(f.startswith(src) for f in repo.sources) else package.folder
    else:
        first, _, rest = candidate[len(prefix):].partition("/")
        if first not in _OUTPUT_DIRS:
            return None
        root_dir = prefix + "src"
    for declaration, source in ((".d.ts", ".ts"), (".d.mts", ".mts"), (".d.cts", ".cts")):
        if rest.endswith(declaration):
            rest = rest[:-len(declaration)] + source
            break
    base = posixpath.join(root_dir, rest) if rest else root_dir
    return _probe(repo, base, False, is_ts)


def _probe_path(repo: _Repo, joined: str, dir_only: bool, is_ts: bool) -> _Resolution:
    """A normalized repository-relative path (may climb out) probed as a module."""
    if joined == ".." or joined.startswith("../"):
        return "", OUTSIDE_REPOSITORY
    found = _probe(repo, "" if joined == "." else joined, dir_only, is_ts)
    return (found, None) if found is not None else ("", NOT_FOUND)


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
    if base in repo.package_dirs:
        main = _main_entry(repo, base, is_ts)
        if main is not None:
            return main
    index = base + "/index" if base else "index"
    for candidate_ext in _PROBE_EXTS:
        if index + candidate_ext in sources:
            return index + candidate_ext
    return None


def _main_entry(repo: _Repo, folder: str, is_ts: bool) -> str | None:
    """The file a folder's package.json ``main`` (or ``types`` / ``typings``) names."""
    package = _packages(repo, {}).by_folder.get(folder)
    if package is None:
        return None
    for name in MAIN_FIELDS:
        target = package.data.get(name)
        if not isinstance(target, str) or not target.strip():
            continue
        candidate = posixpath.normpath(posixpath.join(folder, target))
        if candidate == ".." or candidate.startswith("../") or candidate in ("", ".", folder):
            continue
        found = _probe(repo, candidate, False, is_ts)
        if found is None:
            found = _from_output(repo, package, candidate, is_ts, {})
        if found:
            return found
    return None

"""Check Markdown API docs (``parallel_docs``' output) against griffe's static view of a package.

The package is loaded with griffe without importing it (``allow_inspection=False``); the docs
are parsed from their headings and signature blocks. :func:`check` answers which public names
users can import have no heading (coverage) and which documented signatures differ from
griffe's (parameter names, kinds, annotations and defaults, return types, ``async``, every
``@overload``; attribute annotations and values).

**The public API, per public module** (a module is public when no part of its dotted name below
the top-level package starts with ``_``; its page is ``<module>.md``):

* ``__all__`` when the module has one: every name listed (a name griffe cannot find is listed in
  :attr:`Report.unknown`, not counted; a submodule is not counted: it has its own page).
* else its public names (not ``_x``) defined there, and the names it re-exports: imported from a
  private module of the package (``from ._impl import X``), with a redundant alias
  (``from a import x as x``), by a wildcard import, or, in a package's ``__init__``, from any
  module of the package. Other imports (``from typing import Any``, ``from .text import Text``
  in a plain module) are not the module's API. A module that uses the redundant-alias idiom
  marks its re-exports with it: its other imports are its own (griffe's and pyright's
  convention; anyio's ``__init__`` imports its lazy-import helpers without ``as``). Names
  imported only under ``if TYPE_CHECKING:`` do not exist at run time: never re-exports. An
  empty ``__all__`` as griffe reads it (``[...] + list(X)`` is unreadable) counts as none.
  A re-export griffe cannot follow (stdlib, third party, a compiled module) counts for
  coverage only: any heading will do, no signature is demanded.
* Module attributes count when listed in ``__all__``, or, without ``__all__``, when they have a
  docstring, an annotation or an ``ALL_CAPS`` name, or are a type alias (``TypeVar`` and the
  like excepted). Code under ``if __name__ == "__main__":`` is not API.
* For each class counted: its public methods (not ``_x``, not inherited), its properties, its
  annotated class-level names (fields of dataclasses, NamedTuples, pydantic models; ClassVars)
  and its attributes that have a docstring. Other attributes are checked when documented, not counted.
  Nested classes are not counted.

**Expected signatures** ("as griffe renders them"; both sides are normalised with
``ast.unparse``, so whitespace, quotes and a quoted annotation do not matter):

* function ``def f(...) -> R`` (``async def`` for coroutines); an overloaded one lists every
  overload (``@overload`` then ``def``) before the implementation. Methods are compared without
  their first parameter (``self``/``cls``) unless static; other decorators are ignored.
* class: its constructor ``Name(...)``: ``__init__``'s parameters without ``self`` (griffe adds
  the dataclass one); a NamedTuple's fields; a pydantic model's fields, keyword-only, a
  ``Field(default=x)`` default shown as ``x``, a ``default_factory=f`` as ``f()`` (as griffe does
  for dataclasses). A class with its own ``__new__`` and no ``__init__`` of its own: ``__new__``'s
  parameters without ``cls`` (``Url(scheme=None, ...)``; ``CapacityLimiter(total_tokens)``).
  A class without bases and ``__init__``: ``Name()``. Not compared when the constructor comes
  from outside the package.
* attribute ``name: T = value`` (``name: T``, ``name = value``; ``ClassVar[T]`` is ``T``, as
  griffe has it); an instance attribute's value is not compared; a property is ``name: T`` (its
  return type); a ``@property def name(self) -> T`` block is accepted as the same. A value
  whose text (``ast.unparse``) is longer than :data:`VALUE_LIMIT` characters must be shown as
  ``...`` (docs elide long tables), unless the attribute is a type alias (``X: TypeAlias = ...``,
  ``type X = ...``): an alias's value is its meaning and is compared in full.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["VALUE_LIMIT", "Report", "check", "expected_api", "parse_docs"]

#: Longest attribute value (characters of its ``ast.unparse`` text) the docs show in full.
VALUE_LIMIT = 200

_CAPS = re.compile(r"^[A-Z][A-Z0-9_]*$")
_TYPEVAR_CALLS = ("TypeVar(", "ParamSpec(", "TypeVarTuple(")
_NAMEDTUPLE = {"typing.NamedTuple", "typing_extensions.NamedTuple", "NamedTuple"}
_PYDANTIC = {"pydantic.BaseModel", "pydantic.main.BaseModel", "BaseModel"}
_VARIADIC = {"variadic positional", "variadic keyword"}


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # griffe's ParameterKind values: "positional or keyword", "keyword-only", ...
    annotation: str | None
    default: str | None

    def __str__(self) -> str:
        text = {"variadic positional": "*", "variadic keyword": "**"}.get(self.kind, "") + self.name
        if self.annotation:
            text += f": {self.annotation}"
        if self.default is not None:
            text += f" = {self.default}"
        return text + {"positional-only": " /", "keyword-only": " (kw)"}.get(self.kind, "")


@dataclass(frozen=True)
class FuncSig:
    is_async: bool
    params: tuple[Param, ...]
    returns: str | None
    receiver: bool = False  # its first parameter is self/cls: the docs may leave it out

    def without_receiver(self) -> FuncSig:
        return FuncSig(self.is_async, self.params[1:], self.returns) if self.receiver else self

    def __str__(self) -> str:
        text = f"{'async ' if self.is_async else ''}({', '.join(map(str, self.params))})"
        return text + (f" -> {self.returns}" if self.returns else "")


@dataclass(frozen=True)
class Signature:
    """What a heading's code block says: a function (overloads, then the implementation), a
    constructor (``params``) or an attribute (``annotation``, ``value``)."""

    kind: str  # "function" | "class" | "attribute"
    overloads: tuple[FuncSig, ...] = ()
    function: FuncSig | None = None
    annotation: str | None = None
    value: str | None = None
    value_checked: bool = True  # False: an instance attribute's or a property's value
    value_elided: bool = False  # True: the value is longer than VALUE_LIMIT; docs show ``...``

    def __str__(self) -> str:
        if self.kind == "attribute":
            return f"{': ' + self.annotation if self.annotation else ''}" \
                   f"{' = ' + self.value if self.value is not None else ''}" or "(bare)"
        parts = [f"@overload {o}" for o in self.overloads]
        return "; ".join([*parts, str(self.function)])


def normalize(text: Any, *, annotation: bool = False) -> str | None:
    """An expression as ``ast.unparse`` writes it (whitespace-insensitive); a string annotation
    is unquoted when it parses (``"int | None"`` is ``int | None``)."""
    if text is None:
        return None
    source = " ".join(str(text).split())
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        return source
    if annotation:
        node = _Unquote().visit(node)
    return ast.unparse(node)


class _Unquote(ast.NodeTransformer):
    """Forward references (``'Console'``, ``Optional['Console']``) as griffe renders them,
    unquoted; ``Literal['x']`` keeps its strings."""

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if ast.unparse(node.value).rsplit(".", 1)[-1] == "Literal":
            return node
        return self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str):
            try:
                return self.visit(ast.parse(node.value.strip(), mode="eval").body)
            except SyntaxError:
                return node
        return node


def _griffe_params(parameters: Any, *, drop_first: bool) -> tuple[Param, ...]:
    params = list(parameters)[1 if drop_first else 0:]
    return tuple(Param(p.name, str(p.kind.value), normalize(p.annotation, annotation=True),
                       None if str(p.kind.value) in _VARIADIC else normalize(p.default))
                 for p in params)


def _griffe_func(func: Any, *, method: bool) -> FuncSig:
    receiver = method and "staticmethod" not in func.labels and bool(list(func.parameters))
    return FuncSig("async" in func.labels, _griffe_params(func.parameters, drop_first=False),
                   normalize(func.returns, annotation=True), receiver)


def _ast_params(args: ast.arguments) -> list[Param]:
    out: list[Param] = []
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = "positional-only" if index < len(args.posonlyargs) else "positional or keyword"
        out.append(Param(arg.arg, kind, _ann(arg.annotation), _expr(default)))
    if args.vararg:
        out.append(Param(args.vararg.arg, "variadic positional", _ann(args.vararg.annotation), None))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append(Param(arg.arg, "keyword-only", _ann(arg.annotation), _expr(default)))
    if args.kwarg:
        out.append(Param(args.kwarg.arg, "variadic keyword", _ann(args.kwarg.annotation), None))
    return out


def _ann(node: ast.expr | None) -> str | None:
    return None if node is None else normalize(ast.unparse(node), annotation=True)


def _unwrap_classvar(annotation: str | None) -> str | None:
    """``ClassVar[T]`` as griffe renders it: ``T``."""
    match = re.fullmatch(r"(?:typing\.)?ClassVar\[(.*)\]", annotation or "")
    return normalize(match.group(1), annotation=True) if match else annotation


def _expr(node: ast.expr | None) -> str | None:
    return None if node is None else normalize(ast.unparse(node))


_DEF_START = re.compile(r"^\s*(@|async\s+def\s|def\s)")


def parse_block(kind: str, code: str, name: str) -> Signature | None:
    """The signature a code block states, for a heading of ``kind``; None if it says none
    (or cannot be parsed)."""
    lines = [line for line in code.splitlines() if line.strip()]
    if not lines:
        return None
    if kind == "class":
        text = " ".join(line.strip() for line in lines if not line.lstrip().startswith("@"))
        text = text.rstrip(":")
        match = re.match(rf"^(?:class\s+)?{re.escape(name)}\s*(\(.*\))\s*$", text)
        if not match:
            return None
        try:
            node = ast.parse(f"def {name}{match.group(1)}: ...").body[0]
        except SyntaxError:
            return None
        assert isinstance(node, ast.FunctionDef)
        return Signature("class", function=FuncSig(False, tuple(_ast_params(node.args)), None))
    if not any(_DEF_START.match(line) and "def" in line.split("(")[0] for line in lines):
        try:
            node = ast.parse(" ".join(line.strip() for line in lines)).body[0]
        except (SyntaxError, IndexError):
            return None
        if isinstance(node, ast.AnnAssign):
            return Signature("attribute", annotation=_unwrap_classvar(_ann(node.annotation)),
                             value=_expr(node.value))
        if isinstance(node, ast.Assign):
            return Signature("attribute", value=_expr(node.value))
        if isinstance(node, ast.TypeAlias if hasattr(ast, "TypeAlias") else ()):
            return Signature("attribute", value=_expr(node.value))  # pragma: no cover (3.12+)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Name):
            return Signature("attribute")
        return None
    # functions: group decorators with the def they decorate; a def may span lines
    chunks: list[tuple[list[str], str]] = []
    decorators: list[str] = []
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("@") and (current is None or _balanced(current)):
            if current is not None:
                chunks.append((decorators, current))
                decorators, current = [], None
            decorators.append(stripped[1:])
        elif re.match(r"^(async\s+)?def\s", stripped) and (current is None or _balanced(current)):
            if current is not None:
                chunks.append((decorators, current))
                decorators = []
            current = stripped
        elif current is not None:
            current += " " + stripped
    if current is not None:
        chunks.append((decorators, current))
    overloads: list[FuncSig] = []
    implementation: FuncSig | None = None
    for decos, text in chunks:
        try:
            node = ast.parse(text.rstrip().rstrip(":") + ": ...").body[0]
        except SyntaxError:
            return None
        assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        names = {d.split("(")[0].rsplit(".", 1)[-1] for d in decos}
        sig = FuncSig(isinstance(node, ast.AsyncFunctionDef), tuple(_ast_params(node.args)),
                      _ann(node.returns))
        if names & {"property", "cached_property"}:
            return Signature("attribute", annotation=sig.returns, value=None)
        if "overload" in names:
            overloads.append(sig)
        else:
            implementation = sig
    return Signature("function", tuple(overloads), implementation)


def _balanced(text: str) -> bool:
    return text.count("(") <= text.count(")")


# --------------------------------------------------------------------------- the docs


@dataclass
class Heading:
    kind: str  # "class" | "function" | "attribute"
    code: str | None  # the fenced python block right after it


def parse_docs(docs_dir: str | Path) -> dict[str, dict[str, Heading]]:
    """Page (module name) -> key (``name`` or ``Class.member``) -> heading, for every
    ``<module>.md`` in ``docs_dir`` (``index.md`` aside). Headings inside code blocks are not
    headings; backslash escapes are dropped."""
    pages: dict[str, dict[str, Heading]] = {}
    for path in sorted(Path(docs_dir).glob("*.md")):
        if path.name == "index.md":
            continue
        pages[path.stem] = parse_page(path.read_text(encoding="utf-8"))
    return pages


def parse_page(text: str) -> dict[str, Heading]:
    lines = text.splitlines()
    found: dict[str, Heading] = {}
    fence: str | None = None
    for index, line in enumerate(lines):
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        if match := re.match(r"^ {0,3}(`{3,}|~{3,})", line):
            fence = match.group(1)
            continue
        parsed = _heading(line.replace("\\", ""))
        if parsed is None:
            continue
        key, kind = parsed
        found.setdefault(key, Heading(kind, _block_after(lines, index + 1)))
    return found


def _heading(line: str) -> tuple[str, str] | None:
    if match := re.match(r"^## +class +([A-Za-z_]\w*)", line):
        return match.group(1), "class"
    if match := re.fullmatch(r"## +([A-Za-z_]\w*)(\(\))?\s*", line):
        return match.group(1), "function" if match.group(2) else "attribute"
    if match := re.fullmatch(r"### +([A-Za-z_]\w*)\.([A-Za-z_]\w*)(\(\))?\s*", line):
        return f"{match.group(1)}.{match.group(2)}", "function" if match.group(3) else "attribute"
    return None


def _block_after(lines: list[str], start: int) -> str | None:
    index = start
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines) or not re.match(r"^```python\s*$", lines[index]):
        return None
    body: list[str] = []
    for line in lines[index + 1:]:
        if line.startswith("```"):
            return "\n".join(body)
        body.append(line)
    return None


# --------------------------------------------------------------------------- the package


@dataclass
class Expected:
    page: str
    key: str
    kind: str  # "class" | "function" | "attribute" | "property"
    signature: Signature | None  # None: not compared (from outside the package)
    required: bool


def _main_ranges(filepath: Path | None) -> list[tuple[int, int]]:
    """Line ranges of ``if __name__ == "__main__":`` blocks at a module's top level."""
    if filepath is None or not Path(filepath).is_file():
        return []
    try:
        tree = ast.parse(Path(filepath).read_bytes())
    except (SyntaxError, ValueError):
        return []
    ranges = []
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            sides = [node.test.left, *node.test.comparators]
            texts = {ast.unparse(s) for s in sides}
            if texts == {"__name__", "'__main__'"}:
                ranges.append((node.lineno, node.end_lineno or node.lineno))
    return ranges


def _typing_only(test: ast.expr) -> bool:
    return ast.unparse(test).rsplit(".", 1)[-1] == "TYPE_CHECKING"


def _imports(body: list[ast.stmt], typing_only: bool = False
             ) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, typing_only))
        elif isinstance(node, ast.If):
            found += _imports(node.body, typing_only or _typing_only(node.test))
            found += _imports(node.orelse, typing_only)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody,
                         *[h.body for h in node.handlers]):
                found += _imports(part, typing_only)
    return found


def _import_facts(filepath: Path | None) -> tuple[set[str], set[str]]:
    """Names imported at run time as ``from a import x as x`` (the re-export convention), and
    names imported only under ``if TYPE_CHECKING:``."""
    if filepath is None or not Path(filepath).is_file():
        return set(), set()
    try:
        tree = ast.parse(Path(filepath).read_bytes())
    except (SyntaxError, ValueError):
        return set(), set()
    imports = _imports(tree.body)
    bound = {node: {(a.asname or a.name).split(".")[0] for a in node.names} for node, _ in imports}
    runtime = set().union(*(bound[n] for n, t in imports if not t))
    redundant = {a.asname for node, t in imports if not t and isinstance(node, ast.ImportFrom)
                 for a in node.names if a.asname and a.asname == a.name}
    typing = set().union(*(bound[n] for n, t in imports if t)) - runtime
    return redundant, typing


def _is_private_path(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split(".")[1:])


def _base_paths(cls: Any) -> set[str]:
    out = set()
    for base in cls.bases:
        out.add(getattr(base, "canonical_path", None) or str(base))
        out.add(str(base))
    return out


def _class_kind(cls: Any, seen: frozenset[str] = frozenset()) -> str:
    """"pydantic", "namedtuple" or "" for a class, following in-package bases."""
    paths = _base_paths(cls)
    if paths & _PYDANTIC:
        return "pydantic"
    if paths & _NAMEDTUPLE:
        return "namedtuple"
    for base in _resolved_bases(cls):
        if base.path not in seen:
            kind = _class_kind(base, seen | {cls.path})
            if kind:
                return kind
    return ""


def _resolved_bases(cls: Any) -> list[Any]:
    try:
        return [b for b in cls.resolved_bases if getattr(b, "is_class", False)]
    except Exception:  # noqa: BLE001 - griffe raises various errors on odd bases
        return []


def _function_ranges(cls: Any) -> list[tuple[int, int]]:
    return [(m.lineno, m.endlineno or m.lineno) for m in cls.members.values()
            if not m.is_alias and m.is_function and m.lineno]


def _is_declared(cls: Any, attr: Any) -> bool:
    """An annotated name at class level (not ``self.x: T`` in a method); ClassVars too."""
    if attr.annotation is None or "property" in attr.labels or not attr.lineno:
        return False
    return not any(a <= attr.lineno <= b for a, b in _function_ranges(cls))


def _is_field(cls: Any, attr: Any) -> bool:
    """A declared name that is an instance's field (griffe unwraps ``ClassVar[T]`` to ``T``
    and labels it a class attribute only)."""
    return _is_declared(cls, attr) and "instance-attribute" in attr.labels


def _fields(cls: Any, seen: frozenset[str] = frozenset()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for base in reversed(_resolved_bases(cls)):
        if base.path not in seen:
            out.update(_fields(base, seen | {cls.path}))
    for name, member in cls.members.items():
        if not member.is_alias and member.is_attribute and not name.startswith("_") \
                and _is_field(cls, member):
            out[name] = member
    return out


def _field_default(value: Any) -> str | None:
    """A pydantic field's default as the constructor shows it."""
    text = normalize(value)
    if text is None:
        return None
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return text
    if isinstance(node, ast.Call) and ast.unparse(node.func).rsplit(".", 1)[-1] == "Field":
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if "default" in keywords:
            default = keywords["default"]
        elif node.args:
            default = node.args[0]
        elif "default_factory" in keywords:
            return f"{ast.unparse(keywords['default_factory'])}()"
        else:
            return None
        if isinstance(default, ast.Constant) and default.value is Ellipsis:
            return None
        return ast.unparse(default)
    return text


def _constructor(cls: Any) -> Signature | None:
    own_new = cls.members.get("__new__")
    if "__init__" not in cls.members and own_new is not None and not own_new.is_alias \
            and own_new.is_function:
        return Signature("class", function=FuncSig(False, _griffe_params(
            own_new.parameters, drop_first=bool(list(own_new.parameters))), None))
    kind = _class_kind(cls)
    if kind in ("pydantic", "namedtuple"):
        fields = _fields(cls)
        param_kind = "keyword-only" if kind == "pydantic" else "positional or keyword"
        default = _field_default if kind == "pydantic" else normalize
        params = tuple(Param(name, param_kind, normalize(f.annotation, annotation=True),
                             default(f.value)) for name, f in fields.items())
        return Signature("class", function=FuncSig(False, params, None))
    try:
        has_init = "__init__" in cls.all_members
    except Exception:  # noqa: BLE001
        has_init = "__init__" in cls.members
    if has_init:
        init = cls.all_members["__init__"]
        if init.is_alias and not init.resolved:
            return None
        return Signature("class", function=FuncSig(False, _griffe_params(
            init.parameters, drop_first=bool(list(init.parameters))), None))
    if all(str(b) == "object" for b in cls.bases):
        return Signature("class", function=FuncSig(False, (), None))
    return None


def _function_signature(func: Any, *, method: bool) -> Signature:
    overloads = tuple(_griffe_func(o, method=method) for o in (func.overloads or ()))
    return Signature("function", overloads, _griffe_func(func, method=method))


def _value_length(value: Any) -> int:
    text = str(value).strip()
    try:
        return len(ast.unparse(ast.parse(text, mode="eval")))
    except SyntaxError:
        return len(text)


def _attribute_signature(attr: Any, *, with_value: bool) -> Signature:
    annotation = normalize(attr.annotation, annotation=True)
    alias = attr.kind.value == "type alias" or (annotation or "").rsplit(".", 1)[-1] == "TypeAlias"
    elided = with_value and attr.value is not None and not alias \
        and _value_length(attr.value) > VALUE_LIMIT
    return Signature("attribute", annotation=annotation,
                     value=normalize(attr.value) if with_value else None,
                     value_checked=with_value, value_elided=elided)


def _class_entries(page: str, name: str, cls: Any, required: bool) -> list[Expected]:
    out = [Expected(page, name, "class", _constructor(cls), required)]
    for member_name, member in cls.members.items():
        if member.is_alias or member_name.startswith("_"):
            continue
        key = f"{name}.{member_name}"
        if member.is_function:
            out.append(Expected(page, key, "function", _function_signature(member, method=True),
                                required))
        elif member.is_attribute:
            if "property" in member.labels:
                out.append(Expected(page, key, "property",
                                    Signature("attribute", annotation=normalize(
                                        member.annotation, annotation=True),
                                              value_checked=False), required))
                continue
            class_level = "class-attribute" in member.labels or _is_declared(cls, member)
            counted = _is_declared(cls, member) or bool(member.docstring)
            out.append(Expected(page, key, "attribute",
                                _attribute_signature(member, with_value=class_level),
                                required and counted))
    return out


def _module_attribute_counted(name: str, attr: Any, exported: bool) -> bool:
    if exported:
        return True
    value = str(attr.value) if attr.value is not None else ""
    if value.startswith(_TYPEVAR_CALLS) or ".TypeVar(" in value:
        return False
    annotation = str(attr.annotation) if attr.annotation is not None else ""
    return bool(attr.docstring) or bool(annotation) or bool(_CAPS.match(name)) \
        or "TypeAlias" in annotation or attr.kind.value == "type alias"


def expected_api(package_dir: str | Path) -> tuple[list[Expected], list[str]]:
    """The public API of the package in ``package_dir`` (loaded by griffe, never imported):
    one entry per name per page, and the ``__all__`` names griffe could not find."""
    import griffe

    folder = Path(package_dir).resolve()
    loader = griffe.GriffeLoader(search_paths=[str(folder.parent)], allow_inspection=False)
    package = loader.load(folder.name)
    loader.resolve_aliases(implicit=True, external=False)
    entries: list[Expected] = []
    unknown: list[str] = []
    top = folder.name

    def visit(module: Any) -> None:
        if not _is_private_path(module.path):
            entries.extend(_module_entries(module, top, unknown))
        for sub in module.modules.values():
            if not sub.is_alias:
                visit(sub)

    visit(package)
    return entries, unknown


def _module_entries(module: Any, top: str, unknown: list[str]) -> list[Expected]:
    page = module.path
    filepath = module.filepath if isinstance(module.filepath, Path) else None
    main = _main_ranges(filepath)
    redundant, typing_only = _import_facts(filepath)
    exports = [e if isinstance(e, str) else getattr(e, "name", str(e))
               for e in (module.exports or [])]
    explicit = bool(module.exports)
    names = list(dict.fromkeys(exports)) if explicit else list(module.members)
    out: list[Expected] = []
    for name in names:
        member = module.members.get(name)
        if member is None:
            unknown.append(f"{page}.{name}")
            continue
        lineno = member.alias_lineno if member.is_alias else member.lineno
        if lineno and any(a <= lineno <= b for a, b in main):
            continue
        if not explicit and name.startswith("_"):
            continue
        target = member
        if member.is_alias:
            target_path = member.target_path
            in_package = target_path == top or target_path.startswith(top + ".")
            reexport = explicit or member.wildcard_imported or name in redundant or (
                not redundant and name not in typing_only and in_package
                and (_is_private_path(target_path.rsplit(".", 1)[0]) or module.is_init_module))
            if not reexport:
                continue
            try:
                target = member.final_target
            except Exception:  # noqa: BLE001 - outside the package: coverage only
                out.append(Expected(page, name, "unknown", None, True))
                continue
        if target.is_module:
            continue
        if target.is_class:
            out.extend(_class_entries(page, name, target, True))
        elif target.is_function:
            out.append(Expected(page, name, "function",
                                _function_signature(target, method=False), True))
        elif target.is_attribute or target.kind.value == "type alias":
            counted = _module_attribute_counted(name, target, explicit)
            out.append(Expected(page, name, "attribute",
                                _attribute_signature(target, with_value=True), counted))
    return out


# --------------------------------------------------------------------------- the comparison


@dataclass
class Report:
    public: int = 0
    documented: int = 0
    missing: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    checked: int = 0  # signatures compared
    unknown: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return 100.0 * self.documented / self.public if self.public else 100.0

    def summary(self) -> str:
        lines = [f"coverage {self.documented}/{self.public} ({self.coverage:.1f}%), "
                 f"{len(self.mismatches)} signature mismatch(es) of {self.checked} compared"]
        lines += [f"  missing: {m}" for m in self.missing]
        lines += [f"  mismatch: {m}" for m in self.mismatches]
        return "\n".join(lines)


_HEADING_KINDS = {"class": {"class"}, "function": {"function"}, "attribute": {"attribute"},
                  "property": {"attribute", "function"}, "unknown": {"class", "function",
                                                                      "attribute"}}


def check(package_dir: str | Path, docs_dir: str | Path) -> Report:
    """Compare the docs in ``docs_dir`` with the public API of the package in ``package_dir``."""
    entries, unknown = expected_api(package_dir)
    pages = parse_docs(docs_dir)
    report = Report(unknown=unknown)
    for entry in entries:
        where = f"{entry.page}:{entry.key}"
        heading = pages.get(entry.page, {}).get(entry.key)
        if entry.required:
            report.public += 1
            if heading is None:
                report.missing.append(where)
                continue
            report.documented += 1
        elif heading is None:
            continue
        if heading.kind not in _HEADING_KINDS[entry.kind]:
            report.mismatches.append(f"{where}: {entry.kind}, documented as {heading.kind}")
            continue
        if entry.signature is None:
            continue
        report.checked += 1
        problem = compare(entry, heading)
        if problem:
            report.mismatches.append(f"{where}: {problem}")
    return report


def compare(entry: Expected, heading: Heading) -> str | None:
    """Why the documented signature differs from the expected one, or None."""
    expected = entry.signature
    assert expected is not None
    name = entry.key.rsplit(".", 1)[-1]
    documented = parse_block(expected.kind, heading.code, name) if heading.code else None
    if documented is None:
        return f"no parsable signature block (expected {expected})"
    if documented.kind != expected.kind:
        return f"expected {expected.kind} {expected}, documented {documented.kind} {documented}"
    if expected.kind == "attribute":
        want = (expected.annotation,
                "..." if expected.value_elided else
                expected.value if expected.value_checked else documented.value)
        if (documented.annotation, documented.value) != want:
            return f"expected {expected}, documented {documented}"
        return None
    if expected.kind == "class":
        if documented.function.params != expected.function.params:
            return f"constructor: expected {expected}, documented {documented}"
        return None
    if documented.function is None and not documented.overloads:
        return f"no def line (expected {expected})"
    if len(documented.overloads) != len(expected.overloads) or not all(
            _same(d, e) for d, e in zip((*documented.overloads, documented.function),
                                        (*expected.overloads, expected.function), strict=True)):
        return f"expected {expected}, documented {documented}"
    return None


def _same(documented: FuncSig | None, expected: FuncSig | None) -> bool:
    """Equal, a method's ``self``/``cls`` given or left out."""
    if documented is None or expected is None:
        return documented is expected
    def plain(sig: FuncSig) -> tuple:
        return sig.is_async, sig.params, sig.returns
    return plain(documented) in (plain(expected), plain(expected.without_receiver()))

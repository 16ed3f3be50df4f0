"""Signatures as they are written: functions, overloads, constructors, attributes.

Expressions come from griffe (``str(expr)``) and are re-spelled by :func:`ast.unparse`, so
quoting and spacing are the same whatever the source's style. A class's constructor is its
``__init__`` (own, or the first one in its method resolution order, as far as griffe resolves the
bases inside the package), its own ``__new__`` when it has no ``__init__`` of its own, the
``__init__`` griffe's dataclasses extension writes, or the fields (properties aside) of a
NamedTuple, an attrs class, a pydantic model or a TypedDict. A class whose constructor comes from
a base outside the package shows ``(*args, **kwargs)``.

An attribute's value is shown when its text (as :func:`ast.unparse` writes it) is at most
:data:`MAX_VALUE` characters long, else as ``...``: a 5,000-character token table helps no
reader. A type alias's value is its meaning and is always shown in full.
"""

from __future__ import annotations

import ast
import functools
import warnings

import griffe
from orchestrator.agents.lib.pyparse import PARSE_LOCK

__all__ = ["MAX_VALUE", "attribute_line", "class_kind", "constructor_line", "expr_text", "function_lines",
           "in_class_body", "is_property"]

#: Characters of an attribute's value shown; a longer value is shown as ``...``.
MAX_VALUE = 200
#: griffe's labels of a property (``functools.cache`` alone labels a function ``cached``: still
#: a function).
_PROPERTY_LABELS = {"property", "writable", "deletable"}
_ATTRS_DECORATORS = {"attr.s", "attr.attrs", "attr.define", "attr.frozen", "attr.mutable",
                     "attrs.define", "attrs.frozen", "attrs.mutable", "attr.dataclass"}
_FIELD_CALLS = {"field", "attrib", "ib", "Field", "attr.ib", "attrs.field", "attr.attrib",
                "dataclasses.field", "pydantic.Field"}


@functools.lru_cache(maxsize=65536)
def _respell(text: str) -> str:
    try:
        with PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.unparse(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return text


def expr_text(expr: str | griffe.Expr | None) -> str:
    """An annotation, default or value as :func:`ast.unparse` would write it."""
    if expr is None:
        return ""
    return _respell(str(expr).strip())


def is_property(func: griffe.Object | griffe.Alias) -> bool:
    return bool(_PROPERTY_LABELS & set(func.labels)) and not func.is_class


def _param(p: griffe.Parameter) -> str:
    prefix = {griffe.ParameterKind.var_positional: "*",
              griffe.ParameterKind.var_keyword: "**"}.get(p.kind, "")
    text = prefix + p.name
    if prefix:  # griffe gives ``*args`` a default of ``()``; Python has none
        return text + (": " + expr_text(p.annotation) if p.annotation is not None else "")
    if p.annotation is not None:
        text += ": " + expr_text(p.annotation)
        if p.default is not None:
            text += " = " + expr_text(p.default)
    elif p.default is not None:
        text += "=" + expr_text(p.default)
    return text


def params_text(params: list[griffe.Parameter]) -> str:
    """A parameter list with ``/`` and ``*`` markers where the kinds change."""
    parts: list[str] = []
    kinds = griffe.ParameterKind
    seen_star = False
    for index, p in enumerate(params):
        if p.kind is kinds.keyword_only and not seen_star:
            parts.append("*")
            seen_star = True
        if p.kind is kinds.var_positional:
            seen_star = True
        parts.append(_param(p))
        nxt = params[index + 1] if index + 1 < len(params) else None
        if p.kind is kinds.positional_only and (nxt is None or nxt.kind is not kinds.positional_only):
            parts.append("/")
    return ", ".join(parts)


def _type_params(obj: griffe.Object) -> str:
    params = getattr(obj, "type_parameters", None) or []
    if not params:
        return ""
    out = []
    for tp in params:
        prefix = {"type-var-tuple": "*", "param-spec": "**"}.get(str(tp.kind.value), "")
        text = prefix + tp.name
        if tp.constraints:
            text += ": (" + ", ".join(expr_text(c) for c in tp.constraints) + ")"
        elif tp.bound is not None:
            text += ": " + expr_text(tp.bound)
        out.append(text)
    return "[" + ", ".join(out) + "]"


def _def_lines(func: griffe.Function, *, overload: bool) -> list[str]:
    lines = ["@overload"] if overload else []
    for dec in func.decorators:
        text = expr_text(dec.value)
        if text.rsplit(".", 1)[-1] != "overload":
            lines.append(f"@{text}")
    prefix = "async def" if "async" in func.labels else "def"
    sig = f"{prefix} {func.name}{_type_params(func)}({params_text(list(func.parameters))})"
    if func.returns is not None:
        sig += " -> " + expr_text(func.returns)
    return [*lines, sig]


def overloads_of(func: griffe.Function) -> list[griffe.Function]:
    """Its ``@overload`` stubs, in source order."""
    found = func.overloads
    if not found and func.parent is not None:
        parent_overloads = getattr(func.parent, "overloads", None) or {}
        found = parent_overloads.get(func.name) if isinstance(parent_overloads, dict) else None
    return sorted(found or [], key=lambda f: f.lineno or 0)


def function_lines(func: griffe.Function) -> list[str]:
    """Every overload (``@overload`` + ``def``), then the implementation."""
    lines: list[str] = []
    for stub in overloads_of(func):
        lines += _def_lines(stub, overload=True)
    return lines + _def_lines(func, overload=False)


def _base_names(cls: griffe.Class) -> list[str]:
    names = []
    for base in cls.bases:
        names.append(base.canonical_path if isinstance(base, griffe.Expr) else str(base))
    return names


def _resolved_bases(cls: griffe.Class) -> list[griffe.Class]:
    try:
        return [b for b in cls.resolved_bases if isinstance(b, griffe.Class)]
    except Exception:  # noqa: BLE001 - griffe raises several kinds for an unresolvable base
        return []


def class_kind(cls: griffe.Class, _depth: int = 0) -> str:
    """``dataclass``, ``namedtuple``, ``attrs``, ``pydantic``, ``typeddict`` or ``class``."""
    if "dataclass" in cls.labels:
        return "dataclass"
    decorators = {expr_text(d.value).split("(", 1)[0] for d in cls.decorators}
    if decorators & _ATTRS_DECORATORS or decorators & {"define", "frozen", "mutable", "attrs"}:
        return "attrs"
    for name in _base_names(cls):
        last = name.rsplit(".", 1)[-1]
        if last == "NamedTuple":
            return "namedtuple"
        if last in ("TypedDict",):
            return "typeddict"
        if last in ("BaseModel", "BaseSettings", "RootModel"):
            return "pydantic"
    if _depth < 10:
        for base in _resolved_bases(cls):
            kind = class_kind(base, _depth + 1)
            if kind in ("pydantic", "typeddict"):
                return kind
    return "class"


def in_class_body(cls: griffe.Class, attr: griffe.Object) -> bool:
    """Whether an attribute is declared in the class body (a field), not set in a method."""
    if "class-attribute" in attr.labels:
        return True
    line = attr.lineno or 0
    return not any(m.lineno <= line <= (m.endlineno or m.lineno) for m in cls.members.values()
                   if not m.is_alias and m.is_function and m.lineno)


def _field_default(value: str | griffe.Expr | None) -> str | None:
    """The default a field declaration gives: its value, or ``Field(default=...)``'s."""
    if value is None:
        return None
    text = expr_text(value)
    try:
        with PARSE_LOCK:
            node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return text
    if isinstance(node, ast.Call) and ast.unparse(node.func) in _FIELD_CALLS:
        for kw in node.keywords:
            if kw.arg == "default":
                return ast.unparse(kw.value)
            if kw.arg in ("default_factory", "factory"):
                return f"{ast.unparse(kw.value)}()"
        if node.args and ast.unparse(node.func).rsplit(".", 1)[-1] == "Field":
            first = ast.unparse(node.args[0])
            return None if first in ("...", "Ellipsis") else first
        return None
    return text


def _fields(cls: griffe.Class, kind: str, _depth: int = 0) -> list[str]:
    """``name: type = default`` of a field class, inherited fields first."""
    inherited: list[str] = []
    if kind in ("pydantic", "typeddict") and _depth < 10:
        for base in _resolved_bases(cls):
            if class_kind(base) == kind:
                inherited += _fields(base, kind, _depth + 1)
    own: list[str] = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or not in_class_body(cls, member):
            continue
        if member.annotation is None or member.name == "model_config" or "property" in member.labels:
            continue
        if expr_text(member.annotation).split("[", 1)[0].rsplit(".", 1)[-1] == "ClassVar":
            continue
        name = member.name.lstrip("_") if kind == "attrs" else member.name
        text = f"{name}: {expr_text(member.annotation)}"
        default = None if kind == "typeddict" else _field_default(member.value)
        own.append(text if default is None else f"{text} = {default}")
    names = {f.split(":", 1)[0] for f in own}
    return [f for f in inherited if f.split(":", 1)[0] not in names] + own


def _own_function(cls: griffe.Class, name: str) -> griffe.Function | None:
    member = cls.members.get(name)
    return member if member is not None and not member.is_alias and member.is_function else None


def _mro(cls: griffe.Class) -> list[griffe.Class]:
    try:
        return [b for b in cls.mro() if isinstance(b, griffe.Class)]
    except Exception:  # noqa: BLE001 - griffe raises several kinds for an unresolvable base
        return _resolved_bases(cls)


def constructor_line(cls: griffe.Class) -> str:
    """How the class is called: ``Name(a: int, b: str = 'x')``."""
    kind = class_kind(cls)
    init = _own_function(cls, "__init__") or _own_function(cls, "__new__")
    if init is None:
        if kind in ("namedtuple", "attrs"):
            return f"{cls.name}({', '.join(_fields(cls, kind))})"
        if kind in ("pydantic", "typeddict"):
            fields = _fields(cls, kind)
            return f"{cls.name}({', '.join(['*', *fields]) if fields else ''})"
        init = next(filter(None, (_own_function(base, "__init__") for base in _mro(cls))), None)
    if init is not None:
        params = list(init.parameters)[1:]
        return f"{cls.name}({params_text(params)})"
    external = [b for b in _base_names(cls)
                if b.rsplit(".", 1)[-1] not in ("object", "ABC", "Protocol", "Generic")
                and not b.startswith("Generic[") and not b.startswith("Protocol[")]
    return f"{cls.name}(*args, **kwargs)" if external else f"{cls.name}()"


def is_type_alias_declaration(attr: griffe.Object) -> bool:
    """A ``type X = ...`` statement or an ``X: TypeAlias = ...`` assignment."""
    annotation = expr_text(getattr(attr, "annotation", None))
    return attr.is_type_alias or annotation.rsplit(".", 1)[-1] == "TypeAlias"


def attribute_line(attr: griffe.Object, name: str | None = None) -> str:
    """``name: type = value``; a 3.12 ``type X = ...`` alias as written."""
    name = name or attr.name
    value = expr_text(attr.value) if getattr(attr, "value", None) is not None else ""
    if len(value) > MAX_VALUE and not is_type_alias_declaration(attr):
        value = "..."
    if attr.is_type_alias:
        return f"type {name}{_type_params(attr)} = {value}"
    text = name
    if getattr(attr, "annotation", None) is not None:
        text += ": " + expr_text(attr.annotation)
    return f"{text} = {value}" if value else text

"""What a module's page documents: the names users import from it.

A module documents what it defines and what it re-exports. With ``__all__``, exactly the
names listed there (an ``__all__`` griffe cannot read, such as ``[...] + list(TABLE)``, counts
as none, as griffe has it). Without it, the public names it defines, and the names it imports
that are meant to be imported from it: ``from x import Y as Y`` (the explicit re-export idiom),
anything a package's ``__init__`` imports from inside the package, and anything a module
imports from a private module of the package (``from ._impl import X``), which users could not
import from anywhere else. A module that marks some imports as re-exports with ``as``
re-exports only those. Names imported only under ``if TYPE_CHECKING:`` do not exist at run
time and are never re-exports.

Module attributes are documented when listed in ``__all__``, documented by a docstring,
annotated (``cache: dict[str, str] = {}``), named as constants (``UPPER_CASE``) or type aliases.

A re-exported name whose definition griffe cannot see (the standard library, a third-party
package, a compiled module of the package) is documented with the import it comes from
(``from http.client import HTTPException``) and no signature.
"""

from __future__ import annotations

from dataclasses import dataclass

import griffe
from orchestrator.agents.lib.apidocs.loading import REDUNDANT_KEY, TYPE_ONLY_KEY
from orchestrator.agents.lib.apidocs.signatures import expr_text, in_class_body

__all__ = ["Entry", "class_members", "module_entries"]

_ALIAS_HEADS = {"Union", "Optional", "Annotated", "Literal", "Callable", "Type", "type", "dict",
                "list", "tuple", "set", "frozenset", "Dict", "List", "Tuple", "Set", "Mapping",
                "Sequence", "Iterable", "Iterator", "Awaitable", "Coroutine", "AsyncIterator",
                "MutableMapping", "FrozenSet", "Generator", "AsyncGenerator", "TypeGuard"}


@dataclass(frozen=True)
class Entry:
    """One documented name of a module.

    ``obj`` is the object itself (aliases followed), or None for a name re-exported from
    outside the package; ``defined_in`` is the module that defines it when that is not this
    module (a re-export), else None.
    """

    name: str
    obj: griffe.Object | None
    defined_in: str | None
    target_path: str


def _private_module(path: str) -> bool:
    return any(part.startswith("_") for part in path.split(".")[1:])


def _is_type_alias(attr: griffe.Object) -> bool:
    if attr.is_type_alias:
        return True
    annotation = expr_text(getattr(attr, "annotation", None))
    if annotation.rsplit(".", 1)[-1] == "TypeAlias":
        return True
    value = getattr(attr, "value", None)
    if isinstance(value, griffe.ExprSubscript):
        head = expr_text(value.left).rsplit(".", 1)[-1]
        return head in _ALIAS_HEADS
    if isinstance(value, griffe.ExprBinOp) and value.operator == "|":
        return True
    return False


def _constant_name(name: str) -> bool:
    return name.upper() == name and any(c.isalpha() for c in name)


def _documentable(obj: griffe.Object, name: str, exported: bool) -> bool:
    if obj.is_module:
        return False
    if obj.is_function or obj.is_class:
        return True
    if obj.is_type_alias:
        return True
    if obj.is_attribute:
        if name in ("__all__", "__version__", "__doc__"):
            return exported
        return (exported or obj.docstring is not None or _constant_name(name)
                or getattr(obj, "annotation", None) is not None or _is_type_alias(obj))
    return False


def _reexported(mod: griffe.Module, name: str, alias: griffe.Alias, package: str) -> bool:
    redundant = mod.extra.get(REDUNDANT_KEY) or set()
    if name in redundant or alias.wildcard_imported:
        return True
    if redundant:  # the module marks its re-exports with ``as``: the others are its own imports
        return False
    target = alias.target_path
    if not target.startswith(package + "."):
        return False
    if mod.filepath and getattr(mod.filepath, "name", "") == "__init__.py":
        return True
    return _private_module(target.rsplit(".", 1)[0])


def _last_known(alias: griffe.Alias) -> str:
    """The path an alias chain leads to, followed as far as the loaded modules go: where a
    re-export from outside the package (or from a module griffe cannot read) comes from."""
    path = alias.target_path
    seen = {path}
    while True:
        try:
            obj = alias.modules_collection.get_member(path)
        except (KeyError, ValueError, AttributeError, IndexError, griffe.AliasResolutionError,
                griffe.CyclicAliasError):
            return path
        if not obj.is_alias or obj.target_path in seen:
            return path
        path = obj.target_path
        seen.add(path)


def module_entries(mod: griffe.Module) -> list[Entry]:
    """The documented names of ``mod``, in the order the module has them."""
    package = mod.path.split(".", 1)[0]
    exports = mod.exports
    listed = [e if isinstance(e, str) else getattr(e, "name", str(e))
              for e in exports] if exports else None
    type_only = mod.extra.get(TYPE_ONLY_KEY) or set()
    names = list(mod.members)
    if listed is not None:  # __all__'s names first in its order? no: source order reads best
        names = [n for n in names if n in listed] + [n for n in listed if n not in mod.members]
    entries: list[Entry] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        member = mod.members.get(name)
        exported = listed is not None and name in listed
        if listed is not None and not exported:
            continue
        if listed is None and name.startswith("_"):
            continue
        if member is None:
            continue
        if member.is_alias:
            if listed is None and (name in type_only or not _reexported(mod, name, member, package)):
                continue
            try:
                target = member.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                target = None
            if target is None or not target.path.startswith(package + "."):
                origin = _last_known(member)
                if "." in origin:
                    entries.append(Entry(name, None, origin.rsplit(".", 1)[0], origin))
                continue
            if not _documentable(target, name, True):
                continue
            defined = target.module.path if target.parent is not None else None
            entries.append(Entry(name, target, None if defined == mod.path else defined,
                                 target.path))
        elif _documentable(member, name, exported):
            entries.append(Entry(name, member, None, member.path))
    return entries


def class_members(cls: griffe.Class) -> list[griffe.Object]:
    """The public methods, properties and attributes a class defines, in source order."""
    found = []
    for name, member in cls.members.items():
        if name.startswith("_") or member.is_alias or member.is_class or member.is_module:
            continue
        if member.is_attribute and member.docstring is None and not in_class_body(cls, member):
            continue
        if member.is_attribute and name == "model_config":
            continue
        found.append(member)
    return sorted(found, key=lambda m: (m.lineno or 0, m.name))

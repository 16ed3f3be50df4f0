"""Packages to document, and checks of the docs written for them."""

from __future__ import annotations

import textwrap
from pathlib import Path

#: The public modules of the ``fixture_package`` fixture (tests/conftest.py).
FIXTURE_MODULES = ["fixturepkg", *(f"fixturepkg.mod{i}" for i in range(6)), "fixturepkg.sub",
                   *(f"fixturepkg.sub.mod{i}" for i in range(6, 10))]


def make_package(root: Path, n_modules: int, *, classes: int = 6, methods: int = 6) -> list[str]:
    """Write a package of ``n_modules`` public modules (its ``__init__``, a ``sub`` package and
    plain modules; plus a private one that must not be documented); returns their dotted names.

    The modules are sizeable (classes with methods, properties, signatures with every kind of
    parameter), so rendering takes real time."""
    name = root.name
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text(f'"""The {name} package, for chaos tests."""\n')
    (root / "sub" / "__init__.py").write_text('"""A sub-package."""\n')
    (root / "_private.py").write_text("def hidden():\n    pass\n")
    modules = [name, f"{name}.sub"]
    for i in range(n_modules - 2):
        in_sub = i % 3 == 0
        folder = root / "sub" if in_sub else root
        modules.append(f"{name}.sub.mod{i}" if in_sub else f"{name}.mod{i}")
        parts = [f'"""Chaos module {i}: classes and helpers."""\n\nimport typing\n']
        for c in range(classes):
            parts.append(textwrap.dedent(f'''

                class Widget{i}x{c}(object):
                    """Widget {c} of module {i}.

                    # not a heading: docstrings are escaped
                    """

                    def __init__(self, size: int = {c}, *, label: str = "w{c}", **extra) -> None:
                        self.size = size

                    def _private(self) -> None:
                        pass
                '''))
            for m in range(methods):
                parts.append(textwrap.indent(textwrap.dedent(f'''
                    def method_{m}(self, a: int, /, b: str = "x", *args: float, c: bool = False,
                                   **kw: typing.Any) -> dict[str, int]:
                        """Method {m} of widget {c}.

                        Returns a mapping.
                        """
                        return {{"a": a}}

                    @property
                    def prop_{m}(self) -> int:
                        """Property {m}."""
                        return {m}
                    '''), "    "))
            parts.append(textwrap.dedent(f'''

                async def helper_{i}x{c}(x: list[int], y: int = 3, *, z: "str | None" = None) -> int:
                    """Helper {c}: counts ``x``."""
                    return len(x)
                '''))
        (folder / f"mod{i}.py").write_text("".join(parts))
    return sorted(modules)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too), by relative path."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Hidden files in ``out`` (temporary files of an interrupted write)."""
    return sorted(k for k in tree(out) if Path(k).name.startswith("."))


def docs_problems(out: Path, modules: list[str], reference: dict[str, bytes] | None, *,
                  allow_leftovers: bool = False) -> list[str]:
    """What is wrong with the docs in ``out``: missing/extra/different pages, a bad index,
    hidden leftovers (unless ``allow_leftovers``)."""
    problems: list[str] = []
    files = tree(out)
    visible = {k: v for k, v in files.items() if not Path(k).name.startswith(".")}
    if leftovers(out) and not allow_leftovers:
        problems.append(f"leftover hidden files {leftovers(out)}")
    expected = sorted([f"{m}.md" for m in modules] + ["index.md"])
    if sorted(visible) != expected:
        problems.append(f"files differ: missing {sorted(set(expected) - set(visible))}, "
                        f"extra {sorted(set(visible) - set(expected))}")
    if reference is not None:
        differing = sorted(k for k in reference if k in visible and visible[k] != reference[k])
        if differing:
            problems.append(f"not byte-identical to the reference: {differing}")
    index = visible.get("index.md", b"").decode()
    wrong = [m for m in modules if index.count(f"[{m}]({m}.md)") != 1]
    if wrong:
        problems.append(f"index does not list exactly once: {wrong}")
    return problems

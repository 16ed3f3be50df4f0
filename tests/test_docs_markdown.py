"""Tests for agents.lib.docs_markdown (Markdown API docs from source, never imported)."""

from __future__ import annotations

import importlib.util
import os
import textwrap
from pathlib import Path

import pytest
from orchestrator.agents.lib.docs_markdown import (
    INDEX_FILENAME,
    ModuleInfo,
    UnsafePath,
    discover_modules,
    module_filename,
    module_summary,
    render_index,
    render_module,
    write_docs,
)

SAMPLE = textwrap.dedent(
    '''
    """Sample module. It has things.

    More text here.
    """
    import sys
    from abc import ABC, ABCMeta


    class Shape(ABC, metaclass=ABCMeta):
        """A shape.

        # Not a heading
        Underlined
        ==========

        ```python
        x = 1
        """

        def __init__(self, name: str, /, sides: int = 3, *, color="red") -> None:
            self.name = name

        @property
        def area(self) -> float:
            """The area."""
            return 0.0

        @staticmethod
        def unit() -> "Shape":
            """Make a unit shape."""

        @classmethod
        def create(cls, **kw) -> "Shape":
            pass

        async def draw(self, canvas, *layers: int) -> None:
            """Draw it."""

        def _hidden(self):
            pass

        def __repr__(self):
            return "Shape"


    class _PrivateClass:
        def visible_method(self):
            pass


    def f(a, /, b: int = 1, *args, c, **kw) -> str:
        """Do f."""
        return ""


    async def fetch(url: str, *, timeout: float = 1.0) -> bytes:
        """Fetch."""


    def _private_helper():
        pass


    if sys.version_info >= (3, 12):
        def g(x: int) -> int:
            """New g."""
    else:
        def g(x):
            """Old g."""

    try:
        from fast import h
    except ImportError:
        def h(y=None):
            """Fallback h."""
    finally:
        def fin() -> None:
            pass

    def f(z):
        """Duplicate f."""
    '''
)


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- discovery


def test_discover_fixture_package(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    for rel in [
        "__init__.py",
        "core.py",
        "_private.py",
        "__main__.py",
        "sub/__init__.py",
        "sub/leaf.py",
        "sub/_hidden.py",
        "sub/deeper/__init__.py",
        "sub/deeper/alpha.py",
        "_internal/__init__.py",
        "_internal/public_name.py",
        "nspkg/mod.py",  # no __init__.py: a namespace package, as on import
        "shadowed.py",
        "shadowed/inner.py",  # shadowed by shadowed.py: not importable, excluded
        "__pycache__/core.cpython-311.py",
        ".hidden/__init__.py",
        ".hidden/x.py",
        "data.txt",
        "not-importable.py",
    ]:
        _touch(pkg / rel)

    mods = discover_modules(pkg)

    assert mods == [
        ModuleInfo("mypkg", "__init__.py"),
        ModuleInfo("mypkg.core", "core.py"),
        ModuleInfo("mypkg.nspkg.mod", "nspkg/mod.py"),
        ModuleInfo("mypkg.shadowed", "shadowed.py"),
        ModuleInfo("mypkg.sub", "sub/__init__.py"),
        ModuleInfo("mypkg.sub.deeper", "sub/deeper/__init__.py"),
        ModuleInfo("mypkg.sub.deeper.alpha", "sub/deeper/alpha.py"),
        ModuleInfo("mypkg.sub.leaf", "sub/leaf.py"),
    ]
    # str and PathLike both accepted, result deterministic
    assert discover_modules(str(pkg)) == mods


def test_discover_skips_symlinked_dirs_and_accepts_namespace(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _touch(outside / "__init__.py")
    _touch(outside / "evil.py")
    pkg = tmp_path / "ns"
    _touch(pkg / "mod.py")  # no top-level __init__.py: namespace package
    (pkg / "linked").symlink_to(outside, target_is_directory=True)

    assert discover_modules(pkg) == [ModuleInfo("ns.mod", "mod.py")]


def test_discover_package_wins_over_same_named_module(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    _touch(pkg / "x.py")
    _touch(pkg / "x" / "__init__.py")
    assert discover_modules(pkg) == [ModuleInfo("p.x", "x/__init__.py")]


def test_discover_missing_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        discover_modules(tmp_path / "missing")
    _touch(tmp_path / "file.py")
    with pytest.raises(FileNotFoundError):
        discover_modules(tmp_path / "file.py")


# --------------------------------------------------------------------------- rendering


def test_render_module_structure_and_signatures() -> None:
    page = render_module(SAMPLE, "pkg.sample")
    lines = page.splitlines()

    assert lines[0] == "# pkg.sample"
    assert "Sample module. It has things.\n\nMore text here." in page

    # class heading, then its constructor without self / return type, then its bases
    assert "## class Shape" in lines
    ctor = lines.index("## class Shape") + 3
    assert lines[ctor] == "Shape(name: str, /, sides: int = 3, *, color='red')"
    assert "Bases: `ABC`" in lines
    # methods
    assert "### Shape.area" in lines  # property: no parentheses, shown as the attribute it is
    assert "### Shape.area\n\n```python\narea: float\n```" in page
    assert "### Shape.unit()" in lines
    assert "@staticmethod\ndef unit() -> Shape" in page  # string annotations as names
    assert "@classmethod\ndef create(cls, **kw) -> Shape" in page
    assert "async def draw(self, canvas, *layers: int) -> None" in lines
    # functions: full signatures
    assert "## f()" in lines
    assert "async def fetch(url: str, *, timeout: float = 1.0) -> bytes" in lines
    # conditional definitions: the last one griffe visits wins (the else branch, the except
    # fallback), as for a redefinition, which is what Python executes last
    assert "def g(x)" in lines and "Old g." in page
    assert "def g(x: int) -> int" not in lines and "New g." not in page
    assert "def h(y=None)" in lines
    assert "def fin() -> None" in lines
    # duplicate f: the later definition replaces the first at run time, and on the page
    assert "Duplicate f." in page and "def f(z)" in lines
    assert "def f(a, /, b: int = 1, *args, c, **kw) -> str" not in lines
    assert lines.count("## f()") == 1
    # private names absent
    for absent in ("_hidden", "__repr__", "_PrivateClass", "visible_method", "_private_helper"):
        assert absent not in page
    assert "__init__" not in page
    # source order: class, then f, fetch, g, h, fin
    order = [
        lines.index(h)
        for h in (
            "## class Shape",
            "## f()",
            "## fetch()",
            "## g()",
            "## h()",
            "## fin()",
        )
    ]
    assert order == sorted(order)
    # methods in source order
    m_order = [
        lines.index(h)
        for h in ("### Shape.area", "### Shape.unit()", "### Shape.create()", "### Shape.draw()")
    ]
    assert m_order == sorted(m_order)


def test_docstring_cannot_break_page_structure() -> None:
    page = render_module(SAMPLE, "pkg.sample")
    lines = page.splitlines()
    headings = [line for line in lines if line.startswith("#")]
    # the only headings are the ones we generated
    assert all(h.startswith(("# pkg.sample", "## ", "### ")) for h in headings)
    assert "# Not a heading" not in lines
    assert "\\# Not a heading" in lines
    assert "\\==========" in lines  # setext underline neutralised
    # code fences balanced (the docstring's unclosed fence got closed)
    assert sum(1 for line in lines if line.startswith("```")) % 2 == 0


def test_render_output_format_rules() -> None:
    page = render_module(SAMPLE, "pkg.sample")
    assert page.endswith("\n") and not page.endswith("\n\n")
    assert all(line == line.rstrip() for line in page.splitlines())
    assert "\n\n\n" not in page
    assert render_module(SAMPLE, "pkg.sample") == page  # deterministic


def test_render_module_without_public_api() -> None:
    page = render_module("x = 1\n", "pkg.empty")
    assert page == "# pkg.empty\n\nNo public classes or functions.\n"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def f(:\n    pass\n", "line 1"),
        ("x = 1\n\ndef broken(\n", "line 3"),
        ("x = 1\n\0\n", "null byte (line 2)"),
    ],
)
def test_render_module_unparseable(source: str, fragment: str) -> None:
    page = render_module(source, "pkg.bad")
    assert page.startswith("# pkg.bad\n\nCould not parse this module: ")
    assert fragment in page
    assert page.endswith("\n") and not page.endswith("\n\n")
    assert module_summary(source) == ""


def test_module_summary() -> None:
    assert module_summary(SAMPLE) == "Sample module."
    assert module_summary('"""Wrapped summary\nover two lines\n\nBody."""') == (
        "Wrapped summary over two lines"
    )
    assert module_summary("x = 1") == ""
    assert module_summary("") == ""


def test_render_index_sorted_and_deterministic() -> None:
    mods = [("pkg.zeta", "Last one."), ("pkg", "Top."), ("pkg.alpha", ""), ("pkg.beta", "B.")]
    index = render_index("pkg", mods)
    assert index == (
        "# pkg API reference\n\n"
        "- [pkg](pkg.md) — Top.\n"
        "- [pkg.alpha](pkg.alpha.md)\n"
        "- [pkg.beta](pkg.beta.md) — B.\n"
        "- [pkg.zeta](pkg.zeta.md) — Last one.\n"
    )
    assert render_index("pkg", list(reversed(mods))) == index
    assert module_filename("pkg.sub.mod") == "pkg.sub.mod.md"
    assert INDEX_FILENAME == "index.md"


# --------------------------------------------------------------------------- writing


def test_write_docs_writes_and_keeps_mtime(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "docs"
    files = {"index.md": "# idx\n", "sub/pkg.mod.md": "# pkg.mod\n\nÜnïcode\n"}
    assert write_docs(out, files) == ["index.md", "sub/pkg.mod.md"]
    assert (out / "sub" / "pkg.mod.md").read_bytes() == "# pkg.mod\n\nÜnïcode\n".encode()

    index = out / "index.md"
    old = 1_000_000_000
    os.utime(index, (old, old))
    assert write_docs(out, files) == ["index.md", "sub/pkg.mod.md"]
    assert index.stat().st_mtime == old  # unchanged content -> not rewritten

    assert write_docs(out, {"index.md": "# new\n"}) == ["index.md"]
    assert index.read_text() == "# new\n"
    assert index.stat().st_mtime != old
    assert (out / "sub" / "pkg.mod.md").exists()  # never deletes
    assert sorted(p.name for p in out.rglob("*")) == ["index.md", "pkg.mod.md", "sub"]


@pytest.mark.parametrize(
    "bad",
    ["../x.md", "/abs.md", "a/../../x.md", "a/../x.md", "", "x\0.md", ".", "sub/"],
)
def test_write_docs_rejects_unsafe_paths_before_writing(tmp_path: Path, bad: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(UnsafePath) as info:
        write_docs(out, {"good.md": "ok\n", bad: "evil\n"})
    assert repr(bad) in str(info.value)
    assert not out.exists()  # nothing at all written, not even the output dir
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_write_docs_rejects_symlink_escape(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    (out / "link.md").symlink_to(outside / "target.md")

    for bad in ("sub/x.md", "link.md"):
        with pytest.raises(UnsafePath, match="outside"):
            write_docs(out, {"aaa.md": "first\n", bad: "evil\n"})
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["link.md", "sub"]


def test_write_docs_rejects_conflicts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UnsafePath):
        write_docs(out, {"a.md": "1", "./a.md": "2"})
    with pytest.raises(UnsafePath):
        write_docs(out, {"a": "1", "a/b.md": "2"})
    (tmp_path / "out" / "dir.md").mkdir(parents=True)
    with pytest.raises(UnsafePath):
        write_docs(out, {"dir.md": "x"})


# --------------------------------------------------------------------------- real code


@pytest.mark.parametrize("package", ["email", "json"])
def test_smoke_stdlib_package(package: str) -> None:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    mods = discover_modules(pkg_dir)
    names = [m.name for m in mods]
    assert package in names and names == sorted(names)
    assert all(not part.startswith("_") for n in names for part in n.split("."))
    summaries = []
    for mod in mods:
        source = (pkg_dir / mod.path).read_text(encoding="utf-8")
        page = render_module(source, mod.name)
        assert page.startswith(f"# {mod.name}\n")
        assert "Could not parse" not in page
        summaries.append((mod.name, module_summary(source)))
    index = render_index(package, summaries)
    assert index.count("\n- [") == len(mods)



def test_write_docs_clears_its_own_leftovers_and_never_a_users_file(tmp_path: Path) -> None:
    """Review L11: any ``.<page>.*.tmp`` was deleted, a user's file included."""
    out = tmp_path / "docs"
    out.mkdir()
    mine = out / ".index.md.orchestrator-ab12cd_9.tmp"  # a killed writer's leftover
    theirs = [out / ".index.md.notes.tmp", out / ".index.md.orchestrator-mine.tmp"]
    for path in (mine, *theirs):
        path.write_text("x")
    write_docs(out, {"index.md": "# index\n"})
    assert not mine.exists()
    assert all(path.read_text() == "x" for path in theirs)
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.md", *(p.name for p in theirs)])

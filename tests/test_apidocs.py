"""The API docs from a package loaded with griffe (never imported): re-exports, overloads,
field classes, constants and aliases, docstring styles, ``__main__`` blocks, cross-references,
unparsable modules, the per-process package cache, byte-identical output."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from orchestrator.agents.lib.apidocs import (
    PackageCache,
    Page,
    SkippedPage,
    discover_modules,
    load_package,
    render_page,
)

FILES = {
    "__init__.py": '''
        """The shop package."""
        from ._impl import Basket, checkout
        from .models import Item
        from . import models

        __all__ = ["Basket", "checkout", "Item", "PositiveInt", "VERSION", "parse"]

        VERSION: str = "1.0"
        """The package version."""

        from typing import Annotated, overload

        PositiveInt = Annotated[int, "positive"]
        """An int above zero."""

        @overload
        def parse(text: str) -> int: ...
        @overload
        def parse(text: bytes, *, strict: bool = False) -> int: ...
        def parse(text, *, strict=False):
            """Parse a number.

            Args:
                text: What to parse.
                strict: Refuse spaces.

            Returns:
                The number.

            Raises:
                ValueError: Not a number.

            Examples:
                >>> parse("1")
                1
            """
            return int(text)

        def _hidden():
            pass

        if __name__ == "__main__":
            def main_only():
                """A script helper."""
            print(parse("1"))
    ''',
    "_impl.py": '''
        """Private: users import these from the package."""
        from .models import Item


        class Basket:
            """A basket of :class:`Item` objects.

            Parameters
            ----------
            owner : str
                Who holds it.
            """

            def __init__(self, owner: str = "me") -> None:
                self.owner = owner

            def add(self, item: Item, count: int = 1) -> "Basket":
                """Add ``count`` copies of the item; ``__len__`` grows.

                :param item: The item.
                :param count: How many.
                :returns: The basket itself.
                :raises KeyError: Never.
                """
                return self


        async def checkout(basket: Basket) -> float:
            """Pay for a `Basket`, see [Item][shop.models.Item].

            !!! warning
                Money leaves.
            """
            return 0.0
    ''',
    "models.py": '''
        """Data classes of every kind."""
        from dataclasses import dataclass, field
        from typing import NamedTuple

        import attrs
        from pydantic import BaseModel, Field

        from .tools import helper as helper


        @dataclass(frozen=True)
        class Item:
            """An item."""

            name: str
            tags: list[str] = field(default_factory=list)
            price: float = 0.0
            """The price, in euros."""


        class Point(NamedTuple):
            x: int
            y: int = 0


        @attrs.define
        class Box:
            width: int
            depth: int = attrs.field(default=2)


        class Order(BaseModel):
            id: int
            note: str = Field(default="none", description="free text")
            model_config = {"frozen": True}


        class Rush(Order):
            hours: int = 1

        Count = int | None
        lower = "not documented: neither constant, alias, exported nor with a docstring"
    ''',
    "tools.py": '''
        def helper() -> None:
            """Help."""

        def _private():
            pass
    ''',
    "broken.py": "def broken(:\n    pass\n",
}


def _write_package(root: Path, files: dict[str, str]) -> Path:
    """``root`` holding ``files`` (name -> source, dedented)."""
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    return _write_package(tmp_path / "shop", FILES)


def _page(shop: Path, module: str) -> str:
    page = render_page(load_package(shop), module)
    assert isinstance(page, Page), page
    return page.markdown


def _section(page: str, title: str) -> str:
    """The text from ``title`` up to the next heading of the same or a higher level."""
    lines = page.splitlines()
    start = lines.index(title)
    level = title.split(" ", 1)[0]
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i].split(" ", 1)[0]) <= len(level)),
               len(lines))
    return "\n".join(lines[start:end]).strip("\n")


def test_reexported_names_are_documented_where_users_import_them(shop: Path) -> None:
    page = _page(shop, "shop")
    headings = [line for line in page.splitlines() if line.startswith("#")]
    assert headings == [
        "# shop", "## class Basket", "### Basket.add()", "## checkout()", "## class Item",
        "### Item.name", "### Item.tags", "### Item.price", "## VERSION", "## PositiveInt",
        "## parse()",
    ]
    basket = _section(page, "## class Basket")
    # the heading, one blank line, the signature block, then where it is defined (no page)
    assert basket.startswith("## class Basket\n\n```python\nBasket(owner: str = 'me')\n```\n\n"
                             "Defined in `shop._impl`.\n")
    item = _section(page, "## class Item")
    assert "Defined in [`shop.models`](shop.models.md#class-item).\n" in item
    # the defining module documents it too, without a "Defined in" line
    assert "Defined in" not in _section(_page(shop, "shop.models"), "## class Item")
    # an `import x as x` re-export; the module's private and other imports are not
    models = _page(shop, "shop.models")
    assert "## helper()" in models and "Defined in [`shop.tools`](shop.tools.md#helper)." in models
    for absent in ("## field()", "## NamedTuple", "## BaseModel", "## dataclass()", "## lower"):
        assert absent not in models
    assert "_private" not in _page(shop, "shop.tools")


def test_overloads_are_all_shown_with_the_implementations_docstring(shop: Path) -> None:
    parse = _section(_page(shop, "shop"), "## parse()")
    assert parse.startswith("## parse()\n\n```python\n"
                            "@overload\ndef parse(text: str) -> int\n"
                            "@overload\ndef parse(text: bytes, *, strict: bool = False) -> int\n"
                            "def parse(text, *, strict=False)\n```\n")
    assert "Parse a number." in parse


def test_docstring_sections_become_lists_and_doctests_code(shop: Path) -> None:
    parse = _section(_page(shop, "shop"), "## parse()")
    assert "**Parameters:**\n\n- `text`: What to parse.\n- `strict` (default `False`): Refuse " \
        "spaces." in parse
    assert "**Returns:**\n\n- The number." in parse
    assert "**Raises:**\n\n- `ValueError`: Not a number." in parse
    assert "```pycon\n>>> parse(\"1\")\n1\n```" in parse
    assert "> >>>" not in parse and "\n>>>" not in parse.replace("```pycon\n>>>", "")
    shop_page = _page(shop, "shop")
    basket = _section(shop_page, "## class Basket")
    assert "**Parameters:**\n\n- `owner` (`str`, default `'me'`): Who holds it." in basket  # NumPy
    add = _section(shop_page, "### Basket.add()")  # Sphinx style
    assert "- `item` ([`Item`](shop.models.md#class-item)): The item." in add
    assert "**Returns:**\n\n- [`Basket`](shop.md#class-basket): The basket itself." in add
    assert "**Raises:**\n\n- `KeyError`: Never." in add
    # dunder names stay code, never bold
    assert "`__len__` grows" in add and "**len**" not in add
    checkout = _section(shop_page, "## checkout()")
    assert "> [!WARNING]\n> Money leaves." in checkout  # an mkdocs admonition


def test_cross_references_link_to_the_objects_page(shop: Path) -> None:
    page = _page(shop, "shop")
    add = _section(page, "### Basket.add()")
    assert "Types: [`Basket`](shop.md#class-basket), [`Item`](shop.models.md#class-item)" in add
    basket = _section(page, "## class Basket")
    assert "A basket of [`Item`](shop.models.md#class-item) objects." in basket  # :class: role
    checkout = _section(page, "## checkout()")
    assert "Pay for a [`Basket`](shop.md#class-basket), see [Item](shop.models.md#class-item)." \
        in checkout


def test_field_classes_show_their_constructor_and_fields(shop: Path) -> None:
    page = _page(shop, "shop.models")

    def signature(title: str) -> str:
        return _section(page, title).split("```python\n", 1)[1].split("\n```", 1)[0]

    assert signature("## class Item") == "Item(name: str, tags: list[str] = list(), " \
        "price: float = 0.0)"
    assert signature("## class Point") == "Point(x: int, y: int = 0)"
    assert signature("## class Box") == "Box(width: int, depth: int = 2)"
    assert signature("## class Order") == "Order(*, id: int, note: str = 'none')"
    assert signature("## class Rush") == "Rush(*, id: int, note: str = 'none', hours: int = 1)"
    assert signature("### Item.price") == "price: float = 0.0"
    assert "The price, in euros." in _section(page, "### Item.price")
    assert "### Order.model_config" not in page
    assert signature("## Count") == "Count = int | None"


def test_constants_and_type_aliases_with_their_docstrings(shop: Path) -> None:
    page = _page(shop, "shop")
    assert _section(page, "## VERSION") == "## VERSION\n\n```python\nVERSION: str = '1.0'\n```" \
        "\n\nThe package version."
    assert _section(page, "## PositiveInt") == "## PositiveInt\n\n```python\n" \
        "PositiveInt = Annotated[int, 'positive']\n```\n\nAn int above zero."


def test_code_under_main_guard_is_not_api(shop: Path) -> None:
    page = _page(shop, "shop")
    assert "main_only" not in page and "A script helper" not in page


def test_an_unparsable_module_is_skipped_with_its_reason(shop: Path) -> None:
    loaded = load_package(shop)
    assert render_page(loaded, "shop.broken") == SkippedPage(
        "could not be parsed: invalid syntax (line 1)")
    assert isinstance(render_page(loaded, "shop"), Page)  # the others still render


def test_same_input_gives_byte_identical_pages(shop: Path) -> None:
    first = {m.name: render_page(load_package(shop), m.name) for m in discover_modules(shop)}
    second = {m.name: render_page(load_package(shop), m.name) for m in discover_modules(shop)}
    assert first == second
    assert all(p.markdown.endswith("\n") and "\n\n\n" not in p.markdown
               for p in first.values() if isinstance(p, Page))


def test_the_package_is_loaded_once_per_state(shop: Path) -> None:
    cache = PackageCache()
    first = cache.get(shop)
    assert cache.get(shop) is first and cache.loads == 1
    models = shop / "models.py"
    models.write_text(models.read_text() + "\nNEW: int = 1\n")
    stat = models.stat()
    os.utime(models, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = cache.get(shop)
    assert second is not first and cache.loads == 2
    assert "## NEW" in render_page(second, "shop.models").markdown


def test_the_package_is_never_imported(shop: Path) -> None:
    (shop / "tools.py").write_text("raise SystemExit('imported!')\ndef helper() -> None: ...\n")
    import sys

    assert "## helper()" in _page(shop, "shop.tools")
    assert "shop" not in sys.modules and "shop.tools" not in sys.modules


def test_the_docs_agent_loads_a_package_once_for_all_its_module_tasks(shop: Path) -> None:
    from orchestrator.agents.docs import _render

    from orchestrator.contracts.docs import RenderedModule, SkippedModule

    cache = PackageCache()
    answers = {m.name: _render(shop, m.name, m.path, cache) for m in discover_modules(shop)}
    assert cache.loads == 1
    assert answers["shop.broken"] == SkippedModule(
        module="shop.broken", skipped="broken.py: could not be parsed: invalid syntax (line 1)")
    shop_page = answers["shop"]
    assert isinstance(shop_page, RenderedModule) and shop_page.summary == "The shop package."
    assert "## class Basket" in shop_page.markdown


# Cases found on real packages (rich, hypothesis, anyio, starlette, urllib3, pygments), one
# module per rule: the inherited constructor, long values, re-exports from outside the package,
# an unreadable __all__, the `as` idiom, TYPE_CHECKING imports, cached functions.
GAPS = {
    "__init__.py": '''
        """Gaps: an __all__ griffe cannot read counts as none (pygments.lexers)."""
        from ._table import TABLE
        from .shapes import Child

        __all__ = ["Child"] + list(TABLE)
    ''',
    "_table.py": '''
        TABLE = {"Child": 1}
    ''',
    "shapes.py": '''
        """Constructors: inherited through the package, ``__new__``, NamedTuple properties."""
        from typing import Generic, NamedTuple, TypeVar

        T = TypeVar("T")


        class Base(Generic[T]):
            def __init__(self, size: int, *, name: str = "b") -> None:
                self.size = size


        class Middle(Base[int]):
            """No __init__: Base's (starlette HTMLResponse, urllib3 exceptions)."""


        class Child(Middle):
            """Two levels down (pygments lexers)."""


        class Limiter:
            """Constructed by __new__ (anyio CapacityLimiter)."""

            def __new__(cls, total: float) -> "Limiter":
                return object.__new__(cls)


        class Triplet(NamedTuple):
            """Properties are not fields (rich ColorTriplet)."""

            red: int
            green: int

            @property
            def hex(self) -> str:
                return "#"
    ''',
    "values.py": '''
        """Long values are elided, type aliases never; annotated attributes are API."""
        from typing import Literal, TypeAlias

        SHORT = {"a": 1}
        LONG = {"key": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "other": "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"}
        Letters: TypeAlias = Literal["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                                     "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                                     "cccccccccccccccccccccccccccccccccccccccccccccccccc",
                                     "dddddddddddddddddddddddddddddddddddddddddddddddddd",
                                     "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"]
        cache: dict[str, str] = {}
    ''',
    "outside.py": '''
        """Re-exports from outside the package: stdlib with the `as` idiom, through a chain,
        from a compiled module griffe cannot read; the module's other imports are its own."""
        from http.client import HTTPException as HTTPException
        from typing import TYPE_CHECKING

        from ._native import version as version
        from ._shapes_private import Hidden
        from .shapes import Limiter as Limiter

        if TYPE_CHECKING:
            from ._typing_only import Protocolish
    ''',
    "chain.py": '''
        """A name in __all__ that a private module takes from the stdlib (urllib3.util)."""
        from ._ssl import SSLContext

        __all__ = ["SSLContext"]
    ''',
    "_ssl.py": '''
        SSLContext = None
        try:
            from ssl import SSLContext
        except ImportError:
            pass
    ''',
    "_shapes_private.py": '''
        class Hidden:
            pass
    ''',
    "typed.py": '''
        """TYPE_CHECKING imports are not re-exports (hypothesis.internal.reflection)."""
        from typing import TYPE_CHECKING

        from ._shapes_private import Hidden

        if TYPE_CHECKING:
            from ._typing_only import Protocolish
    ''',
    "_typing_only.py": '''
        class Protocolish:
            pass
    ''',
    "cached.py": '''
        """A cached function is a function (pygments.plugin, rich.cells)."""
        import functools


        @functools.cache
        def entry_points(group: str) -> list[str]:
            """The entry points of a group."""
            return []


        class Palette:
            @functools.lru_cache(maxsize=16)
            def match(self, color: int) -> int:
                return color
    ''',
    "fences.py": '''
        def first() -> None:
            """Has a note with code (hypothesis example.xfail).

            .. note::

                Text.

                .. code-block:: python

                    x = 1
            """


        def second() -> None:
            """After the note."""
    ''',
}


@pytest.fixture
def gaps(tmp_path: Path) -> Path:
    return _write_package(tmp_path / "gaps", GAPS)


def _code_after(page: str, title: str) -> str:
    section = _section(page, title).split("```python\n", 1)[1]
    return section.split("\n```", 1)[0]


def test_a_class_without_init_shows_the_inherited_constructor(gaps: Path) -> None:
    page = _page(gaps, "gaps.shapes")
    assert _code_after(page, "## class Middle") == "Middle(size: int, *, name: str = 'b')"
    assert _code_after(page, "## class Child") == "Child(size: int, *, name: str = 'b')"
    assert _code_after(page, "## class Limiter") == "Limiter(total: float)"
    assert _code_after(page, "## class Triplet") == "Triplet(red: int, green: int)"
    assert "### Triplet.hex" in page  # the property is documented, as a property


def test_long_values_are_elided_and_type_aliases_are_not(gaps: Path) -> None:
    page = _page(gaps, "gaps.values")
    assert _code_after(page, "## SHORT") == "SHORT = {'a': 1}"
    assert _code_after(page, "## LONG") == "LONG = ..."
    letters = _code_after(page, "## Letters")
    assert letters.startswith("Letters: TypeAlias = Literal['aaaa") and "'eeee" in letters
    assert _code_after(page, "## cache") == "cache: dict[str, str] = {}"


def test_names_from_outside_the_package_say_where_they_come_from(gaps: Path) -> None:
    page = _page(gaps, "gaps.outside")
    headings = [line for line in page.splitlines() if line.startswith("#")]
    # Hidden is the module's own import (it marks re-exports with `as`); Protocolish exists
    # only for the type checker
    assert headings == ["# gaps.outside", "## HTTPException", "## version", "## class Limiter"]
    assert _section(page, "## HTTPException") == (
        "## HTTPException\n\n```python\nfrom http.client import HTTPException\n```\n\n"
        "Defined in `http.client`.")
    assert "from gaps._native import version" in _section(page, "## version")
    chain = _page(gaps, "gaps.chain")
    assert "```python\nfrom ssl import SSLContext\n```\n\nDefined in `ssl`." in chain


def test_type_checking_imports_are_not_reexports(gaps: Path) -> None:
    page = _page(gaps, "gaps.typed")
    assert "## class Hidden" in page  # from a private module, at run time
    assert "Protocolish" not in page


def test_an_all_griffe_cannot_read_counts_as_none(gaps: Path) -> None:
    page = _page(gaps, "gaps")
    assert "## TABLE" in page and "## class Child" in page


def test_a_cached_function_is_documented_as_a_function(gaps: Path) -> None:
    page = _page(gaps, "gaps.cached")
    assert "## entry_points()" in page
    assert "def entry_points(group: str) -> list[str]" in page
    assert "### Palette.match()" in page


def test_a_code_block_inside_a_note_closes_inside_it(gaps: Path) -> None:
    page = _page(gaps, "gaps.fences")
    assert page.count("```") % 2 == 0
    assert "> ```python\n>\n> x = 1\n> ```\n\n## second()" in page


def test_the_gaps_package_matches_griffe(gaps: Path, tmp_path: Path) -> None:
    from .support.apidocs_check import check

    out = tmp_path / "docs"
    out.mkdir()
    loaded = load_package(gaps)
    for module in discover_modules(gaps):
        page = render_page(loaded, module.name)
        if isinstance(page, Page):
            (out / f"{module.name}.md").write_text(page.markdown)
    report = check(gaps, out)
    assert report.public >= 20, report.summary()
    assert (report.coverage, report.mismatches) == (100.0, []), report.summary()


def test_an_admonition_first_in_a_docstring_renders(tmp_path: Path) -> None:
    """Found by the README's main job (pydantic): a docstring whose first admonition came before
    any reST directive failed with UnboundLocalError, and the whole run with it."""
    package = tmp_path / "notes"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        """Notes."""


        def tip() -> None:
            """!!! warning "Mind the gap"
                Between the train and the platform.
            """
    '''))
    page = render_page(load_package(package), "notes")
    assert isinstance(page, Page)
    assert "> **Mind the gap**" in page.markdown
    assert "Between the train and the platform." in page.markdown


def test_a_renderer_failure_on_one_module_skips_it_with_the_reason(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """One module the renderer trips on is skipped (the index says why), not the whole run."""
    from orchestrator.agents import docs as docs_agent

    from orchestrator.contracts.docs import SkippedModule

    package = tmp_path / "tiny"
    package.mkdir()
    (package / "__init__.py").write_text('"""Tiny."""\n')

    def broken(*args, **kwargs):
        raise ValueError("a docstring nobody expected")

    monkeypatch.setattr(docs_agent, "render_page", broken)
    result = docs_agent._render(package, "tiny", "__init__.py", PackageCache())
    assert isinstance(result, SkippedModule)
    assert result.skipped == ("__init__.py: could not be rendered (ValueError: a docstring "
                              "nobody expected); please report it")


def test_a_package_named_pydantic_something_is_not_all_models(tmp_path: Path) -> None:
    """Found on pydantic itself: every class whose base lived in a package named ``pydantic...``
    was taken for a model, and its inherited ``__init__`` was documented as ``Url()``."""
    package = tmp_path / "pydantic_extras"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        """Extras."""


        class _Base:
            def __init__(self, url: str) -> None:
                self.url = url


        class Url(_Base):
            """A URL."""
    '''))
    page = render_page(load_package(package), "pydantic_extras")
    assert isinstance(page, Page)
    assert "Url(url: str)" in page.markdown

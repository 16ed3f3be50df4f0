"""The docs ``parallel_docs`` writes, compared with griffe's static listing of the package:
every public name users can import has a heading, every signature matches (the checker is
``tests/support/apidocs_check.py``; its rules are in its docstring).

The first tests check the checker itself on hand-written Markdown; the last ones run the
workflow on fixture packages with the tricky cases (re-exports through ``__all__``, ``from ._impl
import X`` and wildcards, overloads, dataclasses, NamedTuples, pydantic models, properties,
constants and aliases with docstrings, an ``if __name__ == "__main__":`` block)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from .support.apidocs_check import check, expected_api, normalize, parse_block, parse_page


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


# A small package for the checker's own tests.
SMALL = {
    "__init__.py": '''
        """Small."""
        from ._impl import Engine, run
        from .models import Point
        from typing import Any

        LIMIT = 10
        """The limit."""

        PositiveInt = int
        """A positive int."""

        helper_count = 3

        if __name__ == "__main__":
            def main() -> None:
                pass
    ''',
    "_impl.py": '''
        from typing import overload


        class Engine:
            """An engine."""

            speed: int = 3
            """Speed."""

            def __init__(self, power: int, *, name: str = "e") -> None:
                self.power = power

            @property
            def kind(self) -> str:
                return "x"

            async def stop(self, force: bool = False) -> None:
                """Stop."""

            def _hidden(self) -> None:
                pass


        @overload
        def run(a: int) -> int: ...
        @overload
        def run(a: str, b: int = ...) -> str: ...
        def run(a, b=2):
            """Run."""
            return a
    ''',
    "models.py": '''
        from dataclasses import dataclass, field

        from pydantic import BaseModel, Field

        __all__ = ["Point", "User"]


        @dataclass
        class Point:
            x: int
            tags: list[str] = field(default_factory=list)


        class User(BaseModel):
            name: str
            age: int = Field(default=3, ge=0)
    ''',
}

SMALL_DOCS = {
    "small.md": '''
        # small

        Small.

        ## class Engine

        ```python
        Engine(power: int, *, name: str = 'e')
        ```

        Defined in [small._impl]. An engine.

        ### Engine.speed

        ```python
        speed: int = 3
        ```

        ### Engine.kind

        ```python
        kind: str
        ```

        ### Engine.stop()

        ```python
        async def stop(self, force: bool = False) -> None
        ```

        ## run()

        ```python
        @overload
        def run(a: int) -> int
        @overload
        def run(a: str, b: int = ...) -> str
        def run(a, b=2)
        ```

        ## class Point

        ```python
        Point(x: int, tags: list[str] = list())
        ```

        ### Point.x

        ```python
        x: int
        ```

        ### Point.tags

        ```python
        tags: list[str] = field(default_factory=list)
        ```

        ## LIMIT

        ```python
        LIMIT = 10
        ```

        ## PositiveInt

        ```python
        PositiveInt = int
        ```
    ''',
    "small.models.md": '''
        # small.models

        ## class Point

        ```python
        Point(x: int, tags: list[str] = list())
        ```

        ### Point.x

        ```python
        x: int
        ```

        ### Point.tags

        ```python
        tags: list[str] = field(default_factory=list)
        ```

        ## class User

        ```python
        User(*, name: str, age: int = 3)
        ```

        ### User.name

        ```python
        name: str
        ```

        ### User.age

        ```python
        age: int = Field(default=3, ge=0)
        ```
    ''',
}


def _small(tmp_path: Path, docs: dict[str, str] | None = None) -> tuple[Path, Path]:
    package = _write(tmp_path / "src" / "small", SMALL)
    out = _write(tmp_path / "docs", SMALL_DOCS if docs is None else docs)
    return package, out


def test_the_public_api_is_what_users_import(tmp_path) -> None:
    package, _ = _small(tmp_path)
    entries, unknown = expected_api(package)
    required = {f"{e.page}:{e.key}" for e in entries if e.required}
    assert required == {
        "small:Engine", "small:Engine.speed", "small:Engine.kind", "small:Engine.stop",
        "small:run", "small:Point", "small:Point.x", "small:Point.tags", "small:LIMIT",
        "small:PositiveInt",
        "small.models:Point", "small.models:Point.x", "small.models:Point.tags",
        "small.models:User", "small.models:User.name", "small.models:User.age",
    }
    everything = {f"{e.page}:{e.key}" for e in entries}
    # not API: the __main__ block, an import from outside, a private module's page, _hidden;
    # an undocumented lowercase module attribute is checked when documented, not required
    assert "small:main" not in everything and "small:Any" not in everything
    assert not any(k.startswith("small._impl") or "_hidden" in k for k in everything)
    assert "small:helper_count" in everything - required
    assert unknown == []


def test_hand_written_docs_that_say_it_all_pass(tmp_path) -> None:
    report = check(*_small(tmp_path))
    assert (report.coverage, report.missing, report.mismatches) == (100.0, [], []), \
        report.summary()
    assert report.checked == report.public


def test_a_missing_heading_is_listed(tmp_path) -> None:
    docs = dict(SMALL_DOCS)
    docs["small.md"] = docs["small.md"].replace("## LIMIT", "## LIMITS")
    docs["small.models.md"] = docs["small.models.md"].replace("### User.age", "### User.ag")
    report = check(*_small(tmp_path, docs))
    assert report.missing == ["small:LIMIT", "small.models:User.age"]
    assert report.public == 16 and report.documented == 14


def test_signature_differences_are_mismatches(tmp_path) -> None:
    docs = dict(SMALL_DOCS)
    page = docs["small.md"]
    for old, new in [
        ("name: str = 'e'", "name: str = 'f'"),  # a default
        ("async def stop(self, force", "def stop(self, force"),  # async
        ("@overload\n        def run(a: int) -> int\n", ""),  # an overload left out
        ("LIMIT = 10", "LIMIT = 11"),  # a constant's value
        ("## class Point", "## Point"),  # the kind of a heading
    ]:
        assert old in page, old
        page = page.replace(old, new, 1)
    docs["small.md"] = page
    docs["small.models.md"] = docs["small.models.md"].replace(
        "User(*, name: str, age: int = 3)", "User(name: str, age: int = 3)")  # kinds
    report = check(*_small(tmp_path, docs))
    assert report.coverage == 100.0
    wrong = sorted(m.split(":")[0] + ":" + m.split(":")[1] for m in report.mismatches)
    assert wrong == sorted(["small:Engine", "small:Engine.stop", "small:LIMIT", "small:Point",
                            "small:run", "small.models:User"]), report.summary()


def test_a_heading_without_its_signature_block_is_a_mismatch(tmp_path) -> None:
    docs = dict(SMALL_DOCS)
    docs["small.md"] = docs["small.md"].replace(
        "## LIMIT\n\n        ```python\n        LIMIT = 10\n        ```", "## LIMIT\n\n        Ten.")
    report = check(*_small(tmp_path, docs))
    assert [m.split(":", 2)[1] for m in report.mismatches] == ["LIMIT"]


def test_headings_in_code_blocks_are_not_headings() -> None:
    page = parse_page("# m\n\n```text\n## f()\n```\n\n## g()\n\n```python\ndef g()\n```\n")
    assert list(page) == ["g"] and page["g"].code == "def g()"


def test_signatures_are_compared_as_expressions() -> None:
    assert normalize('"int | None"', annotation=True) == "int | None"
    assert normalize("dict[str,   int]") == "dict[str, int]"
    assert normalize('"x"') == normalize("'x'")
    assert normalize("Optional['Console']", annotation=True) == "Optional[Console]"
    assert normalize("Literal['a b']", annotation=True) == "Literal['a b']"
    wrapped = parse_block("function", "def f(a: int,\n      b: str = 'x') -> None", "f")
    flat = parse_block("function", 'def f(a: "int", b: str="x")->None', "f")
    assert wrapped == flat and wrapped.function is not None and len(wrapped.function.params) == 2
    classvar = parse_block("attribute", "dims: typing.ClassVar[int] = 2", "dims")
    assert (classvar.annotation, classvar.value) == ("int", "2")  # as griffe unwraps it
    prop = parse_block("attribute", "@property\ndef kind(self) -> 'str'", "kind")
    assert (prop.kind, prop.annotation, prop.value) == ("attribute", "str", None)



# Where the checker was wrong, found on real packages (bench/apidocs.py).
CONVENTIONS = {
    "__init__.py": '''
        from typing import TYPE_CHECKING

        from ._lazy import install_helper
        from ._impl import Limiter as Limiter

        if TYPE_CHECKING:
            from ._impl import OnlyTyped
    ''',
    "_lazy.py": '''
        def install_helper() -> bool:
            return True
    ''',
    "_impl.py": '''
        class Limiter:
            def __new__(cls, total: float) -> "Limiter":
                return object.__new__(cls)

        class OnlyTyped:
            pass
    ''',
    "plain.py": '''
        from typing import TYPE_CHECKING

        from ._impl import OnlyTyped as _unused, Limiter

        if TYPE_CHECKING:
            from ._lazy import install_helper

        TABLE = {"key": "''' + "x" * 250 + '''"}
        SMALL = {"key": "x"}
    ''',
}


def test_a_module_using_the_as_idiom_reexports_only_those(tmp_path) -> None:
    # anyio's __init__ imports its lazy-import helpers without `as` and its API with it;
    # griffe and pyright read only the `as` ones as re-exports
    package = _write(tmp_path / "src" / "conv", CONVENTIONS)
    entries, _ = expected_api(package)
    keys = {f"{e.page}:{e.key}" for e in entries}
    assert "conv:Limiter" in keys and "conv:install_helper" not in keys


def test_type_checking_imports_are_not_api(tmp_path) -> None:
    # urllib3.connectionpool imports BaseHTTPConnection for annotations only: not importable
    package = _write(tmp_path / "src" / "conv", CONVENTIONS)
    keys = {f"{e.page}:{e.key}" for e in expected_api(package)[0]}
    assert "conv:OnlyTyped" not in keys and "conv.plain:install_helper" not in keys
    assert "conv.plain:Limiter" in keys  # a run-time import from a private module still is


def test_a_class_constructed_by_new_expects_its_parameters(tmp_path) -> None:
    # anyio.CapacityLimiter(total_tokens), urllib3's Url(scheme=None, ...): not `()`
    package = _write(tmp_path / "src" / "conv", CONVENTIONS)
    limiter = next(e for e in expected_api(package)[0] if e.key == "Limiter")
    assert str(limiter.signature) == "(total: float)"


def test_long_values_must_be_elided_and_short_ones_shown(tmp_path) -> None:
    package = _write(tmp_path / "src" / "conv", CONVENTIONS)

    def report(table: str, small: str):
        docs = _write(tmp_path / "docs" / table[:5], {"conv.plain.md": f"""
            # conv.plain

            ## class Limiter

            ```python
            Limiter(total: float)
            ```

            ## TABLE

            ```python
            {table}
            ```

            ## SMALL

            ```python
            {small}
            ```
        """})
        return check(package, docs)

    good = report("TABLE = ...", "SMALL = {'key': 'x'}")
    assert [m for m in good.mismatches if m.startswith("conv.plain")] == [], good.summary()
    full = report("TABLE = {'key': '" + "x" * 250 + "'}", "SMALL = ...")
    wrong = sorted(m.split(":")[1] for m in full.mismatches if m.startswith("conv.plain"))
    assert wrong == ["SMALL", "TABLE"], full.summary()


# The fixture packages the workflow documents: the cases the renderer must get right.
TRICKY = {
    "__init__.py": '''
        """Tricky: re-exports through __all__."""
        from . import models
        from ._impl import Engine, run
        from .models import *
        from .shapes import Shape as Shape

        __all__ = ["Engine", "run", "Point", "Pair", "User", "Admin", "Shape", "VERSION",
                   "PositiveInt", "models"]

        VERSION: str = "1.0"
        """The version."""

        PositiveInt = int
        """A positive int."""
    ''',
    "_impl.py": '''
        """Where the engine is defined."""
        from typing import overload


        class Engine:
            """An engine.

            Attributes:
                speed: how fast.
            """

            speed: int = 3
            """Speed."""

            def __init__(self, power: int, *, name: str = "e") -> None:
                self.power = power
                """The power."""

            @property
            def kind(self) -> str:
                """The kind."""
                return "x"

            @overload
            def go(self, x: int) -> int: ...
            @overload
            def go(self, x: str) -> str: ...
            def go(self, x):
                """Go somewhere."""
                return x

            async def stop(self, force: bool = False) -> None:
                """Stop."""

            @classmethod
            def build(cls, power: int = 1) -> "Engine":
                return cls(power)

            @staticmethod
            def units() -> list[str]:
                return ["hp"]


        @overload
        def run(a: int) -> int: ...
        @overload
        def run(a: str, b: int = ...) -> str: ...
        def run(a, b=2):
            """Run the engine.

            >>> run(1)
            1
            """
            return a
    ''',
    "models.py": '''
        """Data models."""
        from dataclasses import dataclass, field
        from typing import ClassVar, NamedTuple

        from pydantic import BaseModel, Field

        __all__ = ["Point", "Pair", "User", "Admin"]


        @dataclass(frozen=True)
        class Point:
            """A point."""

            x: int
            y: int = 0
            tags: list[str] = field(default_factory=list)
            dims: ClassVar[int] = 2


        class Pair(NamedTuple):
            """A pair."""

            a: int
            b: str = "x"


        class User(BaseModel):
            """A user."""

            model_config = {"frozen": True}
            name: str
            age: int = Field(default=3, ge=0)
            groups: list[str] = Field(default_factory=list)


        class Admin(User):
            """An administrator."""

            level: int = 1
    ''',
    "shapes.py": '''
        """Shapes."""


        class Shape:
            """A shape without a constructor of its own."""

            sides = 0

            def area(self) -> float:
                return 0.0
    ''',
    "tools/__init__.py": '''
        """Tools: no __all__; re-exports from a private module and, in an __init__, from the
        package's modules."""
        import logging
        from typing import Any, TypeVar

        from ._core import Tool
        from .helpers import helper

        T = TypeVar("T")

        MAX_SIZE = 10
        """The largest size."""

        Number = int | float
        """A number."""

        log = logging.getLogger(__name__)


        def make_tool(name: str = "t", *, size: int = MAX_SIZE) -> Tool:
            """Make a tool."""
            return Tool(name)


        if __name__ == "__main__":
            def main() -> None:
                print(make_tool())

            CLI_FLAG = True
    ''',
    "tools/_core.py": '''
        class Tool:
            """A tool."""

            def __init__(self, name: str, /, *args: int, **options: Any) -> None:
                self.name = name

            def use(self, times: "int | None" = None) -> bool:
                """Use it."""
                return True
    ''',
    "tools/helpers.py": '''
        """Helpers."""
        from ..shapes import Shape


        def helper(x: Shape, *, verbose: bool = False) -> "Shape":
            """Help."""
            return x


        def _private() -> None:
            pass
    ''',
    "__main__.py": '''
        from . import run

        run(1)
    ''',
}


async def _document(orchestrator, package: Path, out: Path) -> None:
    result = await orchestrator.run("parallel_docs", {"package": str(package),
                                                      "output": str(out)})
    assert result.status == "completed", result.error


async def test_every_public_name_of_the_tricky_package_is_documented(
    orchestrator, tmp_path
) -> None:
    package = _write(tmp_path / "src" / "tricky", TRICKY)
    out = tmp_path / "docs"
    await _document(orchestrator, package, out)
    report = check(package, out)
    assert report.public >= 40  # the checker found the API (a sanity check of the fixture)
    assert report.missing == [], report.summary()
    assert report.coverage == 100.0


async def test_every_signature_of_the_tricky_package_matches_griffe(
    orchestrator, tmp_path
) -> None:
    package = _write(tmp_path / "src" / "tricky", TRICKY)
    out = tmp_path / "docs"
    await _document(orchestrator, package, out)
    report = check(package, out)
    assert report.mismatches == [], report.summary()


async def test_the_small_package_documents_as_written_by_hand(orchestrator, tmp_path) -> None:
    package, _ = _small(tmp_path)
    out = tmp_path / "rendered"
    await _document(orchestrator, package, out)
    report = check(package, out)
    assert (report.coverage, report.missing, report.mismatches) == (100.0, [], []), \
        report.summary()

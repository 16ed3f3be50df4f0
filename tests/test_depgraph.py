"""Tests for agents.lib.depgraph (import-dependency analysis of Python / JS / TS repositories)."""

from __future__ import annotations

import itertools
import json
import random
import textwrap
import time
from pathlib import Path

import pytest
from orchestrator.agents.lib.depgraph import SUFFIXES, DependencyGraph, analyze
from orchestrator.agents.lib.depgraph import graph as graph_module


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def graph(edges: list[tuple[str, str]], files: list[str] | None = None) -> DependencyGraph:
    names = sorted(set(files or []) | {name for edge in edges for name in edge})
    return DependencyGraph(root="/repo", files=names, edges=sorted(set(edges)))


# --------------------------------------------------------------------------------------
# Python
# --------------------------------------------------------------------------------------

PY_REPO = {
    # __init__ re-export: a relative import of a sibling module
    "app/__init__.py": "from .models import User\n",
    "app/models.py": """
        import os
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from app.services import billing

        class User: ...
        """,
    "app/services/__init__.py": "VERSION = 1\n",
    "app/services/billing.py": """
        from . import payments           # a submodule -> payments.py
        from . import VERSION            # a name -> the package's __init__
        from ..models import User        # two levels
        from .. import util              # a sub-package -> util/__init__.py
        """,
    "app/services/payments.py": """
        def pay():
            import app.util.strings      # inside a function; no edge to parent __init__s
            return app.util.strings
        """,
    "app/services/deep/__init__.py": """
        from ... import models           # three levels -> app/models.py
        from ...util.strings import shout
        from ....toohigh import nothing  # climbs out of the repository
        try:
            from app.services import billing, VERSION   # submodule + name
        except ImportError:
            pass
        """,
    "app/util/__init__.py": """
        from app.util import strings as strings
        from app import models
        """,
    "app/util/strings.py": """
        import json, requests            # stdlib and third-party: ignored
        import numpy.linalg
        import app.util.missing          # longest existing prefix + unresolved

        def shout(text):
            return text.upper()
        """,
    "app/star.py": "from app.services.payments import *\nimport app.nothing_here\n",
    "app/broken.py": "import app.models\ndef f(:\n    pass\n",
    "app/nul.py": "import app.models\x00\n",
    # a cycle of three in a namespace package (no __init__.py)
    "cyc/a.py": "import cyc.b\n",
    "cyc/b.py": "from cyc import c\nfrom cyc import nothing\n",
    "cyc/c.py": "class C:\n    def m(self):\n        from cyc.a import X\n",
    "selfish.py": "import selfish\n",
    # src layout
    "src/lib/__init__.py": "",
    "src/lib/core.py": "from lib import helpers\nfrom .helpers import tool\n",
    "src/lib/helpers.py": "import app.models\n",
    "main.py": "from lib.core import run\nimport lib\nimport os.path\nfrom collections import abc\n",
    # a namespace package's module named like a standard-library one: not a script folder
    "ns/typing.py": "import typing\n",
    "ns/run.py": "import typing\nfrom helper import thing\nimport app\nimport ns.typing\n",
    "ns/helper.py": "thing = 1\n",
    # an extension module and a stub-only module satisfy imports without an edge
    "app/_speedups.cpython-311-x86_64-linux-gnu.so": "",
    "app/typed.pyi": "",
    "uses_native.py": "from app import _speedups\nimport app._speedups.sub\nimport app.typed\n",
    # a package and a module of the same name: the package wins
    "dup/__init__.py": "",
    "dup/both.py": "",
    "dup/both/__init__.py": "",
    "uses_dup.py": "import dup.both\n",
}

PY_EDGES = {
    ("app/__init__.py", "app/models.py"),
    ("app/models.py", "app/services/billing.py"),
    ("app/services/billing.py", "app/services/payments.py"),
    ("app/services/billing.py", "app/services/__init__.py"),
    ("app/services/billing.py", "app/models.py"),
    ("app/services/billing.py", "app/util/__init__.py"),
    ("app/services/payments.py", "app/util/strings.py"),
    ("app/services/deep/__init__.py", "app/models.py"),
    ("app/services/deep/__init__.py", "app/util/strings.py"),
    ("app/services/deep/__init__.py", "app/services/billing.py"),
    ("app/services/deep/__init__.py", "app/services/__init__.py"),
    ("app/util/__init__.py", "app/util/strings.py"),
    ("app/util/__init__.py", "app/models.py"),
    ("app/util/strings.py", "app/util/__init__.py"),
    ("app/star.py", "app/services/payments.py"),
    ("app/star.py", "app/__init__.py"),
    ("cyc/a.py", "cyc/b.py"),
    ("cyc/b.py", "cyc/c.py"),
    ("cyc/c.py", "cyc/a.py"),
    ("selfish.py", "selfish.py"),
    ("src/lib/core.py", "src/lib/helpers.py"),
    ("src/lib/helpers.py", "app/models.py"),
    ("main.py", "src/lib/core.py"),
    ("main.py", "src/lib/__init__.py"),
    ("ns/run.py", "app/__init__.py"),
    ("ns/run.py", "ns/typing.py"),
    ("uses_dup.py", "dup/both/__init__.py"),
}


def test_python_edges_unresolved_and_errors(tmp_path: Path) -> None:
    root = write(tmp_path, PY_REPO)
    g = analyze(root)
    assert g.root == str(tmp_path.resolve())
    assert g.files == sorted(rel for rel in PY_REPO if rel.endswith(".py"))
    assert set(g.edges) == PY_EDGES
    assert g.edges == sorted(g.edges)
    assert g.unresolved == {
        "app/services/deep/__init__.py": {"....toohigh": "outside_repository"},
        "app/star.py": {"app.nothing_here": "not_found"},
        "app/util/strings.py": {"app.util.missing": "not_found", "numpy.linalg": "package",
                                "requests": "package"},
        "cyc/b.py": {"cyc.nothing": "not_found"},
        "ns/run.py": {"helper": "package"},  # a script's folder is not an import root
    }
    assert list(g.errors) == ["app/broken.py", "app/nul.py"]
    assert "SyntaxError" in g.errors["app/broken.py"] and "line 2" in g.errors["app/broken.py"]
    assert g.dependencies("app/services/billing.py") == [
        "app/models.py", "app/services/__init__.py", "app/services/payments.py",
        "app/util/__init__.py",
    ]
    assert g.dependents("app/models.py") == [
        "app/__init__.py", "app/services/billing.py", "app/services/deep/__init__.py",
        "app/util/__init__.py", "src/lib/helpers.py",
    ]
    assert ["selfish.py"] in g.cycles()
    assert ["cyc/a.py", "cyc/b.py", "cyc/c.py"] in g.cycles()
    assert ["cyc/a.py", "cyc/b.py", "cyc/c.py"] in g.components()
    assert ["selfish.py"] in g.components()


def test_python_excluded_and_hidden_folders(tmp_path: Path) -> None:
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\nimport pkg.c\nimport pkg.d\n",
        "pkg/b.py": "",
        "pyproject.toml": "",  # build/ beside it is the build's output
        "build/pkg/c.py": "",
        ".hidden/pkg/c.py": "",
        "node_modules/x/index.js": "",
        "vendor/d.py": "",
    })
    g = analyze(tmp_path)
    assert g.files == ["pkg/__init__.py", "pkg/a.py", "pkg/b.py", "vendor/d.py"]
    # a missing submodule: the longest existing prefix (the package) + unresolved
    assert g.edges == [("pkg/a.py", "pkg/__init__.py"), ("pkg/a.py", "pkg/b.py")]
    assert g.unresolved == {"pkg/a.py": {"pkg.c": "not_found", "pkg.d": "not_found"}}
    g2 = analyze(tmp_path, exclude={"vendor"})
    assert "build/pkg/c.py" in g2.files and "vendor/d.py" not in g2.files
    assert ".hidden/pkg/c.py" not in g2.files


def test_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere"):
        analyze(tmp_path / "nowhere")
    (tmp_path / "file.py").write_text("")
    with pytest.raises(ValueError, match="file.py"):
        analyze(tmp_path / "file.py")


# --------------------------------------------------------------------------------------
# JavaScript / TypeScript
# --------------------------------------------------------------------------------------

JS_REPO = {
    "tsconfig.json": """
        // comments and trailing commas, as tsc allows
        {
          "compilerOptions": {
            "baseUrl": ".",  /* block comment */
            "outDir": "out//not-a-comment/*also-not*/",
            "paths": {
              "@/*": ["src/*"],
              "@lib": ["lib/index.ts"],
              "~/*": ["nope/*", "src/alt/*",],
            },
          },
        }
        """,
    "src/index.ts": """
        import a from "./a";
        import "./side";
        import type { T } from "./types";
        export * from "./reexport";
        export { x } from "./esm.js";
        import { y } from "@/util/strings";
        import lib from "@lib";
        import alt from "~/alt";
        import React from "react";
        import fs from "node:fs";
        import missing from "./missing";
        import gone from "@/gone";
        import css from "./styles.css";
        import sub from "./sub";
        import x = require("./cjs");
        const lazy = () => import("./lazy");
        const tpl = import(`./tpl`);
        const computed = import(`./x/${name}`);
        const dyn = require(name);
        """,
    "src/a.ts": "export default 1;\n",
    "src/side.js": "window.x = 1;\n",
    "src/types.ts": "export type T = number;\n",
    "src/reexport/index.ts": "export * from '../a';\n",
    "src/esm.ts": "export const x = 1;\n",
    "src/util/strings.ts": "export const y = 1;\n",
    "lib/index.ts": "export default 1;\n",
    "src/alt/alt.tsx": "export default () => <div />;\n",
    "src/styles.css": "body {}\n",
    "src/sub/index.js": "module.exports = require('.' + '/x');\n",
    "src/sub/inner.jsx": "import s from '.';\nimport up from '..';\nexport default <p>{s}</p>;\n",
    "src/cjs.cjs": "module.exports = require('./util/strings');\n",
    "src/lazy.mjs": "export default await import('./esm.js');\n",
    "src/tpl.jsx": "export default 1;\n",
    "src/legacy.js": """
        const u = require("./util/strings");
        const v = require('./util/strings.js');
        const w = require("lodash");
        """,
    "src/comp.tsx": """
        import React from "react";
        import { a } from "./a";
        notRequire("./side");            // only require() and import() are imports
        window.require("./side");
        export const C = () => <div>{a}</div>;
        """,
    "src/broken.ts": "import { a } from './a';\nlet = ;\nimport './side';\n",
    "src/out.js": "import up from '../../outside';\n",
    "packages/web/tsconfig.json": '{"extends": "../../tsconfig.base"}\n',
    "tsconfig.base.json": '{"compilerOptions": {"paths": {"#shared/*": ["shared/*"]}}}\n',
    "packages/web/main.ts": "import log from '#shared/log';\nimport y from '@/util/strings';\n",
    "shared/log.ts": "export default console.log;\n",
}

JS_EDGES = {
    ("src/index.ts", "src/a.ts"),
    ("src/index.ts", "src/side.js"),
    ("src/index.ts", "src/types.ts"),
    ("src/index.ts", "src/reexport/index.ts"),
    ("src/index.ts", "src/esm.ts"),
    ("src/index.ts", "src/util/strings.ts"),
    ("src/index.ts", "lib/index.ts"),
    ("src/index.ts", "src/alt/alt.tsx"),
    ("src/index.ts", "src/sub/index.js"),
    ("src/index.ts", "src/cjs.cjs"),
    ("src/index.ts", "src/lazy.mjs"),
    ("src/index.ts", "src/tpl.jsx"),
    ("src/reexport/index.ts", "src/a.ts"),
    ("src/sub/inner.jsx", "src/sub/index.js"),
    ("src/sub/inner.jsx", "src/index.ts"),
    ("src/cjs.cjs", "src/util/strings.ts"),
    ("src/lazy.mjs", "src/esm.ts"),
    ("src/legacy.js", "src/util/strings.ts"),
    ("src/comp.tsx", "src/a.ts"),
    ("src/broken.ts", "src/a.ts"),
    ("src/broken.ts", "src/side.js"),
    ("packages/web/main.ts", "shared/log.ts"),
}


def test_js_ts_edges(tmp_path: Path) -> None:
    root = write(tmp_path, JS_REPO)
    g = analyze(root)
    assert g.files == sorted(rel for rel in JS_REPO if rel.endswith(SUFFIXES))
    assert set(g.edges) == JS_EDGES
    # "@/util/strings" from packages/web: its own tsconfig (extends the base) has no "@/*"
    assert g.unresolved == {
        "src/index.ts": {"./missing": "not_found", "@/gone": "not_found", "name": "computed",
                         "`./x/${name}`": "computed", "react": "package"},
        "src/legacy.js": {"lodash": "package"},
        "src/comp.tsx": {"react": "package"},
        "src/out.js": {"../../outside": "outside_repository"},
        "src/sub/index.js": {"'.' + '/x'": "computed"},
        "packages/web/main.ts": {"@/util/strings": "package"},  # no alias there: a package
    }
    assert list(g.errors) == ["src/broken.ts"]
    assert "line 2" in g.errors["src/broken.ts"]


def test_ts_prefers_typescript_source_for_js_specifier(tmp_path: Path) -> None:
    write(tmp_path, {
        "a.ts": "import b from './b.js';\n",
        "a.js": "import b from './b.js';\n",  # compiled output next to the source
        "b.ts": "",
        "b.js": "",
        "c.ts": "import d from './d.jsx';\nimport e from './e';\nimport f from './f';\n",
        "d.tsx": "",
        "e.d.ts": "",
        "e/index.ts": "",
        "f/index.mjs": "",
    })
    g = analyze(tmp_path)
    assert set(g.edges) == {
        ("a.ts", "b.ts"), ("a.js", "b.js"),
        ("c.ts", "d.tsx"), ("c.ts", "e.d.ts"), ("c.ts", "f/index.mjs"),
    }


def test_jsconfig_and_lenient_config_errors(tmp_path: Path) -> None:
    write(tmp_path, {
        "web/jsconfig.json": '{"compilerOptions": {"baseUrl": "src"}}',
        "web/src/app.js": "import util from 'util/fmt';\nimport r from 'react';\n",
        "web/src/util/fmt.js": "",
        "bad/tsconfig.json": "{ not json",
        "bad/x.ts": "import y from 'y';\nimport z from './z';\n",
        "bad/z.ts": "",
    })
    g = analyze(tmp_path)
    assert set(g.edges) == {("web/src/app.js", "web/src/util/fmt.js"), ("bad/x.ts", "bad/z.ts")}
    assert g.unresolved == {"web/src/app.js": {"react": "package"}, "bad/x.ts": {"y": "package"}}
    assert list(g.errors) == ["bad/tsconfig.json"]


# --------------------------------------------------------------------------------------
# A plan's files: paths + overrides
# --------------------------------------------------------------------------------------


def test_plan_paths_and_overrides(tmp_path: Path) -> None:
    write(tmp_path, {
        "app/__init__.py": "",
        "app/models.py": "import app.util\n",
        "app/util.py": "",
        "web/main.ts": "import { api } from './api';\n",
    })
    overrides = {
        "app/api.py": "from app.models import User\nfrom app import schemas\nimport app.util\n",
        "app/schemas.py": "from .models import Base\nfrom .nowhere import x\n",
        "web/api.ts": "export const api = 1;\n",
        "web/main.ts": "import { api } from './api';\nimport { h } from './helpers';\n",
    }
    plan = ["app/api.py", "app/schemas.py", str(tmp_path / "app/models.py"), "./web/main.ts",
            "web/api.ts", "docs/guide.md", "app/ghost.py"]
    g = analyze(tmp_path, paths=plan, overrides=overrides)
    assert g.files == sorted(["app/api.py", "app/schemas.py", "app/models.py", "web/main.ts",
                              "web/api.ts", "docs/guide.md", "app/ghost.py"])
    assert set(g.edges) == {
        ("app/api.py", "app/models.py"),
        ("app/api.py", "app/schemas.py"),
        ("app/schemas.py", "app/models.py"),
        ("web/main.ts", "web/api.ts"),
    }
    # app.util exists in the repository: satisfied, not an edge and not unresolved
    assert g.unresolved == {"app/schemas.py": {".nowhere": "not_found"},
                            "web/main.ts": {"./helpers": "not_found"}}
    assert list(g.errors) == ["app/ghost.py", "docs/guide.md"]
    assert g.batches() == [
        ["app/ghost.py", "app/models.py", "docs/guide.md", "web/api.ts"],
        ["app/schemas.py", "web/main.ts"],
        ["app/api.py"],
    ]
    # the same overrides without ``paths``: the whole repository plus the new files
    whole = analyze(tmp_path, overrides=overrides)
    assert "app/util.py" in whole.files and "app/api.py" in whole.files
    assert ("app/models.py", "app/util.py") in whole.edges
    assert ("app/api.py", "app/util.py") in whole.edges
    with pytest.raises(ValueError, match="outside"):
        analyze(tmp_path, paths=["../elsewhere.py"])


def test_override_tsconfig(tmp_path: Path) -> None:
    write(tmp_path, {"src/a.ts": "import b from '@/b';\n", "src/b.ts": ""})
    assert analyze(tmp_path).edges == []
    g = analyze(tmp_path, overrides={
        "tsconfig.json": '{"compilerOptions": {"paths": {"@/*": ["./src/*"]}}}'})
    assert g.edges == [("src/a.ts", "src/b.ts")]


# --------------------------------------------------------------------------------------
# Graph algorithms
# --------------------------------------------------------------------------------------


def test_overlapping_cycles_components_and_self_loop() -> None:
    g = graph([("a", "b"), ("b", "a"), ("b", "c"), ("c", "a"), ("d", "e"), ("e", "d"),
               ("f", "f"), ("f", "a"), ("g", "d")])
    assert g.cycles() == [["a", "b"], ["a", "b", "c"], ["d", "e"], ["f"]]
    assert g.components() == [["a", "b", "c"], ["d", "e"], ["f"]]
    assert g.batches() == [["a", "b", "c", "d", "e"], ["f", "g"]]


def test_cycles_rotated_to_smallest_file() -> None:
    g = graph([("m", "z"), ("z", "b"), ("b", "m")])
    assert g.cycles() == [["b", "m", "z"]]


def _brute_force_cycles(g: DependencyGraph) -> list[list[str]]:
    succ = {f: g.dependencies(f) for f in g.files}
    found: list[list[str]] = []

    def extend(path: list[str]) -> None:
        for nxt in succ[path[-1]]:
            if nxt == path[0]:
                found.append(list(path))
            elif nxt > path[0] and nxt not in path:
                extend([*path, nxt])

    for start in g.files:
        extend([start])
    return sorted(found)


def test_johnson_matches_brute_force_on_random_graphs() -> None:
    rnd = random.Random(7)
    for _ in range(60):
        n = rnd.randint(1, 7)
        names = [f"f{i}" for i in range(n)]
        edges = [(a, b) for a in names for b in names if rnd.random() < 0.35]
        g = graph(edges, names)
        assert g.cycles(limit=10_000) == _brute_force_cycles(g)


def test_complete_graph_cycle_count_and_limit() -> None:
    names = ["a", "b", "c", "d"]
    g = graph([(x, y) for x, y in itertools.permutations(names, 2)])
    assert len(g.cycles()) == 20  # 6 of length 2, 8 of length 3, 6 of length 4
    limited = g.cycles(limit=5)
    assert len(limited) == 5 and all(c in g.cycles() for c in limited)
    data = g.to_dict(cycle_limit=5)
    assert data["cycles_truncated"] is True and data["cycles"] == limited
    assert g.to_dict(cycle_limit=20)["cycles_truncated"] is False
    assert g.cycles(limit=0) == []
    with pytest.raises(ValueError):
        g.cycles(limit=-1)


def test_cycle_search_work_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # a chain whose files import both neighbours: one component, one 2-cycle per file
    names = [f"f{i:03d}" for i in range(300)]
    g = graph([(a, b) for a, b in itertools.pairwise(names)]
              + [(b, a) for a, b in itertools.pairwise(names)])
    assert len(g.cycles(limit=1000)) == 299 and not g.to_dict()["cycles_truncated"]
    monkeypatch.setattr(graph_module, "_CYCLE_BUDGET", 20_000)
    data = g.to_dict(cycle_limit=1000)
    assert data["cycles_truncated"] is True
    assert 0 < len(data["cycles"]) < 299 and data["cycles"][0] == ["f000", "f001"]
    assert data["components"] == [names]


def test_batches_critical_path_and_priorities_on_a_dag() -> None:
    # e -> d -> (b, c) -> a ; f -> a      (importer -> imported)
    g = graph([("b", "a"), ("c", "a"), ("d", "b"), ("d", "c"), ("e", "d"), ("f", "a")])
    assert g.batches() == [["a"], ["b", "c", "f"], ["d"], ["e"]]
    # default weight 1: two chains of 4; the tie goes to the one with the smaller files
    assert g.critical_path() == (["a", "b", "d", "e"], 4.0)
    weights = {"a": 1, "b": 5, "c": 2, "d": 1, "e": 1, "f": 10}
    assert g.critical_path(weights) == (["a", "f"], 11.0)
    assert g.critical_path({"c": 3.5}) == (["a", "c", "d", "e"], 6.5)  # others weigh 1
    assert g.priorities(weights) == {"a": 11.0, "b": 7.0, "c": 4.0, "d": 2.0, "e": 1.0,
                                     "f": 10.0}
    with pytest.raises(ValueError, match="'b'"):
        g.critical_path({"b": -1})
    with pytest.raises(ValueError):
        g.critical_path({"b": float("nan")})


def test_critical_path_through_a_cycle() -> None:
    # top -> (x <-> y) -> base ; side -> base
    g = graph([("top", "x"), ("x", "y"), ("y", "x"), ("y", "base"), ("side", "base")])
    assert g.batches() == [["base"], ["side", "x", "y"], ["top"]]
    assert g.critical_path() == (["base", "x", "y", "top"], 4.0)
    assert g.critical_path({"side": 10}) == (["base", "side"], 11.0)
    assert g.priorities()["base"] == 4.0


def test_graph_queries_and_serialization(tmp_path: Path) -> None:
    g = graph([("b", "a"), ("c", "b")], ["lonely"])
    assert g.dependencies("b") == ["a"] and g.dependents("b") == ["c"]
    assert g.dependencies("lonely") == [] and g.dependents(Path("a")) == ["b"]
    assert g.dependencies("./b") == ["a"]
    assert g.dependencies("README.md") == [] and g.dependents("README.md") == []
    data = json.loads(json.dumps(g.to_dict()))
    assert data == {
        "root": "/repo",
        "files": ["a", "b", "c", "lonely"],
        "edges": [["b", "a"], ["c", "b"]],
        "cycles": [],
        "cycles_truncated": False,
        "components": [],
        "batches": [["a", "lonely"], ["b"], ["c"]],
        "critical_path": {"files": ["a", "b", "c"], "weight": 3.0},
        "priorities": {"a": 3.0, "b": 2.0, "c": 1.0, "lonely": 1.0},
        "unresolved": {},
        "errors": {},
    }
    empty = graph([])
    assert empty.batches() == [] and empty.critical_path() == ([], 0.0) and empty.cycles() == []
    with pytest.raises(ValueError, match="not in files"):
        DependencyGraph(root="/r", files=["a"], edges=[("a", "b")])


def test_concurrent_analyses_agree_and_restore_gc(tmp_path: Path) -> None:
    import gc
    import threading

    root = write(tmp_path, PY_REPO)
    results: list[DependencyGraph] = []
    threads = [threading.Thread(target=lambda: results.append(analyze(root))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(set(g.edges) == PY_EDGES for g in results)
    assert gc.isenabled()


# --------------------------------------------------------------------------------------
# Scale
# --------------------------------------------------------------------------------------


def _generate(root: Path, packages: int = 100, modules: int = 100) -> None:
    """A layered repository: modules import lower-numbered packages/modules (+ a cycle)."""
    rnd = random.Random(3)
    body = textwrap.dedent('''
        class Thing:
            """A thing."""

            def __init__(self, size: int = 1) -> None:
                self.size = size
                self.items = [i * 2 for i in range(size)]

            def grow(self, by: int) -> int:
                if by < 0:
                    raise ValueError(f"negative {by}")
                self.size += by
                return self.size


        def helper(x: int, *, scale: float = 1.0) -> dict[str, float]:
            result = {}
            for i in range(x):
                result[str(i)] = i * scale + len(os.sep)
            return json.loads(json.dumps(result))
        ''')
    for p in range(packages):
        folder = root / f"pkg{p:03d}"
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("from .mod000 import Thing\n")
        for m in range(modules):
            lines = ['"""Generated."""', "from __future__ import annotations", "import os, json"]
            if m >= 2:
                lines.append(f"from . import mod{m - 1:03d}")
                lines.append(f"from .mod{rnd.randrange(m - 1):03d} import helper")
            if p >= 1:
                q = rnd.randrange(p)
                lines.append(f"import pkg{q:03d}.mod{rnd.randrange(modules):03d}")
                lines.append(f"from pkg{rnd.randrange(p):03d} import mod{rnd.randrange(modules):03d}")
                lines.append(f"from ..pkg{rnd.randrange(p):03d}.mod050 import Thing as Other")
            (folder / f"mod{m:03d}.py").write_text("\n".join(lines) + "\n" + body)
    # one small cycle: mod002 imports mod000 (``from .mod000 import helper``)
    (root / "pkg000" / "mod000.py").write_text("from . import mod002\n")


@pytest.mark.slow
def test_ten_thousand_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _generate(tmp_path)
    started = time.perf_counter()
    g = analyze(tmp_path)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nanalyze(): {len(g.files)} files, {len(g.edges)} edges in {elapsed:.2f} s")
    assert len(g.files) == 10_100 and not g.errors and not g.unresolved
    deps = set(g.dependencies("pkg050/mod010.py"))
    assert "pkg050/mod009.py" in deps  # from . import mod009
    assert not any(d.endswith("__init__.py") for d in deps)
    assert g.dependencies("pkg000/mod000.py") == ["pkg000/mod002.py"]
    assert g.dependencies("pkg007/__init__.py") == ["pkg007/mod000.py"]
    assert len(g.edges) > 40_000
    started = time.perf_counter()
    data = g.to_dict()
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"to_dict(): {len(data['cycles'])} cycles, {len(data['batches'])} batches "
              f"in {elapsed:.2f} s")
    assert data["cycles"] and len(data["batches"]) > 2

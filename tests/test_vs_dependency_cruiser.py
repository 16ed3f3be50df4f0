"""``orchestrator analyze`` against dependency-cruiser on the tricky JavaScript / TypeScript cases.

Each fixture is a small project of one case (issue 12, item 2). On each, our internal edges must
equal dependency-cruiser's (run by ``tests/support/cruiser.py`` from ``tests/js``), and every
specifier it could not resolve must be in our unresolved list. Where dependency-cruiser is wrong
and we are right, the fixture says so in ``THEIRS_WRONG`` with the reason, and the test asserts
the right answer instead of theirs. The differences found are recorded in
``/work/notes/cruiser_diffs.md``.

The comparison is skipped only on a machine without node / npm; CI has both and installs
``tests/js`` (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from orchestrator.agents.lib.depgraph import analyze

from tests.support.cruiser import cruise, ensure_tools, node_missing, our_unresolved

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")


def _json(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


# Each case: files (path -> text; a value starting with "symlink:" makes a symlink to the rest,
# as ``npm install`` links a workspace package into node_modules).
CASES: dict[str, dict[str, str]] = {
    # webpack / Vite magic comments before the specifier of a dynamic import()
    "magic_comments": {
        "src/main.js": """
            const b = import(/* webpackChunkName: "b" */ "./b");
            const c = import(/* @vite-ignore */ './c.js');
            const d = import(
              /* webpackPrefetch: true */
              /* webpackChunkName: "d" */
              "./d"
            );
            """,
        "src/b.js": "export const b = 1;\n",
        "src/c.js": "export const c = 1;\n",
        "src/d.js": "export const d = 1;\n",
    },
    # require("./dir") goes through that folder's package.json "main" (before index.js)
    "dir_package_main": {
        "src/main.js": 'const lib = require("./lib");\nconst other = require("./other");\n',
        "src/lib/package.json": _json({"name": "lib", "main": "./entry.js"}),
        "src/lib/entry.js": "module.exports = 1;\n",
        "src/lib/index.js": "module.exports = 2;\n",
        "src/other/package.json": _json({"main": "lib/start"}),
        "src/other/lib/start.js": "module.exports = 3;\n",
    },
    # a .js specifier naming the TypeScript source or only its declaration file
    "js_specifier_names_ts": {
        "src/main.ts": """
            import { b } from "./b.js";
            import type { Shape } from "./shapes.js";
            import { view } from "./view.js";
            export const all = [b, view];
            export type S = Shape;
            """,
        "src/b.ts": "export const b = 1;\n",
        "src/shapes.d.ts": "export interface Shape { n: number }\n",
        "src/view.tsx": "export const view = <div />;\n",
    },
    # .mts / .cts files are scanned; .mjs / .cjs specifiers name them
    "mts_cts": {
        "src/main.mts": 'import { a } from "./a.mjs";\nimport b = require("./b.cjs");\nexport { a, b };\n',
        "src/a.mts": "export const a = 1;\n",
        "src/b.cts": 'import c = require("./c.cjs");\nexport = c;\n',
        "src/c.cts": "export = 3;\n",
        "src/types.d.mts": "export type T = number;\n",
        "src/use.ts": 'import type { T } from "./types.mjs";\nexport const t: T = 1;\n',
    },
    # TypeScript triple-slash directives: <reference path> is an edge, <reference types> is a package
    "reference_path": {
        "src/main.ts": """
            /// <reference path="./globals.d.ts" />
            /// <reference path="legacy.ts" />
            /// <reference types="node" />
            export const x = 1;
            """,
        "src/globals.d.ts": "declare const VERSION: string;\n",
        "src/legacy.ts": "export const legacy = 1;\n",
    },
    # package.json "exports" (self-reference by name) and "imports" (#subpath), with conditions
    "exports_imports": {
        "package.json": _json({
            "name": "selfpkg",
            "type": "module",
            "exports": {
                ".": "./src/index.js",
                "./util": {"node": "./src/util.node.js", "default": "./src/util.js"},
                "./features/*": "./src/features/*.js",
            },
            "imports": {
                "#internal/*": "./src/internal/*.js",
                "#config": {"node": "./src/config.node.js", "default": "./src/config.js"},
                "#dual": {"import": "./src/dual.mjs", "require": "./src/dual.cjs"},
            },
        }),
        "src/index.js": 'export * from "selfpkg/util";\nexport * from "#config";\n',
        "src/util.js": "export const util = 1;\n",
        "src/util.node.js": "export const util = 2;\n",
        "src/config.js": "export const config = 1;\n",
        "src/config.node.js": "export const config = 2;\n",
        "src/app.js": """
            import { helper } from "#internal/helper";
            import { x } from "selfpkg/features/x";
            import main from "selfpkg";
            export { helper, x, main };
            """,
        "src/internal/helper.js": "export const helper = 1;\n",
        "src/dual.mjs": "export default 1;\n",
        "src/dual.cjs": "module.exports = 1;\n",
        "src/consumer.cjs": 'module.exports = require("#dual");\n',
        "src/consumer.mjs": 'export { default } from "#dual";\n',
        "src/features/x.js": "export const x = 1;\n",
    },
    # a workspace package, linked into node_modules as npm install does
    "workspace": {
        "package.json": _json({"name": "root", "private": True, "workspaces": ["packages/*"]}),
        "packages/util/package.json": _json({
            "name": "@ws/util", "version": "1.0.0", "main": "./src/index.js",
        }),
        "packages/util/src/index.js": 'export * from "./strings.js";\n',
        "packages/util/src/strings.js": "export const up = (s) => s.toUpperCase();\n",
        "packages/app/package.json": _json({
            "name": "@ws/app", "version": "1.0.0", "dependencies": {"@ws/util": "1.0.0"},
        }),
        "packages/app/src/main.js": 'import { up } from "@ws/util";\nexport const main = up("x");\n',
        "node_modules/@ws/util": "symlink:../../packages/util",
        "node_modules/@ws/app": "symlink:../../packages/app",
    },
    # tsconfig compilerOptions.paths and baseUrl
    "tsconfig_paths": {
        "tsconfig.json": _json({"compilerOptions": {
            "baseUrl": ".",
            "paths": {"@app/*": ["src/app/*"], "~config": ["src/config/index.ts"]},
        }}),
        "src/main.ts": """
            import { service } from "@app/service";
            import { config } from "~config";
            import { helper } from "src/util/helper";
            export const all = [service, config, helper];
            """,
        "src/app/service.ts": "export const service = 1;\n",
        "src/config/index.ts": "export const config = 1;\n",
        "src/util/helper.ts": "export const helper = 1;\n",
    },
    # index files: a folder, "./", "..", and index.tsx
    "index_files": {
        "src/main.ts": 'import "./components";\nimport "./";\n',
        "src/index.ts": "export const root = 1;\n",
        "src/components/index.tsx": 'import "..";\nexport const c = <span />;\n',
        "src/components/button/index.jsx": 'import "../";\nexport const b = 1;\n',
    },
    # every form of export ... from
    "export_from": {
        "src/index.ts": """
            export * from "./a";
            export { b } from "./b";
            export * as c from "./c";
            export type { D } from "./d";
            export { default as e } from "./e";
            """,
        "src/a.ts": "export const a = 1;\n",
        "src/b.ts": "export const b = 1;\n",
        "src/c.ts": "export const c = 1;\n",
        "src/d.ts": "export type D = number;\n",
        "src/e.ts": "export default 1;\n",
    },
    # import type, inline type specifiers, type-level import()
    "import_type": {
        "src/main.ts": """
            import type { T } from "./t";
            import { type U } from "./u";
            export type Lazy = typeof import("./lazy");
            export const v: T | U = 1;
            """,
        "src/t.ts": "export type T = number;\n",
        "src/u.ts": "export type U = number;\n",
        "src/lazy.ts": "export const lazy = 1;\n",
    },
    # a dist/ build folder (tsconfig outDir) next to the sources it was built from
    "dist_build_output": {
        "tsconfig.json": _json({"compilerOptions": {"outDir": "dist", "declaration": True},
                                "include": ["src"]}),
        "package.json": _json({"name": "built", "main": "dist/index.js", "types": "dist/index.d.ts"}),
        "src/index.ts": 'export { util } from "./util";\n',
        "src/util.ts": "export const util = 1;\n",
        "dist/index.js": 'exports.util = require("./util").util;\n',
        "dist/util.js": "exports.util = 1;\n",
        "dist/index.d.ts": 'export { util } from "./util";\n',
        "dist/util.d.ts": "export declare const util = 1;\n",
    },
    # CommonJS forms and what cannot be resolved
    "commonjs_and_unresolved": {
        "src/main.js": """
            const a = require("./a");
            const b = require('./b.json');
            const fs = require("node:fs");
            const path = require("path");
            const missing = require("./missing");
            import("./also-missing.js");
            """,
        "src/a.js": "module.exports = 1;\n",
        "src/b.json": "{}\n",
    },
}

@dataclass(frozen=True)
class Wrong:
    """Where dependency-cruiser is wrong and we are right, and why."""

    why: str
    drop: Callable[[tuple[str, str]], bool] = lambda edge: False  # its wrong edges
    add: frozenset[tuple[str, str]] = frozenset()  # the edges it misses
    not_unresolved: frozenset[tuple[str, str]] = frozenset()  # specifiers it wrongly fails on


THEIRS_WRONG: dict[str, Wrong] = {
    # dependency-cruiser has no notion of build output: it scans dist/ like source (and there
    # resolves dist/index.d.ts's "./util" to util.js). The files tsc wrote from src/ are not
    # the project's modules; they are rewritten by every build.
    "dist_build_output": Wrong(
        "dist/ is tsconfig's outDir: build output, not source",
        drop=lambda edge: edge[0].startswith("dist/"),
    ),
    # TypeScript resolves <reference path="legacy.ts"> relative to the containing file (the
    # handbook: "The path is resolved relative to the containing file"), ./ or not;
    # dependency-cruiser takes a path without ./ for a package name and fails on it.
    "reference_path": Wrong(
        "a <reference path> is a path relative to its file, ./ or not",
        add=frozenset({("src/main.ts", "src/legacy.ts")}),
        not_unresolved=frozenset({("src/main.ts", "legacy.ts")}),
    ),
    # Node picks the "require" condition for require() and "import" for import; dependency-
    # cruiser resolves every specifier with one list of conditions, so the first key of the
    # map that is in its list ("import") wins for require("#dual") too.
    "exports_imports": Wrong(
        "require() takes the \"require\" condition, not \"import\"",
        drop=lambda edge: edge == ("src/consumer.cjs", "src/dual.mjs"),
        add=frozenset({("src/consumer.cjs", "src/dual.cjs")}),
    ),
}


def _local(spec: str) -> bool:
    """A specifier naming a file of the project (relative, absolute or a #import), not a
    package: an npm package that is not installed is not ours to resolve."""
    return spec.startswith((".", "/", "#"))


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("symlink:"):
            os.symlink(text.removeprefix("symlink:"), path, target_is_directory=True)
        else:
            path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture(scope="module")
def tools() -> None:
    ensure_tools()


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tools, tmp_path_factory):
    name = request.param
    root = write(tmp_path_factory.mktemp(name), CASES[name])
    return name, root, cruise(root), analyze(root)


def test_edges_equal_dependency_cruisers(case):
    name, root, theirs, ours = case
    wrong = THEIRS_WRONG.get(name, Wrong(""))
    dropped = {edge for edge in theirs.edges if wrong.drop(edge)}
    assert not wrong.add & theirs.edges, f"{name}: THEIRS_WRONG is stale: cruiser finds {wrong.add}"
    expected = (theirs.edges - dropped) | wrong.add
    got = set(ours.edges)
    assert got == expected, (
        f"{name}: only ours {sorted(got - expected)}, only dependency-cruiser's "
        f"{sorted(expected - got)}"
    )


def test_unresolved_covers_dependency_cruisers(case):
    name, root, theirs, ours = case
    mine = our_unresolved(ours)
    wrong = THEIRS_WRONG.get(name, Wrong(""))
    assert wrong.not_unresolved <= theirs.unresolved, f"{name}: THEIRS_WRONG is stale"
    local = {(importer, spec) for importer, spec in theirs.unresolved - wrong.not_unresolved
             if _local(spec)}
    assert local <= mine, (
        f"{name}: dependency-cruiser could not resolve {sorted(local - mine)}, "
        f"which our unresolved list does not name (ours: {sorted(mine)})"
    )


def test_fixtures_are_not_trivial(case):
    """Every case has edges for the comparison to be about (cruiser found them)."""
    name, root, theirs, ours = case
    assert theirs.edges, f"{name}: dependency-cruiser found no edge: the fixture tests nothing"

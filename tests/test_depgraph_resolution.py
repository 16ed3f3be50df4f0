"""agents.lib.depgraph resolution without silent misses: magic comments, package.json entry
points, ``exports`` / ``imports``, workspaces, declaration files, triple-slash references,
build output told from source folders, and every unresolved import with its reason."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from orchestrator.agents import planner as planner_agent
from orchestrator.agents.lib.depgraph import analyze


def write(root: Path, files: dict[str, str | dict]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(text) if isinstance(text, dict)
                        else textwrap.dedent(text).lstrip("\n"))
    return root


def test_dynamic_import_with_magic_comments_and_options(tmp_path: Path) -> None:
    write(tmp_path, {
        "main.js": """
            const a = import(/* webpackChunkName: "a" */ "./a");
            const b = import(
              /* webpackChunkName: "b" */
              /* webpackPrefetch: true */
              './b'
            );
            const c = import(/* @vite-ignore */ `./c`);
            const d = import("./d.json", { with: { type: "json" } });
            const e = import("./e", { assert: { type: "javascript" } });
            const f = require(/* comment */ "./f");
            const g = import(/* webpackChunkName: "g" */ `./pages/${name}`);
            """,
        "a.js": "", "b.ts": "", "c.mjs": "", "d.json": "{}", "e.js": "", "f.cjs": "",
    })
    g = analyze(tmp_path)
    assert g.dependencies("main.js") == ["a.js", "b.ts", "c.mjs", "e.js", "f.cjs"]
    assert g.unresolved == {"main.js": {"`./pages/${name}`": "computed"}}


def test_folder_entry_point_from_package_json(tmp_path: Path) -> None:
    write(tmp_path, {
        "app.js": """
            require("./withmain");
            require("./withtypes");
            require("./mainmissing");
            require("./plain/");
            require("./mainfolder");
            """,
        "withmain/package.json": {"main": "lib/entry.js"},
        "withmain/lib/entry.js": "",
        "withmain/index.js": "",  # main wins over index
        "withtypes/package.json": {"main": "./nope.js", "types": "./types/api.d.ts"},
        "withtypes/types/api.d.ts": "",
        "mainmissing/package.json": {"main": "gone.js"},
        "mainmissing/index.js": "",
        "plain/index.ts": "",
        "mainfolder/package.json": {"main": "./src"},
        "mainfolder/src/index.js": "",
    })
    g = analyze(tmp_path)
    assert g.dependencies("app.js") == [
        "mainfolder/src/index.js", "mainmissing/index.js", "plain/index.ts",
        "withmain/lib/entry.js", "withtypes/types/api.d.ts",
    ]
    assert g.unresolved == {}


def test_js_extensions_name_declarations_and_module_formats(tmp_path: Path) -> None:
    write(tmp_path, {
        "main.ts": """
            import { A } from "./types.js";
            import { B } from "./esm.mjs";
            import { C } from "./common.cjs";
            import { D } from "./decl.mjs";
            import { E } from "./decl2.cjs";
            import { F } from "./comp.jsx";
            """,
        "types.d.ts": "export type A = 1;\n",
        "esm.mts": "import { x } from './helper.js';\nexport const B = x;\n",
        "common.cts": "import y = require('./helper');\nexport const C = 1;\n",
        "decl.d.mts": "export declare const D: 1;\n",
        "decl2.d.cts": "export declare const E: 1;\n",
        "comp.tsx": "export const F = 1;\n",
        "helper.ts": "export const x = 1;\n",
        "plain.js": "const t = require('./types.js');\n",  # a JS importer falls back to .d.ts
    })
    g = analyze(tmp_path)
    assert "esm.mts" in g.files and "common.cts" in g.files and "decl.d.mts" in g.files
    assert g.dependencies("main.ts") == [
        "common.cts", "comp.tsx", "decl.d.mts", "decl2.d.cts", "esm.mts", "types.d.ts"]
    assert g.dependencies("esm.mts") == ["helper.ts"]
    assert g.dependencies("common.cts") == ["helper.ts"]
    assert g.dependencies("plain.js") == ["types.d.ts"]
    assert g.unresolved == {}


def test_triple_slash_reference_directives(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/main.ts": """
            /// <reference path="./globals.d.ts" />
            /// <reference path="shims.d.ts"/>
            /// <reference path='../types/extra.d.ts' />
            /// <reference types="node" />
            // an ordinary comment
            /// <reference path="./missing.d.ts" />
            import { a } from "./a";
            /// <reference path="./late.d.ts" />   (after a statement: an ordinary comment)
            """,
        "src/globals.d.ts": "", "src/shims.d.ts": "", "types/extra.d.ts": "", "src/a.ts": "",
        "src/late.d.ts": "",
    })
    g = analyze(tmp_path)
    assert g.dependencies("src/main.ts") == [
        "src/a.ts", "src/globals.d.ts", "src/shims.d.ts", "types/extra.d.ts"]
    assert g.unresolved == {"src/main.ts": {"./missing.d.ts": "not_found", "node": "package"}}


MONOREPO = {
    "package.json": {"name": "root", "private": True, "workspaces": ["packages/*"]},
    "pnpm-workspace.yaml": "packages:\n  - 'tools/*'\n  - '!tools/excluded'\n",
    # a package built to dist/ (absent from the checkout), its tsconfig says where from
    "packages/core/package.json": {
        "name": "@acme/core",
        "exports": {
            ".": {"types": "./dist/index.d.ts", "import": "./dist/index.js"},
            "./utils/*": "./src/utils/*.ts",
            "./internal/*": None,
            "./feature": {"browser": "./src/feature-browser.ts",
                          "node": {"import": "./src/feature-node.ts", "default": "./nope.js"},
                          "default": "./src/feature.ts"},
            "./package.json": "./package.json",
        },
        "imports": {
            "#db": {"require": "./src/db.cjs", "default": "./src/db.ts"},
            "#lib/*": "./src/lib/*.js",
            "#dep": "lodash",
        },
    },
    "packages/core/tsconfig.json": {"compilerOptions": {"outDir": "dist", "rootDir": "src"}},
    "packages/core/src/index.ts": "import { db } from '#db';\nimport { q } from '#lib/query';\n",
    "packages/core/src/utils/fmt.ts": "import core from '@acme/core';\nimport d from '#dep';\n",
    "packages/core/src/feature-node.ts": "", "packages/core/src/feature.ts": "",
    "packages/core/src/feature-browser.ts": "", "packages/core/src/db.ts": "",
    "packages/core/src/lib/query.ts": "",
    # require() takes the "require" condition, import the "import" one (Node's rule)
    "packages/core/src/db.cjs": "",
    "packages/core/src/old.cts": "import db = require('#db');\nconst d2 = require('#db');\n",
    "packages/core/src/new.mts": "import db from '#db';\n",
    # no exports, a main into build output without a tsconfig: lib/ -> src/
    "packages/legacy/package.json": {"name": "legacy", "main": "lib/index.js"},
    "packages/legacy/src/index.ts": "",
    "packages/legacy/src/extra.ts": "",
    "tools/cli/package.json": {"name": "cli-tool", "main": "./bin/cli.js"},
    "tools/cli/bin/cli.js": "",
    "tools/excluded/package.json": {"name": "excluded-tool"},
    "tools/excluded/index.js": "",
    "tools/broken/package.json": "{ not json",
    "apps/web/main.ts": """
        import { core } from "@acme/core";
        import { fmt } from "@acme/core/utils/fmt";
        import { f } from "@acme/core/feature";
        import secret from "@acme/core/internal/secret";
        import nothing from "@acme/core/not-exported";
        import pkg from "@acme/core/package.json";
        import legacy from "legacy";
        import extra from "legacy/lib/extra";
        import cli from "cli-tool";
        import ex from "excluded-tool";
        import react from "react";
        import fs from "fs";
        import fsp from "fs/promises";
        import path from "node:path";
        import remote from "https://esm.sh/preact";
        import nope from "#nothing";
        """,
}


def test_exports_imports_and_workspace_packages(tmp_path: Path) -> None:
    write(tmp_path, MONOREPO)
    g = analyze(tmp_path)
    assert g.dependencies("apps/web/main.ts") == [
        "packages/core/src/feature-node.ts", "packages/core/src/index.ts",
        "packages/core/src/utils/fmt.ts", "packages/legacy/src/extra.ts",
        "packages/legacy/src/index.ts", "tools/cli/bin/cli.js",
    ]
    assert g.dependencies("packages/core/src/index.ts") == [
        "packages/core/src/db.ts", "packages/core/src/lib/query.ts"]
    # a package imports itself by name (self-reference)
    assert g.dependencies("packages/core/src/utils/fmt.ts") == ["packages/core/src/index.ts"]
    assert g.dependencies("packages/core/src/old.cts") == ["packages/core/src/db.cjs"]
    assert g.dependencies("packages/core/src/new.mts") == ["packages/core/src/db.ts"]
    assert g.unresolved == {
        "apps/web/main.ts": {
            "#nothing": "not_found",  # no package.json imports map above apps/web
            "@acme/core/internal/secret": "not_found",  # excluded by a null target
            "@acme/core/not-exported": "not_found",
            "excluded-tool": "package",  # not a workspace member: "!tools/excluded"
            "react": "package",
        },
        "packages/core/src/utils/fmt.ts": {"#dep": "package"},  # imports -> a package
    }
    assert list(g.errors) == ["tools/broken/package.json"]


def test_build_output_is_skipped_by_evidence_only(tmp_path: Path) -> None:
    write(tmp_path, {
        # a Python subpackage named dist: source, not output
        "mypkg/__init__.py": "",
        "mypkg/dist/__init__.py": "",
        "mypkg/dist/core.py": "",
        "mypkg/use.py": "import mypkg.dist.core\nfrom mypkg.dist import core\n",
        "pyproject.toml": "",
        "build/lib/mypkg/__init__.py": "",  # setuptools' output beside pyproject.toml
        # a JS package's output beside its package.json
        "web/package.json": {"name": "web"},
        "web/src/a.js": "import b from '../dist/b.js';\n",
        "web/dist/b.js": "",
        # listed in a .gitignore, no project file beside it
        ".gitignore": "# output\n/site/build/\n**/dist\n!keep/dist\n",
        "site/build/page.js": "",
        "site/src/x.js": "",
        "other/dist/y.js": "",
        "keep/dist/z.js": "",
        # neither: an ordinary folder
        "scripts/build/run.js": "import './helper.js';\n",
        "scripts/build/helper.js": "",
    })
    g = analyze(tmp_path)
    assert g.dependencies("mypkg/use.py") == ["mypkg/dist/core.py"]
    assert "build/lib/mypkg/__init__.py" not in g.files
    assert "web/dist/b.js" not in g.files
    assert "site/build/page.js" not in g.files and "other/dist/y.js" not in g.files
    assert "keep/dist/z.js" in g.files and "site/src/x.js" in g.files
    assert g.dependencies("scripts/build/run.js") == ["scripts/build/helper.js"]
    # the import of skipped output is not an edge to a file of the graph, and it is not lost
    assert g.unresolved == {"web/src/a.js": {"../dist/b.js": "not_found"}}
    # excluding nothing walks everything
    assert "web/dist/b.js" in analyze(tmp_path, exclude=()).files


def test_unresolved_reasons_and_externals(tmp_path: Path) -> None:
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": """
            import os, sys, json.decoder
            from __future__ import annotations
            import requests
            from yaml import safe_load
            import pkg.missing
            from .. import above
            from . import nothing     # a name of the package: its __init__.py
            """,
        "web/a.js": """
            import fs from "fs";
            import p from "node:fs/promises";
            import x from "../../out";
            import y from "/etc/passwd";
            import z from "./z";
            import lodash from "lodash/fp";
            import scoped from "@scope/pkg/sub";
            const w = require(process.env.X);
            """,
    })
    g = analyze(tmp_path)
    assert g.dependencies("pkg/a.py") == ["pkg/__init__.py"]
    assert g.unresolved == {
        "pkg/a.py": {"..above": "outside_repository", "pkg.missing": "not_found", "requests": "package", "yaml": "package"},
        "web/a.js": {"../../out": "outside_repository", "./z": "not_found",
                     "/etc/passwd": "outside_repository", "@scope/pkg/sub": "package",
                     "lodash/fp": "package", "process.env.X": "computed"},
    }
    data = g.to_dict()
    assert list(data["unresolved"]["web/a.js"]) == sorted(data["unresolved"]["web/a.js"])


async def test_the_planner_sees_the_imports_a_python_patch_adds(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write(repo, {"pkg/__init__.py": "", "pkg/base.py": "X = 1\n", "pkg/extra.py": "Y = 2\n",
                 "pkg/use.py": "def f():\n    return 1\n"})
    patch = textwrap.dedent("""\
        --- a/pkg/use.py
        +++ b/pkg/use.py
        @@ -1,2 +1,5 @@
        +from pkg.base import X
         def f():
        -    return 1
        +    from . import extra
        +    return X + extra.Y
        """)
    files = {"pkg/use.py": None, "pkg/base.py": None, "pkg/extra.py": None}
    before = await planner_agent.agent.call_locally("analyze_plan", {
        "repo": str(repo), "files": files})
    assert before["edges"] == []
    after = await planner_agent.agent.call_locally("analyze_plan", {
        "repo": str(repo), "files": files, "patches": {"pkg/use.py": patch}})
    assert after["edges"] == [["pkg/use.py", "pkg/base.py"], ["pkg/use.py", "pkg/extra.py"]]
    assert after["unresolved"] == {} and after["errors"] == {}


async def test_analyze_command_reports_unresolved_with_reasons(tmp_path: Path) -> None:
    import argparse
    import io

    from orchestrator.cli.analyze import cmd_analyze

    write(tmp_path, {
        "web/a.ts": "import r from 'react';\nimport d from 'react-dom/client';\n"
                    "import s from '@scope/x/y';\nimport m from './missing';\n",
        "web/b.ts": "import r from 'react';\nimport fs from 'node:fs';\n",
        "py/m.py": "import numpy.linalg\nimport os\nfrom .. import up\n",
    })
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(path=str(tmp_path), json=True)
    assert await cmd_analyze(args, out, err, io.StringIO()) == 0
    assert json.loads(out.getvalue())["unresolved"] == {
        "py/m.py": {"..up": "outside_repository", "numpy.linalg": "package"},
        "web/a.ts": {"./missing": "not_found", "@scope/x/y": "package", "react": "package",
                     "react-dom/client": "package"},
        "web/b.ts": {"react": "package"},
    }
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(path=str(tmp_path), json=False)
    assert await cmd_analyze(args, out, err, io.StringIO()) == 0
    assert err.getvalue().splitlines() == [
        "unresolved in py/m.py: ..up (outside_repository)",
        "unresolved in web/a.ts: ./missing (not_found)",
        "packages not in the repository (importing files): @scope/x (1), numpy (1), "
        "react (2), react-dom (1)",
    ]

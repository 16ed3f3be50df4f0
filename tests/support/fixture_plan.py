"""A plan of 30 Python, TypeScript and JavaScript files in 5 dependency levels, and the git
repository it runs in (a test fixture; lives in tests/ only).

The repository already holds the tests (they import the files the plan creates), the ruff
configuration, a ``tsconfig.json`` with ``paths`` and a ``package.json`` (ESM).

* Levels: 0 (``shop/config.py``, ``web/src/util/format.ts``...) up to 4 (``shop/checkout.py``,
  ``web/src/app.tsx``); every dependency is an import the planner must find.
* ``shop/money.py`` (an unused import, F401) and ``shop/catalog.py`` (unsorted imports, I001)
  fail QA once; ruff's automatic fix (the developer's retry) fixes them.
* ``shop/discounts.py`` uses an undefined name (F821): never fixed, dead-lettered; nothing
  imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .fixture_repo import git

__all__ = ["make_plan_repo", "plan_tasks", "FAILING_ONCE", "NEVER_FIXED", "LEVELS"]

FAILING_ONCE = ("money", "catalog")
NEVER_FIXED = "discounts"

_PY: dict[str, tuple[str, str]] = {  # task id -> (file, content)
    "shop": ("shop/__init__.py", '"""A small shop."""\n'),
    "config": ("shop/config.py", 'CURRENCY = "EUR"\nTAX_RATE = 0.2\n'),
    "units": ("shop/units.py", "CENTS = 100\n\n\ndef to_cents(amount: float) -> int:\n"
              "    return round(amount * CENTS)\n"),
    "money": ("shop/money.py", "import os\n\nfrom shop.config import CURRENCY\n"
              "from shop.units import to_cents\n\n\ndef price(amount: float) -> str:\n"
              '    return f"{to_cents(amount)} {CURRENCY}"\n'),
    "models": ("shop/models.py", "from dataclasses import dataclass\n\nfrom . import config\n\n\n"
               "@dataclass\nclass Item:\n    name: str\n    amount: float\n\n"
               "    def taxed(self) -> float:\n        return self.amount * (1 + config.TAX_RATE)\n"),
    "catalog": ("shop/catalog.py", "from shop.models import Item\nfrom shop import money\n\n\n"
                "def listing(items: list[Item]) -> list[str]:\n"
                '    return [f"{i.name}: {money.price(i.amount)}" for i in items]\n'),
    "pricing": ("shop/pricing.py", "from .models import Item\nfrom .units import to_cents\n\n\n"
                "def total_cents(items: list[Item]) -> int:\n"
                "    return sum(to_cents(i.taxed()) for i in items)\n"),
    "cart": ("shop/cart.py", "from shop.catalog import listing\nfrom shop.models import Item\n"
             "from shop.pricing import total_cents\n\n\nclass Cart:\n    def __init__(self) -> None:\n"
             "        self.items: list[Item] = []\n\n    def add(self, item: Item) -> None:\n"
             "        self.items.append(item)\n\n    def lines(self) -> list[str]:\n"
             "        return listing(self.items)\n\n    def total(self) -> int:\n"
             "        return total_cents(self.items)\n"),
    "checkout": ("shop/checkout.py", "from shop.cart import Cart\nfrom shop.money import price\n\n\n"
                 "def receipt(cart: Cart) -> str:\n"
                 '    return "\\n".join([*cart.lines(), price(cart.total() / 100)])\n'),
    "discounts": ("shop/discounts.py", "def discount(amount: float) -> float:\n"
                  "    return amount * RATE\n"),
    "inventory": ("shop/inventory.py", "from shop.models import Item\n\n\n"
                  "def in_stock(items: list[Item]) -> int:\n    return len(items)\n"),
    "report": ("shop/report.py", "from shop.inventory import in_stock\nfrom shop.pricing import total_cents\n\n\n"
               "def summary(items):\n    return {\"count\": in_stock(items), \"cents\": total_cents(items)}\n"),
    "shipping": ("shop/shipping.py", "from shop.config import CURRENCY\n\n\n"
                 "def fee() -> str:\n    return f\"5 {CURRENCY}\"\n"),
    "labels": ("shop/labels.py", "from shop.shipping import fee\n\n\ndef label(name: str) -> str:\n"
               "    return f\"{name} ({fee()})\"\n"),
}

_TS: dict[str, tuple[str, str]] = {
    "format": ("web/src/util/format.ts", "export function money(cents: number): string {\n"
               "  return (cents / 100).toFixed(2);\n}\n"),
    "dates": ("web/src/util/dates.ts", "export const today = (): string => new Date().toISOString();\n"),
    "util": ("web/src/util/index.ts", "export * from './format';\nexport * from './dates';\n"),
    "types": ("web/src/types.ts", "export interface Item { name: string; cents: number }\n"),
    "client": ("web/src/api/client.ts", "import { today } from '@util/index';\n"
               "import type { Item } from '../types';\n\n"
               "export async function fetchItems(): Promise<Item[]> {\n"
               "  return [{ name: today(), cents: 100 }];\n}\n"),
    "store": ("web/src/store.ts", "import { fetchItems } from './api/client';\n"
              "import { money } from './util';\n\n"
              "export async function load(): Promise<string[]> {\n"
              "  return (await fetchItems()).map((i) => money(i.cents));\n}\n"),
    "hooks": ("web/src/hooks.ts", "const store = require('./store');\n\n"
              "export const useStore = () => store;\n"),
    "view": ("web/src/view.tsx", "import { fetchItems } from './api/client';\n\n"
             "export const View = () => <div>{String(fetchItems)}</div>;\n"),
    "app": ("web/src/app.tsx", "import { View } from './view';\n\n"
            "export const App = () => { void import('./store'); return <View />; };\n"),
    "sum": ("web/lib/sum.mjs", "export function sum(values) {\n"
            "  return values.reduce((a, b) => a + b, 0);\n}\n"),
    "avg": ("web/lib/avg.mjs", "import { sum } from './sum.mjs';\n\n"
            "export function avg(values) {\n  return values.length ? sum(values) / values.length : 0;\n}\n"),
    "stats": ("web/lib/stats.mjs", "import { avg } from './avg.mjs';\nimport { sum } from './sum.mjs';\n\n"
              "export const stats = (v) => ({ sum: sum(v), avg: avg(v) });\n"),
    "legacy": ("web/lib/legacy.cjs", "const path = require('node:path');\n\n"
               "module.exports = { base: (p) => path.basename(p) };\n"),
    "cli": ("web/lib/cli.mjs", "import { stats } from './stats.mjs';\nimport legacy from './legacy.cjs';\n\n"
            "export const run = (v) => `${legacy.base('/x/y')} ${stats(v).avg}`;\n"),
    "widgets": ("web/src/widgets.tsx", "import { View } from './view';\n\n"
                "export const Widgets = () => <section><View /></section>;\n"),
    "pages": ("web/src/pages.tsx", "import { View } from './view.js';\nimport * as api from './api/client';\n\n"
              "export const Pages = () => <main><View />{String(api)}</main>;\n"),
}

#: Dependency level of each task (what the import graph must give).
LEVELS: dict[str, int] = {
    "shop": 0, "config": 0, "units": 0, "money": 1, "models": 1, "catalog": 2, "pricing": 2,
    "cart": 3, "checkout": 4, "discounts": 0, "inventory": 2, "report": 3, "shipping": 1,
    "labels": 2, "format": 0, "dates": 0, "util": 1, "types": 0, "client": 2, "store": 3,
    "hooks": 4, "view": 3, "app": 4, "sum": 0, "avg": 1, "stats": 2, "legacy": 0, "cli": 3,
    "widgets": 4, "pages": 4,
}

_REPO_FILES = {
    "pyproject.toml": '[project]\nname = "shop"\nversion = "0.1.0"\n\n[tool.pytest.ini_options]\n'
                      'addopts = "-p no:cacheprovider"\n\n[tool.ruff.lint]\nselect = ["E", "F", "I"]\n',
    "tests/test_money.py": "from shop.money import price\n\n\ndef test_price():\n"
                           '    assert price(1.5) == "150 EUR"\n',
    "tests/test_cart.py": "from shop.cart import Cart\nfrom shop.models import Item\n\n\n"
                          "def test_total():\n    cart = Cart()\n    cart.add(Item(\"tea\", 1.0))\n"
                          "    assert cart.total() == 120\n",
    "tsconfig.json": '{\n  // paths for the web app\n  "compilerOptions": {\n    "baseUrl": ".",\n'
                     '    "paths": { "@util/*": ["web/src/util/*"], },\n  },\n}\n',
    "package.json": json.dumps({"name": "web", "type": "module"}) + "\n",
    "web/lib/stats.test.mjs": "import { test } from 'node:test';\nimport assert from 'node:assert';\n"
                              "import { stats } from './stats.mjs';\n\n"
                              "test('stats', () => assert.deepStrictEqual(stats([1, 3]), { sum: 4, avg: 2 }));\n",
    ".gitignore": "__pycache__/\n",
}


def plan_tasks() -> list[dict[str, Any]]:
    tasks = []
    for task_id, (file, content) in {**_PY, **_TS}.items():
        kind = "fix" if task_id in ("pricing", "client") else "new"
        tasks.append({"id": task_id, "file": file, "kind": kind, "content": content,
                      "description": f"{kind} {file}", "estimate": 2.0 if task_id == "cart" else 1.0})
    return tasks


def make_plan_repo(path: Path, **plan_fields: Any) -> tuple[Path, dict[str, Any]]:
    """Create the repository at ``path``; return it and the plan (a mapping) for it."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in _REPO_FILES.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "tests and configuration")
    plan = {"repo": str(path), "tasks": plan_tasks(), "max_parallel": 4, "retry_delay": 0.2,
            **plan_fields}
    return path, plan

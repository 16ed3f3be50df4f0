"""A real git repository for the pr_deployment tests (a test fixture; lives in tests/ only).

Branches:

* ``main``: package ``calc`` with ``add``/``sub`` and passing tests; after ``feature-conflict``
  branched off, one more commit changes ``add``'s docstring line.
* ``feature-pass``: adds ``calc/mul.py`` and its test: ruff clean, tests pass.
* ``feature-fail``: adds ``calc/div.py`` with an unused import (F401) and a test that fails.
* ``feature-conflict``: changes the same line of ``calc/__init__.py`` as main's last commit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["make_fixture_repo", "git", "add_branch"]

_ENV = {
    "GIT_AUTHOR_NAME": "Fixture", "GIT_AUTHOR_EMAIL": "fixture@example.com",
    "GIT_COMMITTER_NAME": "Fixture", "GIT_COMMITTER_EMAIL": "fixture@example.com",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}

_INIT = '''"""A tiny calculator."""


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def sub(a: int, b: int) -> int:
    return a - b
'''

_PYPROJECT = '''[project]
name = "calc"
version = "0.1.0"

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-p no:cacheprovider"

[tool.ruff.lint]
select = ["E", "F", "I"]
'''


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, **_ENV}, check=True)
    return done.stdout.strip()


def _write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _commit(repo: Path, message: str, files: dict[str, str]) -> None:
    _write(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def make_fixture_repo(path: Path) -> Path:
    """Create the repository at ``path`` (checked out on ``main``) and return it."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Fixture")
    git(path, "config", "user.email", "fixture@example.com")
    _commit(path, "calc: add and sub", {
        "pyproject.toml": _PYPROJECT,
        "calc/__init__.py": _INIT,
        "tests/test_calc.py": (
            "from calc import add, sub\n\n\n"
            "def test_add():\n    assert add(2, 3) == 5\n\n\n"
            "def test_sub():\n    assert sub(5, 3) == 2\n"),
        ".gitignore": "__pycache__/\n",
    })
    git(path, "checkout", "-q", "-b", "feature-pass")
    _commit(path, "calc: mul", {
        "calc/mul.py": '"""Multiplication."""\n\n\ndef mul(a: int, b: int) -> int:\n    return a * b\n',
        "tests/test_mul.py": (
            "from calc.mul import mul\n\n\n"
            "def test_mul():\n    assert mul(3, 4) == 12\n\n\n"
            "def test_mul_zero():\n    assert mul(3, 0) == 0\n"),
    })
    git(path, "checkout", "-q", "main")
    git(path, "checkout", "-q", "-b", "feature-fail")
    _commit(path, "calc: div (buggy)", {
        "calc/div.py": ('"""Division."""\n\nimport os\n\n\n'
                        "def div(a: int, b: int) -> float:\n    return a * b\n"),
        "tests/test_div.py": (
            "from calc.div import div\n\n\n"
            "def test_div():\n    assert div(6, 3) == 2\n\n\n"
            "def test_div_one():\n    assert div(1, 1) == 1\n"),
    })
    git(path, "checkout", "-q", "main")
    git(path, "checkout", "-q", "-b", "feature-conflict")
    _commit(path, "calc: document add on the branch",
            {"calc/__init__.py": _INIT.replace('"""Add two numbers."""', '"""Sum of a and b."""')})
    git(path, "checkout", "-q", "main")
    _commit(path, "calc: document add on main",
            {"calc/__init__.py": _INIT.replace('"""Add two numbers."""', '"""Return a plus b."""')})
    return path


def add_branch(repo: Path, name: str, files: dict[str, str], *, base: str = "main",
               symlinks: dict[str, str] | None = None) -> None:
    """Commit ``files`` (and ``symlinks``: link -> where it points) on a new branch ``name``
    off ``base``, then check ``base`` out again."""
    head = git(repo, "symbolic-ref", "--short", "HEAD")
    git(repo, "checkout", "-q", "-b", name, base)
    for link, points_to in (symlinks or {}).items():
        (repo / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(points_to, repo / link)
    _commit(repo, f"branch {name}", files)
    git(repo, "checkout", "-q", head)

"""Three git repositories that depend on each other, ``lib`` → ``service`` → ``app``, for the
``multi_repo_change`` tests (a test fixture; lives in tests/ only).

* ``lib`` (package ``mrlib``): ``greet(name)`` is ``"hello <name>"``.
* ``service`` (package ``mrservice``) imports ``mrlib``; its ``pyproject.toml`` names lib as a
  path dependency (``mrlib @ file:../lib``), so the graph finds that edge in the manifest.
  Its test command passes lib's path with ``{upstream:lib}`` (its conftest.py puts it first
  on ``sys.path``).
* ``app`` (package ``mrapp``) imports ``mrservice`` (and through it ``mrlib``) from
  ``PYTHONPATH``; the input says ``depends_on: [service]``.

Branches (each off ``main``, which stays checked out):

* ``change`` in all three: lib adds ``shout``, service's ``loud`` uses it, app's ``banner``
  uses ``loud``. service's and app's branches only pass on top of their upstreams' branches:
  tested alone against the upstreams' ``main`` they fail, against the future state they pass.
* ``breaking`` in lib: ``shout`` too, but ``greet`` says ``"hi"`` (lib's own tests updated):
  lib and service pass, app's ``test_page`` and ``test_banner`` fail.
"""

from __future__ import annotations

from pathlib import Path

from .fixture_repo import add_branch, git

__all__ = ["NAMES", "change_input", "make_independent_repos", "make_multi_repos", "push",
           "tip"]

NAMES = ("lib", "service", "app")

_RUFF = '[tool.ruff.lint]\nselect = ["E", "F"]\n'
_PYTEST = '[tool.pytest.ini_options]\ntestpaths = ["tests"]\naddopts = "-p no:cacheprovider"\n'

_LIB = {
    "pyproject.toml": f'[project]\nname = "mrlib"\nversion = "0.1.0"\n\n{_PYTEST}\n{_RUFF}',
    "mrlib/__init__.py": '"""Greetings."""\n\n\ndef greet(name):\n    return f"hello {name}"\n',
    "tests/test_lib.py": ("from mrlib import greet\n\n\n"
                          "def test_greet():\n    assert greet(\"bob\") == \"hello bob\"\n"),
    ".gitignore": "__pycache__/\n",
}
_LIB_SHOUT = ('\n\ndef shout(name):\n    return greet(name).upper() + "!"\n')

_SERVICE_CONFTEST = '''import sys


def pytest_addoption(parser):
    parser.addoption("--lib", help="the lib repository to test against")


def pytest_configure(config):
    lib = config.getoption("--lib")
    if lib:
        sys.path.insert(0, lib)
'''

_SERVICE = {
    "pyproject.toml": (f'[project]\nname = "mrservice"\nversion = "0.1.0"\n'
                       f'dependencies = ["mrlib @ file:../lib"]\n\n{_PYTEST}\n{_RUFF}'),
    "conftest.py": _SERVICE_CONFTEST,
    "mrservice/__init__.py": ('"""The service."""\n\nimport mrlib\n\n\n'
                              "def welcome(name):\n    return mrlib.greet(name)\n"),
    "tests/test_service.py": ("from mrservice import welcome\n\n\n"
                              "def test_welcome():\n    assert \"bob\" in welcome(\"bob\")\n"),
    ".gitignore": "__pycache__/\n",
}
_SERVICE_LOUD = "\n\ndef loud(name):\n    return mrlib.shout(name)\n"

_APP = {
    "pyproject.toml": f'[project]\nname = "mrapp"\nversion = "0.1.0"\n\n{_PYTEST}\n{_RUFF}',
    "mrapp/__init__.py": ('"""The app."""\n\nimport mrservice\n\n\n'
                          'def page(name):\n    return f"<p>{mrservice.welcome(name)}</p>"\n'),
    "tests/test_app.py": ("from mrapp import page\n\n\n"
                          "def test_page():\n    assert page(\"bob\") == \"<p>hello bob</p>\"\n"),
    ".gitignore": "__pycache__/\n",
}
_APP_BANNER = "\n\ndef banner(name):\n    return mrservice.loud(name)\n"


def _init(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Fixture")
    git(path, "config", "user.email", "fixture@example.com")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def make_multi_repos(root: Path) -> dict[str, Path]:
    """``root/lib``, ``root/service``, ``root/app`` with the branches above."""
    lib = _init(root / "lib", _LIB)
    add_branch(lib, "change", {
        "mrlib/__init__.py": _LIB["mrlib/__init__.py"] + _LIB_SHOUT,
        "tests/test_shout.py": ("from mrlib import shout\n\n\n"
                                "def test_shout():\n    assert shout(\"bob\") == \"HELLO BOB!\"\n"),
    })
    add_branch(lib, "breaking", {
        "mrlib/__init__.py": _LIB["mrlib/__init__.py"].replace("hello", "hi") + _LIB_SHOUT,
        "tests/test_lib.py": _LIB["tests/test_lib.py"].replace("hello", "hi"),
    })
    service = _init(root / "service", _SERVICE)
    add_branch(service, "change", {
        "mrservice/__init__.py": _SERVICE["mrservice/__init__.py"] + _SERVICE_LOUD,
        "tests/test_loud.py": ("from mrservice import loud\n\n\n"
                               "def test_loud():\n    assert loud(\"bob\").endswith(\"!\")\n"),
    })
    app = _init(root / "app", _APP)
    add_branch(app, "change", {
        "mrapp/__init__.py": _APP["mrapp/__init__.py"] + _APP_BANNER,
        "tests/test_banner.py": ("from mrapp import banner\n\n\n"
                                 "def test_banner():\n    assert banner(\"bob\") == \"HELLO BOB!\"\n"),
    })
    return {"lib": lib, "service": service, "app": app}


def change_input(repos: dict[str, Path], *, lib_branch: str = "change", **extra: object
                 ) -> dict[str, object]:
    """The workflow input changing all three (lib from ``lib_branch``)."""
    return {"changes": [
        {"repo": str(repos["lib"]), "source": lib_branch},
        {"repo": str(repos["service"]), "source": "change",
         "test_command": ["python", "-m", "pytest", "-q", "--lib={upstream:lib}"]},
        {"repo": str(repos["app"]), "source": "change", "depends_on": ["service"]},
    ], **extra}


_BARRIER = '''import os
import time
from pathlib import Path

BARRIER = Path({folder!r})  # noqa: E501


def test_runs_beside_the_others():
    (BARRIER / ("start-{name}-" + str(time.time()))).touch()
    deadline = time.monotonic() + 60
    while len(list(BARRIER.glob("start-*"))) < {count}:
        assert time.monotonic() < deadline, "the others never started"
        time.sleep(0.05)
    time.sleep({hold})
    (BARRIER / ("end-{name}-" + str(time.time()))).touch()
    assert os.getcwd()
'''


def make_independent_repos(root: Path, names: list[str], barrier: Path, *, hold: float = 0.5
                           ) -> dict[str, Path]:
    """Repositories that need nothing of each other; each one's test waits (60 s at most)
    until every one's test has started, so they pass only when they run at the same time,
    and leaves ``start-<name>-<t>``/``end-<name>-<t>`` marks in ``barrier``."""
    barrier.mkdir(parents=True, exist_ok=True)
    repos = {}
    for name in names:
        repos[name] = _init(root / name, {
            "pyproject.toml": f'[project]\nname = "{name}"\nversion = "0.1.0"\n\n{_PYTEST}\n{_RUFF}',
            ".gitignore": "__pycache__/\n"})
        add_branch(repos[name], "change", {"tests/test_barrier.py": _BARRIER.format(
            folder=str(barrier), name=name, count=len(names), hold=hold)})
    return repos


def tip(repo: Path, branch: str = "main") -> str:
    return git(repo, "rev-parse", f"refs/heads/{branch}")


def push(repo: Path, branch: str = "main") -> str:
    """Someone else's commit on ``branch``, written without the work tree (as a push does);
    returns it."""
    parent = tip(repo, branch)
    tree = git(repo, "rev-parse", f"{parent}^{{tree}}")
    commit = git(repo, "commit-tree", tree, "-p", parent, "-m", "a concurrent push")
    git(repo, "update-ref", f"refs/heads/{branch}", commit, parent)
    return commit

"""The README's "Testing your graphs" example works as printed in a new project: its three
files are copied from README.md into an empty folder and `pytest` runs there, with nothing but
this package installed (found by use: the example needed pytest-asyncio, which nothing
installed, and a graph the README never showed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
FILES = ("myproject/graphs.py", "tests/test_approval.py", "pyproject.toml")


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def example_files() -> dict[str, str]:
    """The code blocks of the README's testing section, by the file named on their first line."""
    blocks = re.findall(r"```\w+\n(.*?)```", _section(README.read_text(), "Testing your graphs"),
                        flags=re.S)
    files = {}
    for block in blocks:
        first, _, rest = block.partition("\n")
        name = first.lstrip("# ").strip()
        if name in FILES:
            files[name] = rest
    return files


def test_the_readme_names_every_file_of_the_example() -> None:
    assert set(example_files()) == set(FILES)


def test_the_readme_testing_example_passes_in_a_new_project(
    tmp_path: Path, orchestrator_database_url: str, orchestrator_redis_url: str
) -> None:
    project = tmp_path / "project"
    for name, text in example_files().items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORCHESTRATOR_", "PYTEST_", "LANGSMITH_", "LANGCHAIN_"))}
    # the user's own test database server; the plugin creates a database of its own there
    admin = orchestrator_database_url.rsplit("/", 1)[0] + "/postgres"
    env.update(ORCHESTRATOR_TEST_DATABASE_URL=admin,
               ORCHESTRATOR_TEST_REDIS_URL=orchestrator_redis_url)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]

"""What is installed lives under the one name ``orchestrator``, so a user's project with its
own ``agents``, ``workflows`` and ``state`` packages works (found by use: such a project made all
eight built-in agents fail to load, since they were installed as top-level ``agents``).

Each test runs from inside such a project, with the project first on ``sys.path`` as
``python -m`` / ``python -c`` / pytest put it; ``tests/test_studio.py`` does the same for
``langgraph dev``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .support.processes import ORCHESTRATOR_CMD
from .support.projects import make_shadowing_project

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_shadowing_project(tmp_path / "project")


def _docs_written(out: Path) -> None:
    assert (out / "index.md").is_file() and (out / "fixturepkg.mod0.md").is_file()


def test_the_cli_runs_a_workflow_with_the_builtin_agents(
    project: Path, service_env: dict[str, str], fixture_package: Path
) -> None:
    out = project / "docs-out"
    done = subprocess.run(
        [*ORCHESTRATOR_CMD, "run", "parallel_docs", "--set", f"package={fixture_package}",
         "--set", f"output={out}"],
        cwd=project, env=service_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _docs_written(out)
    listed = subprocess.run([*ORCHESTRATOR_CMD, "agents", "--json"], cwd=project,
                            env=service_env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "could not load agent" not in done.stderr + listed.stderr


def test_from_env_runs_a_workflow_and_the_projects_packages_stay_its_own(
    project: Path, service_env: dict[str, str], fixture_package: Path
) -> None:
    out = project / "docs-out"
    script = textwrap.dedent(f"""
        import asyncio, json
        import agents, state, workflows
        from orchestrator import Orchestrator
        from orchestrator.agent import builtin_agents

        async def main():
            async with Orchestrator.from_env() as orch:
                result = await orch.run("parallel_docs", {{"package": {str(fixture_package)!r},
                                                          "output": {str(out)!r}}})
            import agents as again
            print(json.dumps({{"status": result.status, "agents": sorted(builtin_agents()),
                              "owners": [agents.OWNER, state.OWNER, workflows.OWNER,
                                         again.OWNER]}}))

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=project, env=service_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == "completed"
    assert report["agents"] == ["cicd", "code_review", "deployer", "developer", "docs",
                                "infrastructure", "planner", "qa"]
    assert report["owners"] == ["user"] * 4
    _docs_written(out)


def test_the_pytest_plugin_works_in_the_project(
    project: Path, orchestrator_database_url: str, orchestrator_redis_url: str,
    fixture_package: Path
) -> None:
    (project / "tests").mkdir()
    (project / "tests" / "test_docs.py").write_text(textwrap.dedent(f"""
        import agents

        async def test_parallel_docs_with_the_builtin_agents(orchestrator, tmp_path):
            result = await orchestrator.run(
                "parallel_docs", {{"package": {str(fixture_package)!r},
                                  "output": str(tmp_path / "out")}})
            assert result.status == "completed", result
            assert agents.OWNER == "user"
    """))
    (project / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nasyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "session"\n'
        'asyncio_default_test_loop_scope = "session"\n')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORCHESTRATOR_", "PYTEST_", "LANGSMITH_", "LANGCHAIN_"))}
    env.update(ORCHESTRATOR_TEST_DATABASE_URL=orchestrator_database_url.rsplit("/", 1)[0]
               + "/postgres", ORCHESTRATOR_TEST_REDIS_URL=orchestrator_redis_url)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]


def test_the_wheel_installs_one_top_level_name(tmp_path: Path) -> None:
    """The wheel carries state/, workflows/, agents/ and sql/ inside ``orchestrator/``, and
    every entry point names a module there."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"orchestrator"}, tops
    for package in ("state", "workflows", "agents"):
        assert f"orchestrator/{package}/__init__.py" in names
    assert "orchestrator/agents/docs.py" in names and "orchestrator/state/schema.py" in names
    assert any(n.startswith("orchestrator/state/sql/001_") for n in names)
    targets = [line.split("=", 1)[1].strip() for line in entry_points.splitlines()
               if "=" in line]
    assert len(targets) >= 13 and all(t.startswith("orchestrator.") for t in targets), targets

"""Loading plan files: what is refused before anything is built from it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from orchestrator.workflows.plans import PlanError, load_plan


def _bomb(levels: int = 9, width: int = 10) -> str:
    """A small YAML document whose aliases expand to width**levels leaves."""
    lines = ["repo: .", "tasks: [{id: a, file: a.py, kind: new, content: x}]", "deploy:",
             "  health:", '    a0: &a0 ["lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"    a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    plan = tmp_path / "bomb.yaml"
    plan.write_text(_bomb())
    assert len(plan.read_bytes()) < 700  # the review's was 687 bytes and used 3 GB
    with pytest.raises(PlanError, match=r"expands to more than 200,000 YAML nodes .*aliases"):
        load_plan(plan)


def test_a_plan_that_contains_itself_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "loop.yaml"
    plan.write_text("repo: .\ntasks: &t [{id: a, file: a.py, kind: new, content: x}, *t]\n")
    with pytest.raises(PlanError, match="contains itself through an alias"):
        load_plan(plan)


def test_a_deeply_nested_plan_is_refused(tmp_path: Path) -> None:
    plan = tmp_path / "deep.yaml"
    plan.write_text("repo: .\ntasks: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(PlanError, match="nests lists or mappings too deeply"):
        load_plan(plan)


def test_ordinary_aliases_still_work(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        repo: repo
        test_command: &tests python -m pytest -q
        integration_command: *tests
        tasks:
          - {id: a, file: a.py, kind: new, content: "X = 1\\n"}
        """))
    loaded = load_plan(plan)
    assert loaded.integration_command == loaded.test_command == "python -m pytest -q"


def test_a_plan_of_a_folder_inside_a_repository_is_refused(tmp_path: Path) -> None:
    """Found by reading: the planner read task files from the plan's folder while the developer
    and QA worked from the repository's top, and the file locks named different paths."""
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    (tmp_path / "repo" / "sub").mkdir()
    plan = tmp_path / "plan.yaml"
    plan.write_text("repo: repo/sub\ntasks: [{id: a, file: a.py, kind: new, content: x}]\n")
    with pytest.raises(PlanError, match=r"field 'repo': repo/sub is a folder inside the git "
                       r"repository .*repo; give the repository's top folder"):
        load_plan(plan)
    plan.write_text("repo: repo\ntasks: [{id: a, file: sub/a.py, kind: new, content: x}]\n")
    assert load_plan(plan).repo == str((tmp_path / "repo").resolve())


def test_a_command_the_cicd_agent_would_refuse_is_refused_by_the_plan(tmp_path: Path) -> None:
    """The plan's commands follow the cicd contract's rule (one rule on both sides)."""
    plan = tmp_path / "plan.yaml"
    plan.write_text("repo: .\ntasks: [{id: a, file: a.py, kind: new, content: x}]\n"
                    "integration_command: \"pytest 'unclosed\"\n")
    with pytest.raises(PlanError, match="field 'integration_command'"):
        load_plan(plan)

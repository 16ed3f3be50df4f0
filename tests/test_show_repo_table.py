"""The per-repository table of ``orchestrator show`` (and of ``run``'s text output): rows of a
multi-repository result, from the final result or, while the run waits, from its state."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel

from orchestrator import cli
from orchestrator.cli.output import format_repo_table, repo_rows
from orchestrator.graphs import WorkflowSpec
from orchestrator.questions import Answer, ask

MERGE = "3f9a2c1b7d4e5f60718293a4b5c6d7e8f9012345"
ROLLBACK = "a" * 40
ROWS = [
    {"name": "lib", "repo": "/srv/git/lib", "review": "ok", "tests": "12 passed",
     "merge_commit": MERGE, "rollback_commit": None, "canary": None, "status": "merged"},
    {"name": "service", "repo": "/srv/git/" + "deep/" * 12 + "service", "review": "2 findings",
     "tests": "1 failed\n(tests/test_api.py::test_get)", "merge_commit": MERGE[:12],
     "rollback_commit": ROLLBACK, "canary": "promoted", "status": "rolled back"},
    {"name": "app", "repo": "/srv/git/app", "status": "blocked", "extra": "ignored"},
]


def test_the_table_is_aligned_with_a_header_and_short_cells() -> None:
    lines = format_repo_table(ROWS).splitlines()
    assert lines[0].split() == ["NAME", "REPO", "REVIEW", "TESTS", "MERGE", "ROLLBACK",
                                "CANARY", "STATUS"]
    assert len(lines) == 4
    # every column starts at the same offset on every line
    for header in ("REPO", "REVIEW", "TESTS", "MERGE", "ROLLBACK", "CANARY", "STATUS"):
        col = lines[0].index(header)
        for line in lines[1:]:
            assert line[col - 2:col] == "  " and line[col] != " ", (header, line)
    lib, service, app = lines[1:]
    assert lib.split() == ["lib", "/srv/git/lib", "ok", "12", "passed", MERGE[:12], "-", "-",
                           "merged"]
    assert "1 failed (tests/test_api.py::test_get)" in service  # one line per row
    assert ROLLBACK[:12] in service and ROLLBACK[:13] not in service  # a full id shortened
    repo_cell = service.split("  ")[1]
    assert repo_cell.startswith("...") and repo_cell.endswith("deep/service")
    assert len(repo_cell) == 48
    assert app.split() == ["app", "/srv/git/app", "-", "-", "-", "-", "-", "blocked"]
    assert "ignored" not in app


def test_rows_are_found_where_a_result_or_state_has_them() -> None:
    assert repo_rows(None, {"repositories": []}, {"repositories": ROWS}) == ROWS
    assert repo_rows({"status": "merged"}, "text", {"repositories": ["not a row"]}) is None


# -- through the CLI, on a real run -------------------------------------------------------------


class TableInput(BaseModel):
    wait: bool = False


class TableState(MultiAgentState, total=False):
    wait: bool
    repositories: list[dict[str, Any]]


class Go(Answer):
    go: bool


async def gather(state: TableState) -> dict[str, Any]:
    return {"repositories": [{**row, "status": "waiting"} for row in ROWS[:2]]}


async def approve(state: TableState) -> dict[str, Any]:
    if state["wait"]:
        ask(Go, kind="approval", question="merge lib and service?")
    return {}


async def report(state: TableState) -> dict[str, Any]:
    return {"final_result": {"status": "merged", "repositories": ROWS}}


_builder = StateGraph(TableState)
_builder.add_node("gather", gather)
_builder.add_node("approve", approve)
_builder.add_node("report", report)
_builder.add_edge(START, "gather")
_builder.add_edge("gather", "approve")
_builder.add_edge("approve", "report")
_builder.add_edge("report", END)
table_flow = WorkflowSpec("table_flow", _builder, TableInput, "rows per repository")


@pytest.fixture
def env(monkeypatch, orchestrator_settings):
    from orchestrator import graphs

    for key in ("DATABASE_URL", "REDIS_URL", "NAMESPACE"):
        monkeypatch.setenv(f"ORCHESTRATOR_{key}",
                           str(getattr(orchestrator_settings, key.lower())))
    monkeypatch.setattr(graphs, "available_workflows", lambda: {"table_flow": table_flow})
    return orchestrator_settings


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(""))
    return code, out.getvalue(), err.getvalue()


def test_show_prints_the_final_rows_as_a_table_and_json_is_unchanged(env) -> None:
    code, out, err = run_cli("run", "table_flow", "--thread-id", "repo-table-1")
    assert code == 0, err
    assert format_repo_table(ROWS).replace("\n", "\n    ").rstrip() in out  # run's output

    code, out, err = run_cli("show", "repo-table-1")
    assert code == 0, err
    head, table = out.split("\nrepositories:\n")
    assert "status:    completed" in head
    assert table == "".join(f"  {line}\n" for line in format_repo_table(ROWS).splitlines())

    code, out, err = run_cli("show", "repo-table-1", "--json")
    assert code == 0, err
    data = json.loads(out)  # no table in JSON: the rows are there already
    assert data["values"]["final_result"]["repositories"] == ROWS


def test_show_prints_the_rows_of_the_state_while_the_run_waits(env) -> None:
    code, out, err = run_cli("run", "table_flow", "--set", "wait=true", "--thread-id",
                             "repo-table-2")
    assert code == 3, err
    code, out, err = run_cli("show", "repo-table-2")
    assert code == 0, err
    assert "waiting:" in out and "merge lib and service?" in out
    table = out.split("\nrepositories:\n")[1]
    assert [line.split()[0] for line in table.splitlines()] == ["NAME", "lib", "service"]
    assert all(line.rstrip().endswith("waiting") for line in table.splitlines()[1:])


def test_show_of_a_workflow_without_rows_prints_no_table(env, monkeypatch) -> None:
    from orchestrator import graphs

    flow = WorkflowSpec("table_flow", _no_rows_builder(), TableInput, "no rows")
    monkeypatch.setattr(graphs, "available_workflows", lambda: {"table_flow": flow})
    code, _, err = run_cli("run", "table_flow", "--thread-id", "repo-table-3")
    assert code == 0, err
    code, out, _ = run_cli("show", "repo-table-3")
    assert code == 0 and "status:    completed" in out and "repositories:" not in out


def _no_rows_builder() -> StateGraph:
    async def done(state: TableState) -> dict[str, Any]:
        return {"final_result": {"status": "completed"}}

    builder = StateGraph(TableState)
    builder.add_node("done", done)
    builder.add_edge(START, "done")
    builder.add_edge("done", END)
    return builder

"""Restoring a named checkpoint (LangGraph time travel): the next resume continues from there."""

from __future__ import annotations

import io
import operator
from typing import Annotated, Any, Literal

import pytest
from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel

from orchestrator import cli, graphs
from orchestrator.errors import CheckpointNotFound, WorkflowBusy
from orchestrator.graphs import WorkflowSpec
from orchestrator.questions import Answer, ask

RAN: list[str] = []  # every node execution of `trail`, in order


class TrailInput(BaseModel):
    label: str


class TrailState(MultiAgentState, total=False):
    label: str
    trail: Annotated[list[str], operator.add]
    choice: str


class Choice(Answer):
    go: Literal["left", "right"]


def _step(name: str) -> Any:
    async def node(state: TrailState) -> dict[str, Any]:
        RAN.append(name)
        return {"trail": [name]}
    return node


async def choose(state: TrailState) -> dict[str, Any]:
    RAN.append("choose")
    return {"choice": ask(Choice, kind="choice", question="which way?").go}


async def finish(state: TrailState) -> dict[str, Any]:
    RAN.append("finish")
    return {"final_result": {"status": "completed", "choice": state["choice"],
                             "trail": state["trail"]}}


_builder = StateGraph(TrailState)
for _name in ("one", "two"):
    _builder.add_node(_name, _step(_name))
_builder.add_node("choose", choose)
_builder.add_node("finish", finish)
_builder.add_edge(START, "one")
_builder.add_edge("one", "two")
_builder.add_edge("two", "choose")
_builder.add_edge("choose", "finish")
_builder.add_edge("finish", END)
trail = WorkflowSpec("trail", _builder, TrailInput, "two steps, a question, the end")


@pytest.fixture
async def orch(orchestrator_factory):
    RAN.clear()
    return await orchestrator_factory(builtin=False, workflows={"trail": trail})


async def _to_question(orch, thread_id: str) -> None:
    result = await orch.run("trail", {"label": "x"}, thread_id)
    assert result.status == "interrupted", result


async def test_restore_then_resume_continues_from_the_named_checkpoint(orch) -> None:
    await _to_question(orch, "t-restore")
    named_id = await orch.name_checkpoint("t-restore", "at-question")
    done = await orch.resume("t-restore", {"go": "left", "by": "ana"})
    assert done.final_result == {"status": "completed", "choice": "left", "trail": ["one", "two"]}
    RAN.clear()

    assert await orch.restore_checkpoint("t-restore", "at-question") == named_id
    details = await orch.get("t-restore")
    assert details.record.status == "interrupted"
    assert details.record.result is None and details.record.owner is None
    assert details.next == ["choose"] and "choice" not in details.values
    assert details.values["trail"] == ["one", "two"]

    # the question was asked at that checkpoint: a resume asks it again
    asked = await orch.resume("t-restore")
    assert asked.status == "interrupted"
    assert asked.interrupts[0]["value"]["question"] == "which way?"
    again = await orch.resume("t-restore", {"go": "right", "by": "bo"})
    assert again.status == "completed"
    assert again.final_result == {"status": "completed", "choice": "right",
                                  "trail": ["one", "two"]}
    assert RAN == ["choose", "choose", "finish"]  # nothing before the checkpoint ran again
    # the first timeline is still in the history
    history = await orch.history("t-restore")
    assert sum("at-question" in h.names for h in history) == 1
    assert [h.source for h in history].count("fork") == 1


async def test_restore_an_earlier_step_runs_the_steps_after_it_again(orch) -> None:
    await _to_question(orch, "t-early")
    after_one = next(h for h in await orch.history("t-early") if h.next == ["two"])
    await orch.name_checkpoint("t-early", "after-one", after_one.checkpoint_id)
    await orch.resume("t-early", {"go": "left", "by": "ana"})
    RAN.clear()

    await orch.restore_checkpoint("t-early", "after-one")
    assert (await orch.get("t-early")).values["trail"] == ["one"]
    asked = await orch.resume("t-early")
    assert asked.status == "interrupted" and RAN == ["two", "choose"]
    done = await orch.resume("t-early", {"go": "right", "by": "bo"})
    assert done.final_result["trail"] == ["one", "two"]


async def test_an_unknown_name_lists_the_names_there_are(orch) -> None:
    await _to_question(orch, "t-names")
    await orch.name_checkpoint("t-names", "b-second")
    await orch.name_checkpoint("t-names", "a-first")
    with pytest.raises(CheckpointNotFound) as caught:
        await orch.restore_checkpoint("t-names", "nope")
    assert "no checkpoint named 'nope'; its named checkpoints: a-first, b-second" in str(caught.value)
    assert (await orch.get("t-names")).record.status == "interrupted"  # untouched


async def test_a_running_or_queued_workflow_is_not_restored(orch) -> None:
    await _to_question(orch, "t-busy")
    await orch.name_checkpoint("t-busy", "here")
    before = await orch.runtime.workflows.get("t-busy")
    await orch.runtime.db.execute(  # a resume waiting in the service's queue
        "INSERT INTO runs (namespace, thread_id, kind, max_attempts) VALUES (%s, %s, 'resume', 1)",
        (orch.settings.namespace, "t-busy"))
    with pytest.raises(WorkflowBusy, match="has a run queued or running"):
        await orch.restore_checkpoint("t-busy", "here")
    await orch.runtime.db.execute("DELETE FROM runs WHERE thread_id = %s", ("t-busy",))
    await orch.runtime.workflows.update("t-busy", before.version, status="running")
    with pytest.raises(WorkflowBusy, match="is running"):
        await orch.restore_checkpoint("t-busy", "here")
    history = await orch.history("t-busy")
    assert "fork" not in [h.source for h in history]  # nothing was forked


async def test_the_restore_command_prints_what_it_did_and_is_audited(orch, monkeypatch) -> None:
    from orchestrator.service import audit

    s = orch.settings
    for key in ("DATABASE_URL", "REDIS_URL", "NAMESPACE"):
        monkeypatch.setenv(f"ORCHESTRATOR_{key}", str(getattr(s, key.lower())))
    monkeypatch.setattr(graphs, "available_workflows", lambda: {"trail": trail})
    await _to_question(orch, "t-cli")
    named_id = await orch.name_checkpoint("t-cli", "q")
    await orch.resume("t-cli", {"go": "left", "by": "ana"})

    out, err = io.StringIO(), io.StringIO()
    code = await _in_thread(cli.main, ["restore", "t-cli", "q"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert f"restored workflow t-cli to checkpoint 'q' ({named_id})" in out.getvalue()
    assert "status: interrupted, next: choose" in out.getvalue()
    assert "orchestrator resume t-cli" in out.getvalue()
    [entry] = await audit.entries(orch.runtime.db, s.namespace, target="t-cli")
    assert (entry.action, entry.detail) == ("checkpoint.restore",
                                           {"name": "q", "checkpoint_id": named_id})
    assert entry.source.startswith("cli@")

    code = await _in_thread(cli.main, ["restore", "t-cli", "zz"], stdout=out, stderr=err)
    assert code == 1 and "checkpoint_not_found: workflow t-cli has no checkpoint named 'zz'" \
        in err.getvalue()


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The CLI runs its own event loop (asyncio.run): off this test's loop."""
    import asyncio

    return await asyncio.to_thread(fn, *args, **kwargs)

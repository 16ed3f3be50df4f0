"""Checkpoint retention: the policy per status, what is never pruned, dry runs, the CLI.

A thread's age is its workflow row's ``updated_at``; the tests set it back by SQL.
"""

from __future__ import annotations

import asyncio
import io
import json
import operator
from typing import Annotated, Any, Literal

import pytest
from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel

from orchestrator import cli, graphs
from orchestrator.errors import InvalidInput
from orchestrator.graphs import WorkflowSpec
from orchestrator.questions import Answer, ask
from orchestrator.service.retention import Retention, RetentionPass
from orchestrator.settings import Settings


class StepsInput(BaseModel):
    outcome: Literal["completed", "failed"] = "completed"
    ask: bool = False


class StepsState(MultiAgentState, total=False):
    outcome: str
    ask: bool
    trail: Annotated[list[str], operator.add]
    answer: dict[str, Any]


class GoOn(Answer):
    go: bool


def _step(name: str) -> Any:
    async def node(state: StepsState) -> dict[str, Any]:
        return {"trail": [name], "partial_results": {name: {"n": len(state.get("trail", []))}}}
    return node


async def gate(state: StepsState) -> dict[str, Any]:
    if not state["ask"]:
        return {"trail": ["gate"]}
    return {"trail": ["gate"], "answer": ask(GoOn, kind="go", question="go on?").model_dump()}


async def finish(state: StepsState) -> dict[str, Any]:
    return {"final_result": {"status": state["outcome"], "trail": state["trail"]}}


_builder = StateGraph(StepsState)
for _name in ("one", "two", "three"):
    _builder.add_node(_name, _step(_name))
_builder.add_node("gate", gate)
_builder.add_node("finish", finish)
_builder.add_edge(START, "one")
_builder.add_edge("one", "two")
_builder.add_edge("two", "gate")
_builder.add_edge("gate", "three")
_builder.add_edge("three", "finish")
_builder.add_edge("finish", END)
steps = WorkflowSpec("steps", _builder, StepsInput, "three steps, maybe a question")

POLICY = {"completed": {"keep_latest_after_days": 7, "delete_after_days": 90},
          "failed": {"keep_latest_after_days": 30}}


@pytest.fixture
async def orch(orchestrator_factory):
    return await orchestrator_factory(builtin=False, workflows={"steps": steps},
                                      retention_policy=POLICY)


async def _make(orch, thread_id: str, days: float, **input: Any) -> str:
    """A workflow run to its end (or question), then aged ``days`` days."""
    result = await orch.run("steps", input, thread_id)
    assert result.status == ("interrupted" if input.get("ask")
                             else input.get("outcome", "completed")), result
    await _age(orch, thread_id, days)
    return thread_id


async def _age(orch, thread_id: str, days: float) -> None:
    await orch.runtime.db.execute(
        "UPDATE workflows SET updated_at = now() - make_interval(secs => %s) "
        "WHERE thread_id = %s", (days * 86_400, thread_id))


async def _stored(orch, thread_id: str) -> dict[str, int]:
    row = await orch.runtime.db.fetchone(
        "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) AS checkpoints, "
        "(SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %(t)s) AS blobs, "
        "(SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(t)s) AS writes",
        {"t": thread_id})
    return dict(row)


async def _orphans(orch, thread_id: str) -> dict[str, int]:
    """Blobs no remaining checkpoint references, writes of checkpoints that are gone."""
    row = await orch.runtime.db.fetchone(
        """SELECT
          (SELECT count(*) FROM checkpoint_blobs b WHERE b.thread_id = %(t)s AND NOT EXISTS (
             SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id
             AND c.checkpoint_ns = b.checkpoint_ns
             AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)) AS blobs,
          (SELECT count(*) FROM checkpoint_writes w WHERE w.thread_id = %(t)s AND NOT EXISTS (
             SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id
             AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id))
             AS writes""", {"t": thread_id})
    return dict(row)


def _tallies(report) -> dict[tuple[str, str], tuple[int, int]]:
    return {(t.status, t.action): (t.threads, t.checkpoints) for t in report.tallies}


async def test_the_policy_keeps_the_latest_then_deletes_and_results_stay(orch) -> None:
    await _make(orch, "old", 100)
    await _make(orch, "mid", 10)
    await _make(orch, "new", 1)
    await _make(orch, "failed-mid", 40, outcome="failed")
    await _make(orch, "failed-new", 20, outcome="failed")
    before = {t: await _stored(orch, t) for t in ("old", "mid", "new", "failed-mid", "failed-new")}
    values_before = (await orch.get("mid")).values
    assert before["mid"]["checkpoints"] >= 6 and before["mid"]["blobs"] > 2

    report = await Retention(orch.runtime.db, orch.settings).run()

    n = before["mid"]["checkpoints"]  # every thread ran the same steps
    assert _tallies(report) == {("completed", "delete"): (1, n),
                                ("completed", "keep_latest"): (1, n - 1),
                                ("failed", "keep_latest"): (1, n - 1)}
    assert await _stored(orch, "old") == {"checkpoints": 0, "blobs": 0, "writes": 0}
    for kept in ("mid", "failed-mid"):
        after = await _stored(orch, kept)
        assert after["checkpoints"] == 1 and after["blobs"] < before[kept]["blobs"]
        assert await _orphans(orch, kept) == {"blobs": 0, "writes": 0}
    assert (await orch.get("mid")).values == values_before  # the latest state is whole
    for untouched in ("new", "failed-new"):
        assert await _stored(orch, untouched) == before[untouched]
    # a pruned workflow still shows its status and result, from its row
    old = await orch.get("old")
    assert old.record.status == "completed"
    assert old.record.result == {"status": "completed", "trail": ["one", "two", "gate", "three"]}
    assert (await orch.resume("old")).final_result == old.record.result
    # a second pass finds nothing left to do
    again = await Retention(orch.runtime.db, orch.settings).run()
    assert (again.threads, again.checkpoints) == (0, 0)


async def test_never_named_checkpoints_pending_questions_interrupted_or_active_runs(orch) -> None:
    await _make(orch, "named", 100)
    history = await orch.history("named")
    early = next(h for h in history if h.next == ["two"])
    await orch.name_checkpoint("named", "after-one", early.checkpoint_id)
    await _make(orch, "asking", 100, ask=True)  # interrupted
    await _make(orch, "asked-failed", 100, ask=True)  # failed on paper, question still pending
    record = await orch.runtime.workflows.get("asked-failed")
    await orch.runtime.workflows.update("asked-failed", record.version, status="failed")
    await _age(orch, "asked-failed", 100)
    for thread_id, run_status in (("queued-run", "queued"), ("running-run", "running")):
        await _make(orch, thread_id, 100)
        await orch.runtime.db.execute(
            "INSERT INTO runs (namespace, thread_id, kind, status, max_attempts) "
            "VALUES (%s, %s, 'resume', %s, 1)", (orch.settings.namespace, thread_id, run_status))
    guarded = ("asking", "asked-failed", "queued-run", "running-run")
    before = {t: await _stored(orch, t) for t in guarded}

    report = await Retention(orch.runtime.db, orch.settings).run()

    assert _tallies(report)[("completed", "keep_latest")][0] == 1  # "named" only
    assert _tallies(report)[("completed", "delete")] == (0, 0)
    for thread_id in guarded:
        assert await _stored(orch, thread_id) == before[thread_id], thread_id
    # the named checkpoint and the latest are kept; nothing they need is gone
    kept = await orch.history("named")
    assert [h.checkpoint_id for h in kept] == [early.checkpoint_id, history[-1].checkpoint_id]
    assert kept[0].names == ["after-one"]
    assert await _orphans(orch, "named") == {"blobs": 0, "writes": 0}
    # and it can be restored and run on from there
    await orch.restore_checkpoint("named", "after-one")
    done = await orch.resume("named")
    assert done.status == "completed"
    assert done.final_result["trail"] == ["one", "two", "gate", "three"]


async def test_an_interrupted_workflow_resumes_after_a_prune_sweep(orchestrator_factory) -> None:
    everything = {s: {"keep_latest_after_days": 0, "delete_after_days": 0}
                  for s in ("completed", "failed", "cancelled")}
    orch = await orchestrator_factory(builtin=False, workflows={"steps": steps},
                                      retention_policy=everything)
    await _make(orch, "waiting", 400, ask=True)
    await _make(orch, "done", 400)
    sweep = RetentionPass(orch.runtime.db, orch.settings)  # the sweeper's retention job
    n = (await _stored(orch, "done"))["checkpoints"]
    assert await sweep() == 0  # a pass starts in the background
    await asyncio.wait_for(sweep._task, timeout=30)  # type: ignore[arg-type]
    assert (await _stored(orch, "done"))["checkpoints"] == 0  # it ran
    assert await sweep() == n  # the next call reports it (and starts another pass)
    await sweep.aclose()

    result = await orch.resume("waiting", {"go": True, "by": "ana"})
    assert result.status == "completed"
    assert result.final_result["trail"] == ["one", "two", "gate", "three"]


async def test_a_dry_run_changes_nothing_and_counts_what_the_real_run_does(orch) -> None:
    names = [await _make(orch, f"d{i}", 100 if i % 2 else 10) for i in range(5)]
    await _make(orch, "f", 40, outcome="failed")
    before = {t: await _stored(orch, t) for t in [*names, "f"]}

    dry = await Retention(orch.runtime.db, orch.settings).run(dry_run=True)
    assert dry.dry_run and dry.threads == 6
    assert {t: await _stored(orch, t) for t in [*names, "f"]} == before

    real = await Retention(orch.runtime.db, orch.settings.model_copy(
        update={"retention_batch_size": 2})).run()  # several batches per status
    assert _tallies(real) == _tallies(dry)
    assert real.checkpoints == sum(b["checkpoints"] for b in before.values()) - 3 - 1


async def test_a_thread_locked_by_someone_else_is_skipped_then_taken_later(orch) -> None:
    await _make(orch, "busy", 100)
    await _make(orch, "free", 100)
    async with orch.runtime.db.transaction() as conn:  # someone changing "busy" right now
        await conn.execute("SELECT 1 FROM workflows WHERE thread_id = 'busy' FOR UPDATE")
        report = await asyncio.wait_for(
            Retention(orch.runtime.db, orch.settings).run(), timeout=30)  # does not wait for it
        assert _tallies(report)[("completed", "delete")][0] == 1
        assert (await _stored(orch, "busy"))["checkpoints"] > 0
    report = await Retention(orch.runtime.db, orch.settings).run()
    assert _tallies(report)[("completed", "delete")][0] == 1
    assert (await _stored(orch, "busy"))["checkpoints"] == 0


async def test_the_prune_command(orch, monkeypatch) -> None:
    from orchestrator.service import audit

    s = orch.settings
    for key in ("DATABASE_URL", "REDIS_URL", "NAMESPACE"):
        monkeypatch.setenv(f"ORCHESTRATOR_{key}", str(getattr(s, key.lower())))
    monkeypatch.setenv("ORCHESTRATOR_RETENTION_POLICY", json.dumps(POLICY))
    monkeypatch.setattr(graphs, "available_workflows", lambda: {"steps": steps})
    await _make(orch, "c-old", 100)
    await _make(orch, "c-mid", 10)
    n = (await _stored(orch, "c-old"))["checkpoints"]

    code, out, err = await _cli("prune", "--dry-run")
    assert code == 0, err
    assert "would delete (dry run: nothing was changed)" in out
    assert f"completed  delete          90 days        1 {n:>11}       0" in out
    assert f"completed  keep_latest      7 days        1 {n - 1:>11}       0" in out
    assert "failed     keep_latest     30 days        0           0       0" in out
    assert (await _stored(orch, "c-old"))["checkpoints"] == n
    assert await audit.entries(orch.runtime.db, s.namespace, target=s.namespace) == []

    code, out, err = await _cli("prune", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["dry_run"], data["threads"], data["checkpoints"]) == (False, 2, 2 * n - 1)
    [entry] = await audit.entries(orch.runtime.db, s.namespace, target=s.namespace)
    assert entry.action == "checkpoints.prune" and entry.detail["checkpoints"] == 2 * n - 1

    monkeypatch.setenv("ORCHESTRATOR_RETENTION_POLICY", '{"interrupted": {}}')
    code, out, err = await _cli("prune")
    assert code == 2 and "statuses ['interrupted'] cannot have a rule" in err


async def _rows_of(orch, thread_id: str) -> dict[str, set[tuple[Any, ...]]]:
    """A thread's checkpoints (with parent and the blobs they reference), blobs and writes."""
    db = orch.runtime.db
    checkpoints = await db.fetch(
        "SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
        "checkpoint -> 'channel_versions' AS versions FROM checkpoints WHERE thread_id = %s",
        (thread_id,))
    blobs = await db.fetch("SELECT checkpoint_ns, channel, version FROM checkpoint_blobs "
                           "WHERE thread_id = %s", (thread_id,))
    writes = await db.fetch("SELECT checkpoint_ns, checkpoint_id, task_id, idx, channel "
                            "FROM checkpoint_writes WHERE thread_id = %s", (thread_id,))
    return {
        "checkpoints": {(c["checkpoint_ns"], c["checkpoint_id"], c["parent_checkpoint_id"])
                        for c in checkpoints},
        "referenced": {(c["checkpoint_ns"], c["checkpoint_id"], channel, version)
                       for c in checkpoints for channel, version in c["versions"].items()},
        "blobs": {(b["checkpoint_ns"], b["channel"], b["version"]) for b in blobs},
        "writes": {tuple(w.values()) for w in writes},
    }


def _needed(before: dict[str, set[tuple[Any, ...]]], kept: set[str]) -> dict[str, set[Any]]:
    """Of what a root-namespace thread stored, what its ``kept`` checkpoints need: their blobs
    and their writes."""
    referenced = {(ns, channel, version) for ns, cid, channel, version in before["referenced"]
                  if cid in kept}
    return {"blobs": before["blobs"] & referenced,
            "writes": {w for w in before["writes"] if w[1] in kept}}


async def test_one_batch_of_mixed_threads_keeps_exactly_what_each_needs(orchestrator_factory) -> None:
    policy = {"completed": {"keep_latest_after_days": 7}}
    orch = await orchestrator_factory(builtin=False, workflows={"steps": steps},
                                      retention_policy=policy)
    plain = [await _make(orch, f"mix-plain{i}", 10) for i in range(3)]
    named = [await _make(orch, f"mix-named{i}", 10) for i in range(2)]
    marks = {}
    for thread_id in named:
        history = await orch.history(thread_id)
        marks[thread_id] = next(h for h in history if h.next == ["gate"]).checkpoint_id
        await orch.name_checkpoint(thread_id, "before-gate", marks[thread_id])
    await _make(orch, "mix-asking", 10, ask=True)  # "completed" on paper, its question pending
    record = await orch.runtime.workflows.get("mix-asking")
    await orch.runtime.workflows.update("mix-asking", record.version, status="completed")
    await _age(orch, "mix-asking", 10)
    threads = [*plain, *named, "mix-asking"]
    before = {t: await _rows_of(orch, t) for t in threads}
    latest = {t: max(c[1] for c in before[t]["checkpoints"] if c[0] == "") for t in threads}
    values = {t: (await orch.get(t)).values for t in plain}

    report = await Retention(orch.runtime.db, orch.settings).run()  # batch size 500: one batch

    assert _tallies(report) == {("completed", "keep_latest"): (5, sum(
        len(before[t]["checkpoints"]) - (2 if t in named else 1) for t in [*plain, *named]))}
    for thread_id in [*plain, *named]:
        kept = {latest[thread_id], *([marks[thread_id]] if thread_id in named else [])}
        after = await _rows_of(orch, thread_id)
        assert {c[1] for c in after["checkpoints"]} == kept, thread_id
        # parents that went are cut; one that stays (none here) would be kept
        assert all(c[2] is None or c[2] in kept for c in after["checkpoints"])
        assert {"blobs": after["blobs"], "writes": after["writes"]} == _needed(
            before[thread_id], kept), thread_id
    assert await _rows_of(orch, "mix-asking") == before["mix-asking"]  # not touched at all
    for thread_id in plain:
        assert (await orch.get(thread_id)).values == values[thread_id]
    # a named thread restored and run on, the pending question answered
    await orch.restore_checkpoint("mix-named0", "before-gate")
    done = await orch.resume("mix-named0")
    assert done.status == "completed" and done.final_result["trail"] == [
        "one", "two", "gate", "three"]
    record = await orch.runtime.workflows.get("mix-asking")
    await orch.runtime.workflows.update("mix-asking", record.version, status="interrupted")
    answered = await orch.resume("mix-asking", {"go": True, "by": "ana"})
    assert answered.status == "completed" and answered.final_result["trail"] == [
        "one", "two", "gate", "three"]


class _SubState(MultiAgentState, total=False):
    trail: Annotated[list[str], operator.add]


def _nested() -> WorkflowSpec:
    """A workflow that calls a subgraph: its steps are saved under a call namespace."""
    sub = StateGraph(_SubState)
    sub.add_node("inner1", _step("inner1"))
    sub.add_node("inner2", _step("inner2"))
    sub.add_edge(START, "inner1")
    sub.add_edge("inner1", "inner2")
    sub.add_edge("inner2", END)
    outer = StateGraph(_SubState)
    outer.add_node("one", _step("one"))
    outer.add_node("sub", sub.compile())
    outer.add_node("two", _step("two"))
    outer.add_edge(START, "one")
    outer.add_edge("one", "sub")
    outer.add_edge("sub", "two")
    outer.add_edge("two", END)
    return WorkflowSpec("nested", outer, StepsInput, "a subgraph call")


async def test_keep_latest_leaves_what_langgraphs_aprune_leaves(orchestrator_factory) -> None:
    """The same rows pruned by LangGraph's own aprune and by a retention pass end the same:
    checkpoints, parents, writes and blobs, the subgraph call's namespace included."""
    from orchestrator.state.checkpointer import make_checkpointer

    orch = await orchestrator_factory(builtin=False, workflows={"steps": steps, "nested": _nested()},
                                      retention_policy={"completed": {"keep_latest_after_days": 7}})
    db = orch.runtime.db
    for template in ("nested", "steps"):
        assert (await orch.run(template, {}, template)).status == "completed"
        stored = await _rows_of(orch, template)
        if template == "nested":  # the call was saved in a namespace of its own
            assert any(":" in c[0] for c in stored["checkpoints"])
        for copy in (f"{template}-lib", f"{template}-ours"):
            await db.execute(
                "INSERT INTO workflows (thread_id, namespace, workflow_type, status, input, "
                "result, updated_at) SELECT %s, namespace, workflow_type, status, input, result, "
                "now() - interval '10 days' FROM workflows WHERE thread_id = %s",
                (copy, template))
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
                columns = [r["column_name"] for r in await db.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND table_name = %s", (table,))]
                values = ", ".join("%s" if c == "thread_id" else c for c in columns)
                await db.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} "
                                 f"FROM {table} WHERE thread_id = %s", (copy, template))
    await make_checkpointer(db).aprune(["nested-lib", "steps-lib"], strategy="keep_latest")
    await _age(orch, "nested", 0)
    await _age(orch, "steps", 0)

    report = await Retention(db, orch.settings).run()

    assert _tallies(report)[("completed", "keep_latest")][0] == 2
    for template in ("nested", "steps"):
        ours, lib = await _rows_of(orch, f"{template}-ours"), await _rows_of(orch, f"{template}-lib")
        assert ours == lib, template
        assert len(ours["checkpoints"]) == 1 and len(ours["blobs"]) < len(
            (await _rows_of(orch, template))["blobs"])


def test_the_policy_setting() -> None:
    default = Settings.from_env({}).retention_policy
    assert default["completed"].keep_latest_after_days == 7
    assert default["completed"].delete_after_days == 90
    assert default["failed"].keep_latest_after_days == 30 and "interrupted" not in default
    given = Settings.from_env({"ORCHESTRATOR_RETENTION_POLICY": '{"failed": {"delete_after_days": 5}}'})
    assert set(given.retention_policy) == {"failed"}  # the given policy replaces the default
    for bad, message in (("{x", "is not JSON"),
                         ('{"running": {}}', "statuses ['running'] cannot have a rule"),
                         ('{"completed": {"keep_latest_after_days": 9, "delete_after_days": 1}}',
                          "delete_after_days must not be shorter"),
                         ('{"completed": {"keep_days": 1}}', "KEEP_DAYS: Extra inputs")):
        with pytest.raises(InvalidInput, match="ORCHESTRATOR_RETENTION_POLICY") as caught:
            Settings.from_env({"ORCHESTRATOR_RETENTION_POLICY": bad})
        assert message in str(caught.value)


async def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()

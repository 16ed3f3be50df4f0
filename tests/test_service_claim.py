"""A claim brings its run's workflow, set ``running`` by the claim's own statement, and the
workflow's last write ends the run: a run of the service is three statements beside its graph's
checkpoints (submit, claim, last write), against real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import psycopg
import pytest

from orchestrator.errors import StaleWorkflowVersion
from orchestrator.service.runs import RunService

from .support.graphs_for_tests import approval_service

#: thread ids are unique in the whole database (every namespace): this module's own prefix
P = f"cl{uuid.uuid4().hex[:6]}-"
_OF_RUNS = re.compile(r"\b(workflows|runs)\b")


@pytest.fixture
async def service(orchestrator_factory: Any) -> RunService:
    return await approval_service(orchestrator_factory)


async def _row(svc: RunService, table: str, key: str, value: Any) -> dict[str, Any]:
    rows = await svc.orch.runtime.db.fetch(f"SELECT * FROM {table} WHERE {key} = %s", (value,))
    assert len(rows) == 1
    return rows[0]


async def test_a_claim_sets_its_workflow_running_and_brings_it(service: RunService) -> None:
    submitted = await service.submit("approval", {"change": "a"}, f"{P}a")
    before = await service.orch.runtime.workflows.get(f"{P}a")
    run = await service.queue.claim("r1")
    assert run is not None and run.run_id == submitted.run_id and run.claimed is not None
    claimed = run.claimed
    assert (claimed.was, claimed.started, claimed.checkpointed) == ("queued", True, False)
    record = claimed.record
    assert (record.status, record.owner, record.error) == ("running", service.orch.owner, None)
    assert record.version == before.version + 1
    assert record.attempt == before.attempt  # a queued start is its first attempt
    # what the claim returned is what it stored
    assert record == await service.orch.runtime.workflows.get(f"{P}a")
    assert "claimed" not in run.to_dict()


async def test_a_claim_leaves_alone_a_workflow_its_run_does_not_go_on_with(
    service: RunService,
) -> None:
    await service.submit("approval", {"change": "b"}, f"{P}b")
    run = await service.queue.claim("r1")
    assert (await service.execute(run, "r1")).status == "interrupted"
    asked = await service.orch.runtime.workflows.get(f"{P}b")
    # a recover of a workflow that waits for an answer: claimed, its workflow untouched
    async with service.orch.runtime.db.transaction() as conn:
        await service.queue.enqueue(conn, f"{P}b", "recover")
    run = await service.queue.claim("r1")
    assert run is not None and run.claimed is not None
    assert (run.claimed.was, run.claimed.started, run.claimed.checkpointed) == (
        "interrupted", False, True)
    assert run.claimed.record == asked == await service.orch.runtime.workflows.get(f"{P}b")
    assert (await service.execute(run, "r1")).status == "interrupted"
    # an answer: the workflow goes on, a new attempt
    answer = await service.resume(f"{P}b", {"approve": True}, by="ana")
    run = await service.queue.claim("r1")
    assert run is not None and run.run_id == answer.run_id and run.claimed is not None
    assert (run.claimed.was, run.claimed.started) == ("interrupted", True)
    assert run.claimed.record.attempt == asked.attempt + 1
    result = await service.execute(run, "r1")
    assert result.status == "completed" and result.final_result["by"] == "ana"


async def test_a_run_is_three_statements_beside_its_checkpoints(
    service: RunService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """submit, claim, and the workflow's last write, which ends the run: nothing reads the
    workflow row again, sets it running apart, or ends the run apart."""
    sent: list[str] = []
    execute = psycopg.AsyncCursor.execute

    async def spy(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        text = query.decode() if isinstance(query, bytes) else str(query)
        if _OF_RUNS.search(text) and "checkpoint_writes" not in text:
            sent.append(text)
        return await execute(self, query, params, **kw)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", spy)
    submitted = await service.submit("approval", {"change": "c"}, f"{P}c")
    run = await service.queue.claim("r1")
    result = await service.execute(run, "r1")
    monkeypatch.undo()
    assert result.status == "interrupted"
    assert len(sent) == 3, "\n---\n".join(sent)
    ended = await service.get_run(submitted.run_id)
    assert (ended.status, ended.outcome, ended.finished_at is not None) == (
        "succeeded", "interrupted", True)
    assert (await service.orch.runtime.workflows.get(f"{P}c")).status == "interrupted"


async def test_a_last_write_that_is_refused_does_not_end_the_run(service: RunService) -> None:
    await service.submit("approval", {"change": "d"}, f"{P}d")
    run = await service.queue.claim("r1")
    # someone else writes the row while the run goes on: the run's last write is stale
    await service.orch.runtime.db.execute(
        "UPDATE workflows SET version = version + 1 WHERE thread_id = %s", (f"{P}d",))
    with pytest.raises(StaleWorkflowVersion):
        await service.execute(run, "r1")
    still = await _row(service, "runs", "run_id", run.run_id)
    assert (still["status"], still["outcome"], still["finished_at"]) == ("running", None, None)


async def test_a_last_write_wakes_the_runners_only_for_a_run_waiting_behind(
    service: RunService,
) -> None:
    notes = service.queue.listen()
    note = asyncio.ensure_future(anext(notes))
    await asyncio.sleep(0.2)  # LISTEN is issued by the first anext
    await service.submit("approval", {"change": "e"}, f"{P}e")
    assert await asyncio.wait_for(note, 5) == "run"  # the submit's
    run = await service.queue.claim("r1")
    note = asyncio.ensure_future(anext(notes))
    assert (await service.execute(run, "r1")).status == "interrupted"
    done, _ = await asyncio.wait({note}, timeout=0.5)
    assert not done, "the end of a run with nothing behind it woke the runners"

    answer = await service.resume(f"{P}e", {"approve": False}, by="bob")
    assert await asyncio.wait_for(note, 5) == "run"  # the answer's
    run = await service.queue.claim("r1")
    assert run is not None and run.run_id == answer.run_id
    async with service.orch.runtime.db.transaction() as conn:  # a run queued behind it
        await service.queue.enqueue(conn, f"{P}e", "recover")
    assert await asyncio.wait_for(anext(notes), 5) == "run"  # the enqueue's
    assert (await service.execute(run, "r1")).status == "failed"  # not approved
    assert await asyncio.wait_for(anext(notes), 5) == "run"  # the last write's
    await notes.aclose()


async def test_a_claim_never_waits_for_a_locked_workflow_row(service: RunService) -> None:
    """A cancel or an enqueue holds the workflow's row, then waits for its runs' rows: a
    claim that held a run's row and waited for the workflow's would deadlock with it."""
    await service.submit("approval", {"change": "f"}, f"{P}f")
    async with service.orch.runtime.db.transaction() as conn:
        await service.queue.lock_thread(conn, f"{P}f")
        assert await asyncio.wait_for(service.queue.claim("r1"), 5) is None
        # the cancel's next statement locks the thread's runs: nothing holds them
        assert len(await service.queue.open_runs(conn, f"{P}f")) == 1
    run = await service.queue.claim("r1")
    assert run is not None and run.thread_id == f"{P}f"


async def test_a_fresh_run_reads_no_checkpoint_before_it_writes_one(
    service: RunService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim found the thread without a checkpoint: LangGraph's first read of the run is
    answered without the database. A run of a thread that has one reads it."""
    sent: list[str] = []
    execute = psycopg.AsyncCursor.execute

    async def spy(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        text = query.decode() if isinstance(query, bytes) else str(query)
        if "checkpoint_blobs" in text:
            sent.append("read" if text.lstrip().lower().startswith("select") else "write")
        return await execute(self, query, params, **kw)

    await service.submit("approval", {"change": "g"}, f"{P}g")
    run = await service.queue.claim("r1")
    monkeypatch.setattr(psycopg.AsyncCursor, "execute", spy)
    assert (await service.execute(run, "r1")).status == "interrupted"
    # writes, then the one read of the paused run's state (its question)
    assert sent[0] == "write" and sent.count("read") == 1, sent
    sent.clear()
    await service.resume(f"{P}g", {"approve": True}, by="ana")
    run = await service.queue.claim("r1")
    assert run.claimed is not None and run.claimed.checkpointed
    assert (await service.execute(run, "r1")).status == "completed"
    assert sent[0] == "read", sent  # the answer's run reads the state it goes on from


async def test_a_cancel_during_a_runs_row_write_does_not_deadlock(service: RunService) -> None:
    """A fenced row write holds its run's row (the fence's share lock), then writes the
    workflow's; a cancel holds the workflow's row, then reads the thread's runs. Neither may
    wait for the other's first lock (PostgreSQL would break the deadlock after a second by
    failing one of them)."""
    await service.submit("approval", {"change": "h"}, f"{P}h")
    run = await service.queue.claim("r1")
    db = service.orch.runtime.db
    async with db.transaction() as write:  # a run's row write, between its two locks
        await write.execute("SELECT orchestrator_fence(%s, %s, %s)",
                            (run.run_id, run.lease_epoch, "r1"))
        cancel = asyncio.ensure_future(service.cancel(f"{P}h", by="ana"))
        await asyncio.wait({cancel}, timeout=0.5)  # it takes the workflow's row meanwhile
        await asyncio.wait_for(write.execute(
            "UPDATE workflows SET current_step = 'x', version = version + 1 "
            "WHERE thread_id = %s", (f"{P}h",)), 10)
    queued = await asyncio.wait_for(cancel, 10)
    assert (queued.kind, queued.status) == ("cancel", "queued")  # behind the running run

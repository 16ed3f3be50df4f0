"""Fenced writes: a runner whose lease was taken over, or merely expired, has its checkpoint
writes and workflow updates refused (LeaseLost, logged, counted); the holder's writes pass;
outside the service nothing is fenced."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from orchestrator.state.checkpointer import make_checkpointer
from prometheus_client import REGISTRY

from orchestrator.errors import LeaseLost
from orchestrator.service.fencing import Fence, fenced
from orchestrator.service.queue import RunRecord
from orchestrator.service.runs import RunService
from orchestrator.testing import stand_in

from .support.graphs_for_tests import approval, approval_service


def _refused(what: str) -> float:
    return REGISTRY.get_sample_value("orchestrator_fenced_writes_refused_total",
                                     {"what": what}) or 0.0


@pytest.fixture
async def service(orchestrator_factory: Any) -> RunService:
    return await approval_service(orchestrator_factory)


async def _claim(svc: RunService, runner: str) -> RunRecord:
    run = await svc.queue.claim(runner)
    assert run is not None
    return run


async def _expire(svc: RunService, run: RunRecord) -> None:
    await svc.orch.runtime.db.execute(
        "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s",
        (run.run_id,))


async def _writes(svc: RunService, fence: Fence) -> None:
    """One checkpoint, its writes, and a workflow update, as a runner makes them."""
    saver = make_checkpointer(svc.orch.runtime.db)
    workflows = svc.orch.runtime.workflows
    with fenced(fence):
        config = await saver.aput(
            {"configurable": {"thread_id": fence.thread_id, "checkpoint_ns": ""}},
            empty_checkpoint(), {"source": "loop", "step": 0}, {})
        await saver.aput_writes(config, [("note", fence.runner)], "task-1")
        record = await workflows.get(fence.thread_id)
        await workflows.update(fence.thread_id, record.version, current_step=fence.runner)


async def test_a_runner_whose_lease_was_taken_over_cannot_write(
    service: RunService, caplog: pytest.LogCaptureFixture,
) -> None:
    submitted = await service.submit("approval", {"change": "x"}, "fence-1")
    old = await _claim(service, "r1")
    await _writes(service, Fence("fence-1", old.run_id, old.lease_epoch, "r1"))  # it holds it
    await _expire(service, old)
    assert await service.queue.sweep() == 1
    new = await _claim(service, "r2")
    assert (new.run_id, new.lease_epoch) == (submitted.run_id, old.lease_epoch + 1)

    saver = make_checkpointer(service.orch.runtime.db)
    config = {"configurable": {"thread_id": "fence-1", "checkpoint_ns": ""}}
    before = (await saver.aget_tuple(config), await service.orch.runtime.workflows.get("fence-1"))
    stale = Fence("fence-1", old.run_id, old.lease_epoch, "r1")
    checkpoints, workflow_writes = _refused("checkpoint"), _refused("workflow")
    with caplog.at_level(logging.WARNING, logger="orchestrator.service.fencing"), fenced(stale):
        with pytest.raises(LeaseLost) as lost:
            await saver.aput(config, empty_checkpoint(), {"source": "loop", "step": 1}, {})
        assert lost.value.code == "lease_lost" and lost.value.run_id == old.run_id
        with pytest.raises(LeaseLost):
            await saver.aput_writes(before[0].config, [("note", "zombie")], "task-z")
        with pytest.raises(LeaseLost):
            await service.orch.runtime.workflows.update("fence-1", before[1].version,
                                                        current_step="zombie")
    assert _refused("checkpoint") == checkpoints + 2
    assert _refused("workflow") == workflow_writes + 1
    assert f"run {old.run_id}" in caplog.text and "fence-1" in caplog.text
    # nothing of the zombie's was stored
    after = (await saver.aget_tuple(config), await service.orch.runtime.workflows.get("fence-1"))
    assert after[0].checkpoint["id"] == before[0].checkpoint["id"]
    assert ("task-z", "note", "zombie") not in (after[0].pending_writes or [])
    assert after[1].version == before[1].version and after[1].current_step == "r1"
    # the new holder writes
    await _writes(service, Fence("fence-1", new.run_id, new.lease_epoch, "r2"))
    assert (await service.orch.runtime.workflows.get("fence-1")).current_step == "r2"


async def test_a_lease_that_merely_expired_refuses_writes_too(service: RunService) -> None:
    await service.submit("approval", {"change": "x"}, "fence-2")
    run = await _claim(service, "r1")
    await _expire(service, run)  # no sweep, no other runner
    refused = _refused("workflow")
    with pytest.raises(LeaseLost):
        await _writes(service, Fence("fence-2", run.run_id, run.lease_epoch, "r1"))
    assert _refused("checkpoint") > 0 and _refused("workflow") == refused
    # a wrong runner or epoch is refused as well
    fresh = await service.submit("approval", {"change": "y"}, "fence-3")
    held = await _claim(service, "r1")
    assert held.run_id == fresh.run_id
    for fence in (Fence("fence-3", held.run_id, held.lease_epoch, "r9"),
                  Fence("fence-3", held.run_id, held.lease_epoch + 1, "r1")):
        with pytest.raises(LeaseLost):
            await _writes(service, fence)


async def test_a_zombie_run_stops_at_its_next_write_and_the_new_holder_finishes(
    orchestrator_factory: Any,
) -> None:
    """The executing runner pauses inside an agent call; meanwhile its lease is taken over and
    the new holder runs the workflow. When the call answers, the old runner's checkpoint write
    is refused (execute raises LeaseLost) and the new holder's passes."""
    entered, go_on = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow_review(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await asyncio.wait_for(go_on.wait(), 30)
        return {"verdict": f"call {calls}"}

    orch = await orchestrator_factory(stand_ins=[stand_in("reviewer", slow_review)],
                                      builtin=False, workflows={"approval": approval})
    svc = RunService(orch)
    await svc.submit("approval", {"change": "x"}, "zombie-1")
    old = await _claim(svc, "r1")
    zombie = asyncio.create_task(svc.execute(old, "r1"))
    await asyncio.wait_for(entered.wait(), 30)
    await _expire(svc, old)
    assert await svc.queue.sweep() == 1
    new = await _claim(svc, "r2")
    holder = asyncio.create_task(svc.execute(new, "r2"))
    refused = _refused("checkpoint")
    go_on.set()  # both runners get the one answer of the one call (same request id)
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(zombie, 30)
    result = await asyncio.wait_for(holder, 30)
    assert result.status == "interrupted", result.error
    assert _refused("checkpoint") > refused
    assert calls == 1  # the agent's handler ran once
    row = await orch.runtime.workflows.get("zombie-1")
    assert row.status == "interrupted" and row.owner is None
    details = await orch.get("zombie-1")
    assert details.interrupts and details.values["partial_results"]["review"]["verdict"] == "call 1"


async def test_outside_the_service_nothing_is_fenced(service: RunService) -> None:
    orch = service.orch
    checkpoints = _refused("checkpoint")
    result = await orch.run("approval", {"change": "local"}, "local-1")
    assert result.status == "interrupted"
    result = await orch.resume("local-1", {"approve": True, "by": "ana"})
    assert result.status == "completed" and _refused("checkpoint") == checkpoints


async def test_a_runner_stopped_inside_a_fenced_write_does_not_hide_its_run_from_the_sweeper(
    orchestrator_factory: Any,
) -> None:
    """A runner frozen (SIGSTOP, a stalled VM) in the middle of a fenced write holds the share
    lock on its run's row, and the sweeper skips locked runs: the pool's sessions are ended by
    the server once idle in a transaction for a lease, so the run is swept all the same."""
    orch = await orchestrator_factory(builtin=False, workflows={"approval": approval},
                                      run_lease=1.0)
    svc = RunService(orch)
    queued = await svc.submit("approval", {"change": "x"})
    run = await svc.queue.claim("frozen")
    assert run is not None and run.run_id == queued.run_id
    swept = 0
    async with orch.runtime.db.pool.connection() as conn:
        setting = await (await conn.execute("SHOW idle_in_transaction_session_timeout")).fetchone()
        assert setting is not None and next(iter(setting.values())) == "1s"
        # the server ends the frozen session (the error says so, or the connection is gone)
        with pytest.raises((psycopg.errors.IdleInTransactionSessionTimeout,
                            psycopg.OperationalError)):
            async with conn.transaction():
                await conn.execute("SELECT orchestrator_fence(%s, %s, %s)",
                                   (run.run_id, run.lease_epoch, "frozen"))
                # frozen here, the row share-locked, until the server ends the session
                deadline = asyncio.get_running_loop().time() + 10
                while not swept and asyncio.get_running_loop().time() < deadline:
                    swept = await svc.queue.sweep()
                    await asyncio.sleep(0.2)
                await conn.execute("SELECT 1")
    assert swept == 1, "the sweeper never got the frozen runner's run"
    assert (await svc.get_run(run.run_id)).status == "queued"


async def test_each_kind_of_checkpoint_write_carries_the_check_in_its_own_statements(
    service: RunService,
) -> None:
    """The check folded into the saver's INSERTs (a blob channel first, then the checkpoint;
    writes) and sent before any other statement (a thread's deletion): a stale fence's
    writes are all refused and store nothing, the holder's all go through."""
    await service.submit("approval", {"change": "x"}, "fence-fold")
    old = await _claim(service, "r1")
    await _expire(service, old)
    assert await service.queue.sweep() == 1
    new = await _claim(service, "r2")
    saver = make_checkpointer(service.orch.runtime.db)
    config = {"configurable": {"thread_id": "fence-fold", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"state": {"items": [1, 2, 3]}, "step": 1}
    versions = {"state": "00000001", "step": "00000001"}
    checkpoint["channel_versions"] = dict(versions)
    stale = Fence("fence-fold", old.run_id, old.lease_epoch, "r1")
    assert stale.fenced_query(saver.UPSERT_CHECKPOINT_BLOBS_SQL) is not None
    assert stale.fenced_query("DELETE FROM checkpoints WHERE thread_id = %s") is None
    with fenced(stale):
        with pytest.raises(LeaseLost):
            await saver.aput(config, checkpoint, {"source": "loop", "step": 1}, versions)
        with pytest.raises(LeaseLost):
            await saver.aput_writes({"configurable": {**config["configurable"],
                                                      "checkpoint_id": checkpoint["id"]}},
                                    [("state", {"z": 1}), ("custom", "zombie")], "task-z")
    db = service.orch.runtime.db
    counts = "SELECT (SELECT count(*) FROM {t} WHERE thread_id = %s)"
    for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
        row = await db.fetchone(counts.format(t=table), ("fence-fold",))
        assert list(row.values())[0] == 0, table
    holder = Fence("fence-fold", new.run_id, new.lease_epoch, "r2")
    with fenced(holder):
        stored = await saver.aput(config, checkpoint, {"source": "loop", "step": 1}, versions)
        await saver.aput_writes(stored, [("state", {"z": 1}), ("custom", "held")], "task-1")
    got = await saver.aget_tuple(config)
    assert got.checkpoint["channel_values"]["state"] == {"items": [1, 2, 3]}
    assert ("task-1", "custom", "held") in got.pending_writes
    with fenced(stale), pytest.raises(LeaseLost):
        await saver.adelete_thread("fence-fold")
    assert (await saver.aget_tuple(config)) is not None

"""The run queue of `orchestrator serve` and RunService, against real PostgreSQL: claim order,
one running run per thread under concurrent claimers, backoff and dead letters, atomic
enqueueing, answers checked when they are queued, cancel, the runner-side execution."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from orchestrator.state.db import Database

from orchestrator.errors import InvalidAnswer, InvalidInput, RunNotFound, WorkflowBusy
from orchestrator.service.queue import RunQueue, RunRecord
from orchestrator.service.runs import RunService

from .support.graphs_for_tests import approval, approval_service

#: thread ids are unique in the whole database (every namespace): this module's own prefix
P = f"q{uuid.uuid4().hex[:6]}-"


@pytest.fixture
async def service(orchestrator_factory: Any) -> RunService:
    return await approval_service(orchestrator_factory)


async def _sql(svc: RunService, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return await svc.orch.runtime.db.fetch(query, params)


async def _claim_until(queue: RunQueue, runner: str, timeout: float = 10.0) -> RunRecord:
    """Poll the queue (a backoff's not_before is in the database's clock) until a run comes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (run := await queue.claim(runner)) is not None:
            return run
        await asyncio.sleep(0.02)
    pytest.fail(f"no run became claimable within {timeout}s")


async def test_claim_order_is_priority_then_not_before_then_age(service: RunService) -> None:
    low = await service.submit("approval", {"change": "a"}, priority=0)
    high = await service.submit("approval", {"change": "b"}, priority=5)
    later = await service.submit("approval", {"change": "c"}, priority=9)
    mid = await service.submit("approval", {"change": "d"}, priority=1)
    await _sql(service, "UPDATE runs SET not_before = now() + interval '1 hour' "
                        "WHERE run_id = %s RETURNING run_id", (later.run_id,))
    claimed = [await service.queue.claim("r1") for _ in range(4)]
    assert [r.run_id if r else None for r in claimed] == [high.run_id, mid.run_id, low.run_id,
                                                          None]
    assert {r.status for r in claimed if r} == {"running"}
    assert [r.lease_epoch for r in claimed if r] == [1, 1, 1]
    await _sql(service, "UPDATE runs SET not_before = now() WHERE run_id = %s RETURNING run_id",
               (later.run_id,))
    again = await service.queue.claim("r1")
    assert again is not None and again.run_id == later.run_id and again.workflow_type == "approval"


async def test_never_two_running_runs_of_one_thread_under_concurrent_claimers(
    service: RunService, orchestrator_settings: Any,
) -> None:
    queue = service.queue
    threads = []
    for i in range(6):
        first = await service.submit("approval", {"change": f"t{i}"})
        threads.append(first.thread_id)
        async with service.orch.runtime.db.transaction() as conn:
            for _ in range(3):  # more queued runs of the same thread, claimable one at a time
                await queue.enqueue(conn, first.thread_id, "recover")
    claimed: list[RunRecord] = []
    async with Database.connect(orchestrator_settings.database_url, max_size=24) as db:
        racers = [RunQueue(db, service.orch.settings) for _ in range(24)]

        async def claimer(n: int) -> None:
            while (run := await racers[n].claim(f"runner-{n}")) is not None:
                claimed.append(run)

        await asyncio.wait_for(asyncio.gather(*(claimer(n) for n in range(24))), 30)
    # one run per thread was claimed; the others wait for it
    assert sorted(r.thread_id for r in claimed) == sorted(threads)
    rows = await _sql(service, "SELECT thread_id, count(*) AS n FROM runs WHERE namespace = %s "
                               "AND status = 'running' GROUP BY thread_id", (queue.namespace,))
    assert {r["thread_id"]: r["n"] for r in rows} == dict.fromkeys(threads, 1)
    # the unique index, not only the claim's filter, refuses a second running run
    waiting = await _sql(service, "SELECT run_id FROM runs WHERE thread_id = %s "
                                  "AND status = 'queued' LIMIT 1", (threads[0],))
    with pytest.raises(psycopg.errors.UniqueViolation, match="runs_one_running_per_thread"):
        await _sql(service, "UPDATE runs SET status = 'running' WHERE run_id = %s "
                            "RETURNING run_id", (waiting[0]["run_id"],))
    # when the running run ends, the thread's next run (in order) is claimable
    first = next(r for r in claimed if r.thread_id == threads[0])
    assert await queue.finish(first, first.runner or "", outcome="interrupted")
    nxt = await queue.claim("r2")
    assert nxt is not None and nxt.thread_id == threads[0] and nxt.run_id > first.run_id


async def test_failures_back_off_then_the_run_is_a_dead_letter(orchestrator_factory: Any) -> None:
    orch = await orchestrator_factory(builtin=False, workflows={"approval": approval},
                                      run_max_attempts=3, run_retry_backoff=0.3)
    svc = RunService(orch)
    queued = await svc.submit("approval", {"change": "x"}, by="ana")
    delays = []
    for attempt in (1, 2):
        run = await _claim_until(svc.queue, "r1")
        assert run.run_id == queued.run_id and run.attempts == attempt
        failed = await svc.queue.fail(run, "r1", {"code": "internal_error", "message": "boom"})
        assert failed is not None and failed.status == "queued"
        row = (await _sql(svc, "SELECT extract(epoch FROM not_before - now()) AS d FROM runs "
                               "WHERE run_id = %s", (run.run_id,)))[0]
        delays.append(float(row["d"]))
        assert await svc.queue.claim("r1") is None  # not before the backoff
    assert 0.2 < delays[0] <= 0.3 and 0.5 < delays[1] <= 0.6  # 0.3 s, then doubled
    run = await _claim_until(svc.queue, "r1")
    assert run.attempts == 3
    dead = await svc.queue.fail(run, "r1", {"code": "internal_error", "message": "boom"})
    assert dead is not None and dead.status == "dead" and dead.error["message"] == "boom"
    # a failed lease holder is not the holder any more: a second fail does nothing
    assert await svc.queue.fail(run, "r1", {"code": "x", "message": "y"}) is None
    record = await orch.runtime.workflows.get(queued.thread_id)
    assert record.status == "failed" and "dead after 3 attempts" in record.error["message"]
    assert [r.run_id for r in await svc.dead_letters()] == [queued.run_id]
    # replay: a new queued run of the same kind, the workflow queued again
    replayed = await svc.replay(queued.run_id, by="ops")
    assert (replayed.kind, replayed.status, replayed.attempts) == ("start", "queued", 0)
    assert replayed.requested_by == "ops"
    assert (await orch.runtime.workflows.get(queued.thread_id)).status == "queued"
    with pytest.raises(InvalidInput, match="not dead"):
        await svc.replay(replayed.run_id)
    assert await svc.purge(queued.run_id) == 1
    assert await svc.dead_letters() == []
    with pytest.raises(RunNotFound):
        await svc.purge(queued.run_id)
    with pytest.raises(RunNotFound):
        await svc.get_run(queued.run_id)
    assert (await svc.get_run(replayed.run_id)).status == "queued"


async def test_sweep_requeues_expired_leases_and_kills_runs_past_their_attempts(
    orchestrator_factory: Any,
) -> None:
    orch = await orchestrator_factory(builtin=False, workflows={"approval": approval},
                                      run_max_attempts=2)
    svc = RunService(orch)
    queued = await svc.submit("approval", {"change": "x"})
    for attempt, after in ((1, "queued"), (2, "dead")):
        run = await _claim_until(svc.queue, f"r{attempt}")
        assert await svc.queue.renew(f"r{attempt}", {run.run_id: run.lease_epoch}) == {run.run_id}
        assert await svc.queue.sweep() == 0  # a live lease is not swept
        await _sql(svc, "UPDATE runs SET lease_expires_at = now() - interval '1 second' "
                        "WHERE run_id = %s RETURNING run_id", (run.run_id,))
        # an expired lease is not revived by a late heartbeat
        assert await svc.queue.renew(f"r{attempt}", {run.run_id: run.lease_epoch}) == set()
        assert await svc.queue.sweep() == 1
        assert (await svc.get_run(queued.run_id)).status == after
    assert (await orch.runtime.workflows.get(queued.thread_id)).status == "failed"


async def test_release_hands_a_run_back_without_counting_the_attempt(service: RunService) -> None:
    await service.submit("approval", {"change": "x"})
    run = await _claim_until(service.queue, "r1")
    assert await service.queue.release(run, "r1")
    assert not await service.queue.release(run, "r1")  # not its lease any more
    again = await _claim_until(service.queue, "r2")
    assert again.run_id == run.run_id and again.attempts == 1 and again.lease_epoch == 2
    # its workflow was queued again, unstarted: the next claim starts it, first attempt
    assert again.claimed is not None and again.claimed.was == "queued"
    assert again.claimed.record.attempt == run.claimed.record.attempt


async def test_submit_writes_the_workflow_row_and_its_run_in_one_transaction(
    service: RunService,
) -> None:
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):  # the run's insert fails
        await service.submit("approval", {"change": "x"}, f"{P}atomic-1", priority=2**40)
    assert await _sql(service, f"SELECT 1 FROM workflows WHERE thread_id = '{P}atomic-1'") == []
    assert await _sql(service, f"SELECT 1 FROM runs WHERE thread_id = '{P}atomic-1'") == []
    run = await service.submit("approval", {"change": "x"}, f"{P}atomic-1", by="ana")
    assert (run.kind, run.status, run.requested_by) == ("start", "queued", "ana")
    assert (await service.orch.runtime.workflows.get(f"{P}atomic-1")).status == "queued"
    with pytest.raises(InvalidInput, match="already used"):
        await service.submit("approval", {"change": "y"}, f"{P}atomic-1")
    with pytest.raises(InvalidInput, match="change"):
        await service.submit("approval", {"chnage": "y"}, "atomic-2")
    assert len(await service.runs(thread_id=f"{P}atomic-1")) == 1
    assert await _sql(service, "SELECT 1 FROM workflows WHERE thread_id = 'atomic-2'") == []


async def test_a_run_from_submit_to_answer_records_who_answered(service: RunService) -> None:
    orch = service.orch
    submitted = await service.submit("approval", {"change": "PR-7"}, f"{P}ask-1", by="ci")
    run = await _claim_until(service.queue, "r1")
    result = await service.execute(run, "r1")
    assert result.status == "interrupted"
    ended = await service.get_run(submitted.run_id)  # execute recorded the run's end
    assert (ended.status, ended.outcome) == ("succeeded", "interrupted")
    # a malformed answer: refused now, nothing stored, the question still pending
    with pytest.raises(InvalidAnswer, match="approve"):
        await service.resume(f"{P}ask-1", {"approve": "yes"}, by="ana")
    assert [r.kind for r in await service.runs(thread_id=f"{P}ask-1")] == ["start"]
    details = await orch.get(f"{P}ask-1")
    assert details.record.status == "interrupted" and details.interrupts
    # the answerer is whoever the service says answered, whatever the answer claims
    answer = await service.resume(f"{P}ask-1", {"approve": True, "by": "mallory"}, by="ana")
    assert answer.payload == {"value": {"approve": True, "by": "ana"}, "by": "ana"}
    assert answer.requested_by == "ana"
    with pytest.raises(WorkflowBusy, match="already has run"):
        await service.resume(f"{P}ask-1", {"approve": False}, by="bob")
    run = await _claim_until(service.queue, "r2")
    assert run.run_id == answer.run_id
    result = await service.execute(run, "r2")
    assert result.status == "completed" and result.final_result["by"] == "ana"
    assert (await service.get_run(run.run_id)).outcome == "completed"
    record = await orch.runtime.workflows.get(f"{P}ask-1")
    assert record.status == "completed" and record.owner is None
    with pytest.raises(InvalidInput, match="completed"):
        await service.resume(f"{P}ask-1", {"approve": True}, by="ana")


async def test_an_answer_that_no_longer_fits_carries_on_without_deciding(
    service: RunService,
) -> None:
    await service.submit("approval", {"change": "PR-8"}, "ask-2")
    run = await _claim_until(service.queue, "r1")
    await service.execute(run, "r1")
    answer = await service.resume("ask-2", {"approve": True}, by="ana")
    # the queued answer is changed under the service's feet: it must not decide
    await _sql(service, "UPDATE runs SET payload = '{\"value\": {\"approve\": \"yes\"}}' "
                        "WHERE run_id = %s RETURNING run_id", (answer.run_id,))
    run = await _claim_until(service.queue, "r1")
    result = await service.execute(run, "r1")
    assert result.status == "interrupted" and result.interrupts  # asked again


async def test_cancel_of_a_queued_run_and_of_a_running_one(service: RunService) -> None:
    queued = await service.submit("approval", {"change": "x"}, f"{P}c-1")
    cancel = await service.cancel(f"{P}c-1", by="ana")
    assert (cancel.kind, cancel.status, cancel.outcome) == ("cancel", "succeeded", "cancelled")
    assert (await service.get_run(queued.run_id)).status == "cancelled"
    assert (await service.orch.runtime.workflows.get(f"{P}c-1")).status == "cancelled"
    assert await service.queue.claim("r1") is None
    with pytest.raises(InvalidInput, match="cancelled"):
        await service.cancel(f"{P}c-1")
    with pytest.raises(InvalidInput, match="cancelled"):
        await service.orch.resume(f"{P}c-1")

    # a running run: its runner is told (NOTIFY) and a cancel run waits behind it
    notes = service.queue.listen()
    first_note = asyncio.ensure_future(anext(notes))
    await asyncio.sleep(0.2)  # LISTEN is issued by the first anext
    await service.submit("approval", {"change": "y"}, "c-2")
    assert await asyncio.wait_for(first_note, 5) == "run"
    running = await _claim_until(service.queue, "r1")
    cancel = await service.cancel("c-2", by="ana")
    assert (cancel.status, cancel.priority > 0) == ("queued", True)
    assert await asyncio.wait_for(anext(notes), 5) == "run"
    assert await asyncio.wait_for(anext(notes), 5) == "cancel:c-2"
    await notes.aclose()
    assert await service.queue.claim("r2") is None  # not while c-2's run runs
    assert await service.cancelled(running, "r1")
    assert (await service.get_run(running.run_id)).status == "cancelled"
    assert (await service.orch.runtime.workflows.get("c-2")).status == "cancelled"
    run = await _claim_until(service.queue, "r2")
    assert run.run_id == cancel.run_id
    assert (await service.execute(run, "r2")).status == "cancelled"


async def test_local_resume_and_recover_leave_threads_of_the_service_alone(
    service: RunService,
) -> None:
    await service.submit("approval", {"change": "x"}, f"{P}svc-1")
    with pytest.raises(WorkflowBusy, match="orchestrator serve"):
        await service.orch.resume(f"{P}svc-1")
    run = await _claim_until(service.queue, "r1")
    # the row says running under a process that is gone: still not the CLI's to recover
    await _sql(service, "UPDATE workflows SET status = 'running', owner = 'gone:1', "
                        f"heartbeat_at = now() - interval '1 hour' WHERE thread_id = '{P}svc-1' "
                        "RETURNING 1")
    assert await service.orch.recover() == []
    assert (await service.orch.runtime.workflows.get(f"{P}svc-1")).owner == "gone:1"
    assert run.kind == "start"


async def test_queued_retried_and_dead_runs_are_in_the_events_stream(
    orchestrator_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console's lists change when a run is queued, fails and is tried again, and dies:
    ``run.queued``, ``run.retrying``, ``run.dead`` (a runner's error: fault injected)."""
    from orchestrator.service.runner import Runner

    orch = await orchestrator_factory(builtin=False, workflows={"approval": approval},
                                      run_max_attempts=2, run_retry_backoff=0.1)
    svc = RunService(orch)

    async def broken(self: RunService, run: RunRecord, runner: str, **kw: Any) -> Any:
        raise RuntimeError("the runner's database went away")

    monkeypatch.setattr(RunService, "execute", broken)
    queued = await svc.submit("approval", {"change": "x"}, by="ana")
    runner = Runner(svc, svc.queue, concurrency=1, run_lease=orch.settings.run_lease,
                    poll_interval=0.1)
    await runner.start()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while (await svc.get_run(queued.run_id)).status != "dead":
            assert asyncio.get_running_loop().time() < deadline, "the run never died"
            await asyncio.sleep(0.05)
    finally:
        await runner.drain(0)
    replayed = await svc.replay(queued.run_id, by="bo")
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # published off the caller's path: polled, bounded
        events = [e for e in await orch.runtime.bus.recent_events(1000)
                  if e.data.get("thread_id") == queued.thread_id and e.type.startswith("run.")]
        if len(events) >= 4 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [(e.type, e.data["run_id"], e.data.get("by"), e.data.get("attempts"))
            for e in events] == [("run.queued", queued.run_id, "ana", None),
                                 ("run.retrying", queued.run_id, None, 1),
                                 ("run.dead", queued.run_id, None, 2),
                                 ("run.queued", replayed.run_id, "bo", None)]
    assert events[-1].data["workflow_type"] == "approval"
    assert "went away" in events[-2].data["error"]["message"]


async def test_an_ended_run_wakes_the_runners_only_when_a_run_of_its_thread_waits(
    service: RunService,
) -> None:
    """A run's end tells the runners (NOTIFY) only when its thread has a run queued behind it,
    which its end made claimable; a notification for nothing costs every runner a claim."""
    notes = service.queue.listen()
    note = asyncio.ensure_future(anext(notes))
    await asyncio.sleep(0.2)  # LISTEN is issued by the first anext
    await service.submit("approval", {"change": "x"}, f"{P}n-1")
    assert await asyncio.wait_for(note, 5) == "run"  # the submit's
    alone = await _claim_until(service.queue, "r1")
    note = asyncio.ensure_future(anext(notes))
    assert await service.queue.finish(alone, "r1", outcome="interrupted")
    done, _ = await asyncio.wait({note}, timeout=0.5)
    assert not done, "the end of a run with nothing behind it woke the runners"

    await service.submit("approval", {"change": "y"}, f"{P}n-2")
    assert await asyncio.wait_for(note, 5) == "run"
    running = await _claim_until(service.queue, "r1")
    await service.cancel(f"{P}n-2")  # a cancel run queued behind the running one
    assert await asyncio.wait_for(anext(notes), 5) == "run"
    assert await asyncio.wait_for(anext(notes), 5) == f"cancel:{P}n-2"
    assert await service.queue.finish(running, "r1", outcome="interrupted")
    assert await asyncio.wait_for(anext(notes), 5) == "run"
    await notes.aclose()

"""Chaos with real processes (issue 13, item 7): runners killed with -9 while they run
workflows that call agents, and a runner paused past its lease (a zombie).

The ``tally`` agent lives in an ``orchestrator worker`` process of its own, so it survives the
runners' deaths; every execution of its handler is appended to an events file (one line per
start, with the request id), which is how "no handler ran twice" is counted. The random
choices come from one fixed seed (``CHAOS_SEED`` to try another), printed with any failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.service.queue import RunRecord
from tests.support.serve_process import (
    ServiceHandle,
    service_settings_env,
    stall_flag,
    start_serve,
    start_worker,
    started_requests,
    svcflow,
)
from tests.test_service_runner import finished, pid_of, running_on, wait_for

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CHAOS_SEED", "1313"))
RUN_LEASE, SWEEP_INTERVAL = 2.0, 0.5
#: what recovery may take beyond lease + sweep interval: noticing the expiry, the claim, and
#: this test's own polling, on a loaded two-core machine
RECOVERY_MARGIN = 1.0
RUNS, KILLS, RUNNERS, SLOTS = 300, 10, 3, 6
STEPS, STEP_SECONDS = 2, 0.6


@pytest.fixture
def chaos_env(service_env: dict[str, str]) -> dict[str, str]:
    """Short leases and sweeps; a worker that runs every runner slot's agent call at once."""
    slots = RUNNERS * SLOTS
    return service_settings_env(service_env, run_lease=RUN_LEASE, sweep_interval=SWEEP_INTERVAL,
                                drain_grace=0.5, worker_min_concurrency=slots,
                                worker_max_concurrency=slots)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return tmp_path / "tally-events.txt"


@pytest.fixture
def processes() -> Iterator[list[ServiceHandle]]:
    """Every process a test starts; killed by pid (and resumed first, if paused) at teardown."""
    started: list[ServiceHandle] = []
    yield started
    for handle in started:
        if handle.alive():
            os.kill(handle.pid, signal.SIGCONT)
        handle.kill()


@pytest.fixture
def start(chaos_env: dict[str, str], tmp_path: Path, events: Path,
          processes: list[ServiceHandle]) -> Callable[..., Any]:
    """``await start("serve", concurrency=2)`` / ``await start("worker")``."""

    async def start_one(kind: str, **kwargs: Any) -> ServiceHandle:
        launch = start_serve if kind == "serve" else start_worker
        handle = await asyncio.to_thread(launch, chaos_env, tmp_path, events, **kwargs)
        processes.append(handle)
        return handle

    return start_one


@pytest.fixture
async def runs(orchestrator_factory: Callable[..., Any]) -> AsyncIterator[Any]:
    """A RunService on the test's namespace; this process hosts no agents."""
    from orchestrator.service.runs import RunService

    orch = await orchestrator_factory(builtin=False, workflows={"svcflow": svcflow})
    yield RunService(orch)


async def _runs_of(runs: Any, ids: list[int]) -> list[RunRecord]:
    rows = await runs.orch.runtime.db.fetch(
        "SELECT run_id FROM runs WHERE run_id = ANY(%s)", (ids,))
    return [await runs.get_run(r["run_id"]) for r in rows]


async def _orphans(runs: Any, victim: ServiceHandle) -> list[int]:
    """The runs a dead runner held: still ``running`` under it."""
    running = await runs.runs(status="running", limit=1000)
    return [r.run_id for r in running if r.runner and pid_of(r.runner) == victim.pid]


async def _holding(runs: Any, runners: list[ServiceHandle]) -> list[ServiceHandle]:
    """The runners executing at least one run right now."""
    running = await runs.runs(status="running", limit=1000)
    pids = {pid_of(r.runner) for r in running if r.runner}
    return [h for h in runners if h.pid in pids]


async def _recovered(runs: Any, run_ids: list[int], victim: ServiceHandle) -> bool:
    """Whether every one of ``run_ids`` runs again (or already ended) on another runner."""
    for run in await _runs_of(runs, run_ids):
        if run.status == "queued" or (run.runner and pid_of(run.runner) == victim.pid):
            return False
    return True


def _check_each_request_once(events: Path, expected: int) -> None:
    counts = started_requests(events)
    twice = {rid: n for rid, n in counts.items() if n > 1}
    assert not twice, f"agent handlers executed more than once: {twice}"
    assert len(counts) == expected, f"{len(counts)} agent requests, expected {expected}"


async def test_three_runners_complete_300_runs_while_one_is_killed_ten_times(
        start: Callable[..., Any], runs: Any, events: Path) -> None:
    print(f"chaos seed {SEED} (CHAOS_SEED={SEED} repeats this run)")
    rng = random.Random(SEED)
    try:
        await _chaos(start, runs, events, rng)
    except BaseException as exc:
        exc.add_note(f"chaos seed: CHAOS_SEED={SEED}")
        raise


async def _chaos(start: Callable[..., Any], runs: Any, events: Path,
                 rng: random.Random) -> None:
    await start("worker")
    runners = list(await asyncio.gather(*(start("serve", concurrency=SLOTS)
                                          for _ in range(RUNNERS))))
    submitted: list[int] = []
    batch = RUNS // (KILLS + 1)
    recoveries: list[float] = []
    orphaned: list[int] = []
    began = time.monotonic()

    async def submit(count: int, over: float) -> None:
        """``count`` runs, evenly over ``over`` seconds (the load a team puts on it)."""
        for _ in range(count):
            run = await runs.submit("svcflow", {"steps": STEPS, "seconds": STEP_SECONDS})
            submitted.append(run.run_id)
            await asyncio.sleep(over / count)

    for kill in range(KILLS):
        # a batch of work, and the kill at a random moment while it runs
        await submit(batch, rng.uniform(1.0, 3.0))
        victim = rng.choice(await _holding(runs, runners) or runners)
        victim.kill()
        killed_at = time.monotonic()
        runners.remove(victim)
        orphans = await _orphans(runs, victim)
        replacement = asyncio.create_task(start("serve", concurrency=SLOTS))
        limit = RUN_LEASE + SWEEP_INTERVAL + RECOVERY_MARGIN
        await wait_for(lambda: _recovered(runs, orphans, victim),  # noqa: B023 (awaited here)
                       f"kill {kill + 1}: the {len(orphans)} run(s) of the killed runner "
                       "running elsewhere", limit + 10)
        took = time.monotonic() - killed_at
        recoveries.append(took)
        orphaned.append(len(orphans))
        print(f"kill {kill + 1}: pid {victim.pid} held {len(orphans)} run(s); running "
              f"elsewhere after {took:.2f} s")
        assert took <= limit, f"kill {kill + 1}: recovery took {took:.2f} s (limit {limit} s)"
        runners.append(await replacement)
    await submit(RUNS - len(submitted), 1.0)
    # a victim's runs may all end between choosing it and the kill, but not often
    assert sum(1 for n in orphaned if n) >= KILLS - 1, f"runs held by the killed: {orphaned}"

    done = await wait_for(lambda: _all_finished(runs, submitted), "all 300 runs finished", 120)
    print(f"{len(done)} runs in {time.monotonic() - began:.1f} s; recoveries "
          f"{min(recoveries):.2f}..{max(recoveries):.2f} s")
    assert len(done) == RUNS
    assert {(r.status, r.outcome) for r in done} == {("succeeded", "completed")}
    results = await runs.orch.runtime.db.fetch(
        "SELECT status, count(*) AS n FROM workflows WHERE thread_id = ANY(%s) GROUP BY status",
        ([r.thread_id for r in done],))
    assert {r["status"]: r["n"] for r in results} == {"completed": RUNS}
    for run in rng.sample(done, 10):  # the results themselves, for a sample
        details = await runs.orch.get(run.thread_id)
        assert details.values["final_result"] == {"status": "completed", "steps": STEPS}
    _check_each_request_once(events, RUNS * STEPS)


async def _all_finished(runs: Any, run_ids: list[int]) -> list[RunRecord] | None:
    open_ = await runs.orch.runtime.db.fetchone(
        "SELECT count(*) AS n FROM runs WHERE run_id = ANY(%s) "
        "AND status IN ('queued', 'running')", (run_ids,))
    if open_ is None or open_["n"]:
        return None
    return await _runs_of(runs, run_ids)


async def test_a_dead_runners_run_goes_back_ahead_of_the_runs_queued_while_it_ran(
        runs: Any) -> None:
    """Recovery within lease + sweep interval holds under a backlog too: a swept run (and a
    drained runner's hand-back) keeps its place in the queue instead of going behind every run
    queued while it ran."""
    first = await runs.submit("svcflow", {})
    held = await runs.queue.claim("r1")
    assert held is not None and held.run_id == first.run_id
    for _ in range(3):
        await runs.submit("svcflow", {})
    await runs.orch.runtime.db.execute(
        "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s",
        (held.run_id,))
    assert await runs.queue.sweep() == 1
    again = await runs.queue.claim("r2")
    assert again is not None and again.run_id == first.run_id
    assert await runs.queue.release(again, "r2")
    last = await runs.queue.claim("r3")
    assert last is not None and last.run_id == first.run_id


# -- the zombie ---------------------------------------------------------------------------------


def _refused_writes(handle: ServiceHandle) -> dict[str, float]:
    """``orchestrator_fenced_writes_refused_total`` by ``what``, from a serve's /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{handle.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = {"checkpoint": 0.0, "workflow": 0.0}
    for line in text.splitlines():
        if line.startswith("orchestrator_fenced_writes_refused_total{"):
            labels, _, value = line.partition("} ")
            what = labels.split('what="', 1)[1].split('"', 1)[0]
            counts[what] = float(value)
    return counts


async def _thread_writes(runs: Any, thread_id: str) -> dict[str, Any]:
    """What is stored for a thread: its checkpoints, their writes, the workflow row's
    version."""
    row = await runs.orch.runtime.db.fetchone(
        "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) AS checkpoints, "
        "(SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id = %(t)s) AS latest, "
        "(SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(t)s) AS writes, "
        "(SELECT version FROM workflows WHERE thread_id = %(t)s) AS version",
        {"t": thread_id})
    assert row is not None
    return dict(row)


async def test_a_paused_runner_past_its_lease_has_every_write_refused_after_it_resumes(
        start: Callable[..., Any], runs: Any, events: Path) -> None:
    """The zombie is paused (SIGSTOP) right before a checkpoint write (serve_process's
    ``stall_flag``), past its lease; another runner takes the run over and completes it; then
    the zombie is resumed (SIGCONT) and what it does first is the write it was about to
    make."""
    await start("worker")
    sweeper = await start("serve", concurrency=1)
    await wait_for(lambda: "this process sweeps the cluster" in sweeper.output(),
                   "the first runner holds the sweeper lock", 10)
    # the sweeper's one slot busy first, so the run under test goes to the other runner (a
    # paused sweeper would sweep nothing)
    busy = await runs.submit("svcflow", {"steps": 1, "seconds": 6.0})  # one call
    await wait_for(lambda: running_on(runs, busy.run_id), "the sweeper's runner busy", 20)
    zombie = await start("serve", concurrency=1)
    target = await runs.submit("svcflow", {"steps": 3, "seconds": 1.0},
                               f"zombie-{uuid.uuid4().hex[:8]}")
    held = await wait_for(lambda: running_on(runs, target.run_id), "the run claimed", 20)
    assert pid_of(held.runner) == zombie.pid
    # its next checkpoint write, once its first agent call answers, stalls
    await wait_for(lambda: len(started_requests(events)) == 2, "its first call started", 20)
    flag = stall_flag(events, target.thread_id)
    flag.touch()
    await wait_for(lambda: flag.with_name(flag.name + ".taken").exists(), "the zombie stalls",
                   20)
    os.kill(zombie.pid, signal.SIGSTOP)
    before = _refused_writes(sweeper)

    taken = await wait_for(lambda: running_on(runs, target.run_id, not_on=held.runner),
                           "the other runner took the run over", 30)
    assert pid_of(taken.runner) == sweeper.pid
    assert taken.lease_epoch == held.lease_epoch + 1
    done = await wait_for(lambda: finished(runs, target.run_id), "the run finished", 30)
    stored = await _thread_writes(runs, target.thread_id)

    os.kill(zombie.pid, signal.SIGCONT)
    await wait_for(lambda: f"finished run {target.run_id} " in zombie.output(),
                   "the resumed runner gave the run up", 15)
    log = zombie.output()
    refused = _refused_writes(zombie)
    assert refused["checkpoint"] >= 1, log
    assert f"refused a checkpoint write of workflow {target.thread_id}" in log
    assert f"finished run {target.run_id} (start of thread {target.thread_id}): lease lost" \
        in log
    # nothing of the zombie's was stored after the takeover: the thread is as the new holder
    # left it, and the new holder's writes were never refused
    assert await _thread_writes(runs, target.thread_id) == stored
    assert _refused_writes(sweeper) == before

    # the workflow completed once, with the right result
    assert (done.status, done.outcome, done.runner) == ("succeeded", "completed", taken.runner)
    details = await runs.orch.get(target.thread_id)
    assert details.record.status == "completed"
    assert details.values["final_result"] == {"status": "completed", "steps": 3}
    assert sweeper.output().count(f"finished run {target.run_id} ") == 1
    assert f"finished run {target.run_id} (start of thread {target.thread_id}): completed" \
        in sweeper.output()
    assert (await wait_for(lambda: finished(runs, busy.run_id), "the other run finished",
                           30)).outcome == "completed"
    _check_each_request_once(events, 4)


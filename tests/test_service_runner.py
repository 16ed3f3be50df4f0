"""Runners and the sweeper of ``orchestrator serve``, with real processes.

``serve`` and ``worker`` subprocesses (tests/support/serve_process.py) share the test's
database, Redis and namespace; runs are submitted through ``RunService`` from the test. The
``tally`` agent notes each handler execution in an events file, so a handler run twice for one
request shows.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.processes import parse_process_id
from orchestrator.service.runner import PeriodicPass, Runner, Sweeper
from tests.support.serve_process import (
    ROOT,
    ServiceHandle,
    service_settings_env,
    start_serve,
    start_worker,
    started_requests,
    svcflow,
    tally_agent,
)

pytestmark = pytest.mark.slow

RUN_LEASE, SWEEP_INTERVAL, DRAIN_GRACE = 2.0, 0.5, 0.5


@pytest.fixture
def serve_env(service_env: dict[str, str]) -> dict[str, str]:
    """A short lease and sweep, so a dead runner's run moves within seconds."""
    return service_settings_env(service_env, run_lease=RUN_LEASE, sweep_interval=SWEEP_INTERVAL,
                                drain_grace=DRAIN_GRACE)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return tmp_path / "tally-events.txt"


@pytest.fixture
def processes() -> Iterator[list[ServiceHandle]]:
    """Every serve/worker process a test starts; killed by pid at teardown."""
    started: list[ServiceHandle] = []
    yield started
    for handle in started:
        handle.kill()


@pytest.fixture
def start(serve_env: dict[str, str], tmp_path: Path, events: Path,
          processes: list[ServiceHandle]) -> Callable[..., Any]:
    """``await start("serve", concurrency=2)`` / ``await start("worker")``; ``settings``
    overrides ``serve_env``'s (``{"drain_grace": 10}``)."""

    async def start_one(kind: str, settings: dict[str, Any] | None = None,
                        **kwargs: Any) -> ServiceHandle:
        launch = start_serve if kind == "serve" else start_worker
        env = service_settings_env(serve_env, **(settings or {}))
        handle = await asyncio.to_thread(launch, env, tmp_path, events, **kwargs)
        processes.append(handle)
        return handle

    return start_one


@pytest.fixture
async def runs(orchestrator_factory: Callable[..., Any]) -> AsyncIterator[Any]:
    """A RunService on the test's namespace; this process hosts no agents."""
    from orchestrator.service.runs import RunService

    orch = await orchestrator_factory(builtin=False, workflows={"svcflow": svcflow})
    yield RunService(orch)


async def wait_for(check: Callable[[], Any], what: str, timeout: float,
                   interval: float = 0.05) -> Any:
    """Poll ``check`` (a function, or one returning an awaitable) until it gives something
    true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)


def pid_of(runner: str) -> int:
    ref = parse_process_id(runner)
    assert ref is not None, runner
    return ref.pid


async def running_on(runs: Any, run_id: int, *, not_on: str | None = None) -> Any:
    """The run once it is running on a runner other than ``not_on``, else None."""
    run = await runs.get_run(run_id)
    if run.status == "running" and run.runner and run.runner != not_on:
        return run
    return None


async def finished(runs: Any, run_id: int) -> Any:
    run = await runs.get_run(run_id)
    return run if run.status not in ("queued", "running") else None


def assert_each_request_once(events: Path, expected: int) -> None:
    counts = started_requests(events)
    assert len(counts) == expected, counts
    twice = {rid: n for rid, n in counts.items() if n > 1}
    assert not twice, f"handlers executed more than once: {twice}"


async def test_a_submitted_run_completes_on_a_runner_that_hosts_its_agents(
        start: Callable[..., Any], runs: Any, events: Path, orchestrator_factory: Any) -> None:
    serve = await start("serve", concurrency=2, local_agents=True)
    assert f"listening on {serve.url}" in serve.output()
    assert "with 2 slot(s)" in serve.output()

    run = await runs.submit("svcflow", {"steps": 2})
    done = await wait_for(lambda: finished(runs, run.run_id), "the run finished", 30)

    assert (done.status, done.outcome) == ("succeeded", "completed")
    assert pid_of(done.runner) == serve.pid
    details = await runs.orch.get(run.thread_id)
    assert details.record.status == "completed"
    assert details.values["final_result"] == {"status": "completed", "steps": 2}
    assert_each_request_once(events, 2)
    log = serve.output()
    assert f"claimed run {run.run_id} (start of thread {run.thread_id}" in log
    assert f"finished run {run.run_id} (start of thread {run.thread_id}): completed in" in log


async def test_a_killed_runners_run_is_finished_by_another_within_lease_and_sweep(
        start: Callable[..., Any], runs: Any, events: Path) -> None:
    await start("worker")
    first = await start("serve", concurrency=2)
    second = await start("serve", concurrency=2)
    by_pid = {first.pid: first, second.pid: second}

    run = await runs.submit("svcflow", {"steps": 4, "seconds": 0.5})
    claimed = await wait_for(lambda: running_on(runs, run.run_id), "the run claimed", 20)
    victim = by_pid[pid_of(claimed.runner)]
    survivor = second if victim is first else first
    # kill it mid-way: once its first agent call has started
    await wait_for(lambda: started_requests(events), "a tally call started", 20)
    victim.kill()
    killed_at = time.monotonic()

    moved = await wait_for(lambda: running_on(runs, run.run_id, not_on=claimed.runner),
                           "another runner holds the run", RUN_LEASE + SWEEP_INTERVAL + 5)
    took = time.monotonic() - killed_at
    assert pid_of(moved.runner) == survivor.pid
    print(f"recovery after kill -9: {took:.2f} s")  # the figure, shown with -s
    assert took <= RUN_LEASE + SWEEP_INTERVAL + 0.5, f"recovery took {took:.2f} s"

    done = await wait_for(lambda: finished(runs, run.run_id), "the run finished", 30)
    assert (done.status, done.outcome) == ("succeeded", "completed")
    details = await runs.orch.get(run.thread_id)
    assert details.values["final_result"] == {"status": "completed", "steps": 4}
    assert_each_request_once(events, 4)


@pytest.mark.parametrize(("seconds", "grace", "stopped"), [
    (1.0, 10.0, "at the end of its step"),  # the default grace: the step ends well within it
    (5.0, 0.5, "after the grace"),  # a step longer than the grace: stopped inside it
])
async def test_sigterm_hands_a_run_back_and_another_runner_has_it_within_two_seconds(
        start: Callable[..., Any], runs: Any, events: Path, seconds: float, grace: float,
        stopped: str) -> None:
    await start("worker")
    first = await start("serve", {"drain_grace": grace}, concurrency=2)
    second = await start("serve", {"drain_grace": grace}, concurrency=2)
    by_pid = {first.pid: first, second.pid: second}

    run = await runs.submit("svcflow", {"steps": 3, "seconds": seconds})
    claimed = await wait_for(lambda: running_on(runs, run.run_id), "the run claimed", 20)
    leaving = by_pid[pid_of(claimed.runner)]
    await wait_for(lambda: started_requests(events), "a tally call started", 20)
    leaving.process.terminate()
    stopped_at = time.monotonic()

    moved = await wait_for(lambda: running_on(runs, run.run_id, not_on=claimed.runner),
                           "another runner holds the run", 10)
    took = time.monotonic() - stopped_at
    print(f"hand-back after SIGTERM, {stopped}: {took:.2f} s")  # the figure, shown with -s
    assert took < 2.0, f"hand-back took {took:.2f} s"
    assert pid_of(moved.runner) != leaving.pid
    assert moved.attempts == 1  # a hand-back is not a failed attempt
    assert await asyncio.to_thread(leaving.process.wait, 15) == 0, leaving.output()
    assert time.monotonic() - stopped_at < min(grace, 5.0) + 3.0  # it did not wait out 10 s
    assert "handed back in" in leaving.output()

    done = await wait_for(lambda: finished(runs, run.run_id), "the run finished", 40)
    assert (done.status, done.outcome) == ("succeeded", "completed")
    assert_each_request_once(events, 3)


async def test_a_cancel_stops_the_running_run_on_its_runner(
        start: Callable[..., Any], runs: Any, events: Path) -> None:
    await start("worker")
    serve = await start("serve", concurrency=2)

    run = await runs.submit("svcflow", {"steps": 5, "seconds": 1.0})
    await wait_for(lambda: running_on(runs, run.run_id), "the run claimed", 20)
    await wait_for(lambda: started_requests(events), "a tally call started", 20)
    cancel = await runs.cancel(run.thread_id, by="tester")
    asked_at = time.monotonic()

    stopped = await wait_for(lambda: finished(runs, run.run_id), "the run stopped", 10)
    took = time.monotonic() - asked_at
    assert (stopped.status, stopped.outcome) == ("cancelled", "cancelled")
    assert took < 2.0, f"the cancel took {took:.2f} s"  # not after the 5 steps (5 s)
    assert (await runs.orch.get(run.thread_id)).record.status == "cancelled"
    await wait_for(lambda: finished(runs, cancel.run_id), "the cancel run done", 10)
    assert len(started_requests(events)) < 5
    assert f"finished run {run.run_id} (start of thread {run.thread_id}): cancelled" \
        in serve.output()


async def test_a_run_whose_lease_is_taken_over_is_stopped_here_at_the_next_renewal(
        orchestrator_factory: Callable[..., Any], events: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from orchestrator.service.runs import RunService

    orch = await orchestrator_factory(builtin=False, stand_ins=[tally_agent(events)],
                                      workflows={"svcflow": svcflow}, run_lease=1.5)
    runs = RunService(orch)
    runner = Runner(runs, runs.queue, concurrency=1, run_lease=1.5)
    await runner.start()
    try:
        # a 4 s step: its next checkpoint write (refused) comes long after the renewal
        run = await runs.submit("svcflow", {"steps": 2, "seconds": 4.0})
        claimed = await wait_for(lambda: running_on(runs, run.run_id), "the run claimed", 10)
        await wait_for(lambda: started_requests(events), "a tally call started", 10)
        # another runner's claim: a new epoch under the same row
        await orch.runtime.db.execute(
            "UPDATE runs SET lease_epoch = lease_epoch + 1 WHERE run_id = %s", (run.run_id,))
        taken_at = time.monotonic()
        await wait_for(lambda: not runner.held, "the run stopped here", 5)
        assert time.monotonic() - taken_at < 1.5 / 3 + 1.0  # a renewal period, not the step
        after = await runs.get_run(run.run_id)
        assert (after.status, after.lease_epoch) == ("running", claimed.lease_epoch + 1)
        assert f"run {run.run_id} of thread {run.thread_id}: lease lost" in caplog.text
    finally:
        await runner.drain(0)


async def test_one_sweeper_per_namespace_and_another_takes_over_when_it_stops(
        orchestrator_settings: Any) -> None:
    swept: dict[str, int] = {"a": 0, "b": 0}

    def counting(name: str) -> Any:
        async def run() -> int:
            swept[name] += 1
            return 0
        return run

    url, ns = orchestrator_settings.database_url, orchestrator_settings.namespace
    a = Sweeper(url, ns, [PeriodicPass("count", counting("a"), 0.05)], retry_interval=0.1)
    b = Sweeper(url, ns, [PeriodicPass("count", counting("b"), 0.05)], retry_interval=0.1)
    other = Sweeper(url, ns + "-other", [], retry_interval=0.1)
    await a.start()
    try:
        await wait_for(lambda: a.holding, "a holds the lock", 10)
        await b.start()
        await other.start()
        await wait_for(lambda: other.holding, "another namespace's sweeper", 10)
        await wait_for(lambda: swept["a"] >= 3, "a sweeps", 10)
        assert not b.holding and swept["b"] == 0
        await a.stop()
        await wait_for(lambda: b.holding and swept["b"] >= 1, "b took over", 5)
    finally:
        for sweeper in (a, b, other):
            await sweeper.stop()


def test_serve_refuses_a_port_in_use(serve_env: dict[str, str], tmp_path: Path,
                                      events: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "tests.support.serve_process", str(events), "serve",
             "--port", str(port)],
            cwd=ROOT, env=serve_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "choose another --port" in proc.stderr


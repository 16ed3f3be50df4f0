"""Runners and the sweeper of ``orchestrator serve``.

A :class:`Runner` claims queued runs and executes each as an asyncio task of its own, at most
``concurrency`` at once. It is woken by the queue's ``LISTEN`` notifications and polls as a
fallback (a notification lost while the listening connection reconnected costs one poll
interval, never a run). It renews the leases of everything it holds every ``run_lease / 3``; a
run whose lease is no longer its own is cancelled locally at once: the sweeper has handed it to
another runner, and its fenced writes would be refused anyway.

A :class:`Sweeper` is one per cluster: whichever process holds a PostgreSQL advisory lock on a
dedicated connection runs the periodic passes (dead runners' runs back to the queue; the
retention pass). When that process dies its connection closes, the lock is free, and another
process's sweeper takes over within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg

from orchestrator.errors import LeaseLost, OrchestratorError
from orchestrator.processes import new_process_id

if TYPE_CHECKING:
    from orchestrator.service.queue import RunQueue, RunRecord
    from orchestrator.service.runs import RunService

__all__ = ["Runner", "Sweeper", "PeriodicPass", "sweeper_lock_key"]

log = logging.getLogger(__name__)

#: why the runner itself stopped a run's task (each has its own follow-up)
_DRAIN, _CANCEL, _LEASE_LOST = "handed back", "cancelled", "lease lost"


@dataclass
class _Held:
    """A run this runner executes: the claim, its task, and when its lease runs out here."""

    run: RunRecord
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    expires: float = 0.0  # monotonic; refreshed by every successful renewal
    stopped_for: str | None = None  # set before the runner cancels the task itself


class Runner:
    """Claims and executes runs of one namespace until :meth:`drain`.

    Args:
        runs: executes a claimed run (with the fence of its lease) and records cancellations.
        queue: claims, renews, fails and hands back runs (a run's end is recorded by
            ``runs.execute``).
        concurrency: runs executed at once.
        run_lease: seconds a claim holds without renewal (``settings.run_lease``).
        poll_interval: the longest wait for work without a notification.
        runner_id: this runner's name in the queue (default: host, pid and a random part).
    """

    def __init__(
        self,
        runs: RunService,
        queue: RunQueue,
        *,
        concurrency: int,
        run_lease: float,
        poll_interval: float = 1.0,
        runner_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.runs = runs
        self.queue = queue
        self.concurrency = concurrency
        self.run_lease = run_lease
        self.poll_interval = poll_interval
        self.id = runner_id or new_process_id()
        self._held: dict[int, _Held] = {}
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._claim_ok = False  # the last claim attempt reached the database
        self._claimer: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []  # the claimer, listener and heartbeat

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start claiming (the claim loop, the listener, the lease heartbeat)."""
        self._claimer = asyncio.create_task(self._claim_loop(), name=f"runner-claim:{self.id}")
        self._loops = [
            self._claimer,
            asyncio.create_task(self._listen_loop(), name=f"runner-listen:{self.id}"),
            asyncio.create_task(self._renew_loop(), name=f"runner-renew:{self.id}"),
        ]

    @property
    def claiming(self) -> bool:
        """Whether this runner takes new work: started, not draining, and its last claim
        attempt reached the database (for ``/readyz``)."""
        return (not self._stopping and self._claim_ok and self._claimer is not None
                and not self._claimer.done())

    @property
    def held(self) -> list[RunRecord]:
        """The runs being executed right now."""
        return [h.run for h in self._held.values()]

    async def drain(self, grace: float) -> None:
        """Stop claiming at once; give each run in flight up to ``grace`` seconds to finish
        the step it is in, stop it there, and hand it back to the queue (the attempt is not
        counted) so another runner continues it from its last checkpoint. A run still inside
        its step after ``grace`` is stopped all the same: the step runs again elsewhere, and
        its agent calls are answered from the responses the bus kept, not done twice."""
        self._stopping = True
        self._wake.set()
        self._slot_free.set()
        if self._claimer is not None:  # a claim in progress ends, so what it took is known
            await asyncio.wait({self._claimer}, timeout=10)
        tasks = {h.task for h in self._held.values() if h.task is not None}
        if tasks and grace > 0:
            log.info("draining: %d run(s) in flight get %.1f s to finish their step",
                     len(tasks), grace)
            await asyncio.wait(tasks, timeout=grace)
        for held in list(self._held.values()):
            self._stop(held, _DRAIN)
        tasks = {h.task for h in self._held.values() if h.task is not None}
        if tasks:  # each hands its run back as it ends (a database round trip)
            await asyncio.wait(tasks, timeout=10)
        for loop in self._loops:
            loop.cancel()
        await asyncio.wait(self._loops, timeout=5)  # type: ignore[arg-type]
        self._loops = []

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping:
            if len(self._held) >= self.concurrency:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            self._wake.clear()  # before the claim: a notification during it is not lost
            try:
                run = await self.queue.claim(self.id)
                self._claim_ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: readiness says so; try again
                self._claim_ok = False
                log.warning("runner %s: claiming failed (%s: %s); retrying", self.id,
                            type(exc).__name__, exc)
                await self._nap()
                continue
            if run is None:
                await self._nap()
                continue
            if self._stopping:  # drain began during the claim: give it back unstarted
                await self._hand_back(run)
                return
            self._begin(run)

    async def _nap(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _listen_loop(self) -> None:
        """Notifications: "run" wakes the claim loop; "cancel:<thread>" stops that thread's
        run here. A lost connection is reopened; meanwhile the claim loop polls."""
        while True:
            try:
                async for message in self.queue.listen():
                    if message.startswith("cancel:"):
                        self._cancel_thread(message.removeprefix("cancel:"))
                    else:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("runner %s: listening for runs failed (%s: %s); polling until "
                            "it is back", self.id, type(exc).__name__, exc)
            await asyncio.sleep(self.poll_interval)

    def _cancel_thread(self, thread_id: str) -> None:
        for held in self._held.values():
            if held.run.thread_id == thread_id:
                self._stop(held, _CANCEL)

    # -- executing ---------------------------------------------------------------------------

    def _begin(self, run: RunRecord) -> None:
        held = _Held(run, expires=time.monotonic() + self.run_lease)
        self._held[run.run_id] = held
        held.task = asyncio.create_task(self._execute(held), name=f"run:{run.run_id}")
        log.info("claimed run %s (%s of thread %s, attempt %s)", run.run_id, run.kind,
                 run.thread_id, run.attempts)

    def _step_done(self, held: _Held) -> None:
        """After each finished step: a draining runner stops the run here, between steps, and
        hands it back without waiting out the grace period."""
        if self._stopping:
            self._stop(held, _DRAIN)

    def _stop(self, held: _Held, why: str) -> None:
        if held.task is not None and not held.task.done() and held.stopped_for is None:
            held.stopped_for = why
            held.task.cancel(why)

    async def _execute(self, held: _Held) -> None:
        run = held.run
        outcome = "?"
        try:
            try:
                result = await self.runs.execute(run, self.id,
                                                 on_progress=lambda _: self._step_done(held))
            except asyncio.CancelledError:
                if held.stopped_for is None:
                    raise  # not ours: the process is going down
                outcome = held.stopped_for
                await self._after_stop(held)
            except LeaseLost as exc:
                outcome = _LEASE_LOST
                log.warning("run %s of thread %s: lease lost (%s); another runner has it",
                            run.run_id, run.thread_id, exc)
            except Exception as exc:
                outcome = "error"
                await self._fail(run, exc)
            else:
                outcome = result.status  # recorded by execute
        except asyncio.CancelledError:
            raise
        except Exception:  # recording the outcome failed: the lease expires, the sweeper acts
            log.exception("run %s of thread %s: recording its outcome failed", run.run_id,
                          run.thread_id)
        finally:
            del self._held[run.run_id]
            self._slot_free.set()
            log.info("finished run %s (%s of thread %s): %s in %.2f s", run.run_id, run.kind,
                     run.thread_id, outcome, time.monotonic() - held.started)

    async def _after_stop(self, held: _Held) -> None:
        """What a run stopped by this runner leaves behind, by why it was stopped."""
        if held.stopped_for == _DRAIN:
            await self._hand_back(held.run)
        elif held.stopped_for == _CANCEL:
            await self.runs.cancelled(held.run, self.id)
        # _LEASE_LOST: the run is someone else's now; nothing of ours to record

    async def _hand_back(self, run: RunRecord) -> None:
        if not await self.queue.release(run, self.id):
            log.info("run %s was no longer ours to hand back", run.run_id)

    async def _fail(self, run: RunRecord, exc: Exception) -> None:
        error = exc.to_dict() if isinstance(exc, OrchestratorError) else {
            "code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        log.warning("run %s of thread %s raised %s", run.run_id, run.thread_id,
                    error["message"], exc_info=not isinstance(exc, OrchestratorError))
        after = await self.queue.fail(run, self.id, error)
        if after is None:
            return
        if after.status == "dead":
            log.error("run %s of thread %s is dead after %s attempts: %s", run.run_id,
                      run.thread_id, after.attempts, error["message"])
        # run.retrying / run.dead: the console's "needs attention" list changes
        self.runs.orch.runtime.bus.emit("run.dead" if after.status == "dead" else "run.retrying", {
            "thread_id": run.thread_id, "workflow_type": run.workflow_type,
            "run_id": run.run_id, "kind": run.kind, "attempts": after.attempts,
            "error": error})

    # -- leases ------------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        interval = self.run_lease / 3
        while True:
            await asyncio.sleep(interval)
            await self._renew_once()

    async def _renew_once(self) -> None:
        held = {run_id: h.run.lease_epoch for run_id, h in self._held.items()
                if h.stopped_for is None}
        if not held:
            return
        now = time.monotonic()
        try:
            kept = await self.queue.renew(self.id, held)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Unknown whether the leases were extended: a run whose lease ran out by our own
            # clock is someone else's by now.
            log.warning("runner %s: renewing leases failed (%s: %s)", self.id,
                        type(exc).__name__, exc)
            kept = {run_id for run_id in held if self._held[run_id].expires > time.monotonic()}
        else:
            for run_id in kept:
                if run_id in self._held:
                    self._held[run_id].expires = now + self.run_lease
        for run_id in set(held) - kept:
            lost = self._held.get(run_id)
            if lost is not None:
                log.warning("run %s of thread %s: lease lost; stopping it here", run_id,
                            lost.run.thread_id)
                self._stop(lost, _LEASE_LOST)


# -- the sweeper --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodicPass:
    """One job of the cluster's sweeper: ``run()`` every ``interval`` seconds, returning how
    many things it changed (logged when not zero); ``close()``, if given, when the sweeper
    stops (a pass that works in the background stops that work)."""

    name: str
    run: Callable[[], Awaitable[int]]
    interval: float
    close: Callable[[], Awaitable[None]] | None = None


def sweeper_lock_key(namespace: str) -> int:
    """The advisory lock key of a namespace's sweeper: a stable signed 64-bit number."""
    digest = hashlib.sha256(f"orchestrator-sweeper:{namespace}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Sweeper:
    """Runs :attr:`passes` while this process holds the cluster's sweeper lock.

    The lock is a session-level ``pg_try_advisory_lock`` on a connection of its own, held for
    as long as that connection lives; the process that holds it is "the" sweeper. The others
    try again every ``retry_interval`` seconds, so when the sweeper's process dies another
    takes over within that interval (PostgreSQL frees the lock as the connection closes).

    Args:
        database_url: where the dedicated connection goes.
        namespace: one sweeper per namespace.
        passes: the periodic jobs (queue sweep; retention): add to the list before
            :meth:`start`.
    """

    def __init__(self, database_url: str, namespace: str, passes: list[PeriodicPass], *,
                 retry_interval: float) -> None:
        self.database_url = database_url
        self.key = sweeper_lock_key(namespace)
        self.passes = passes
        self.retry_interval = retry_interval
        self.holding = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sweeper")

    async def stop(self) -> None:
        """Stop sweeping; closing the connection frees the lock for another process."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
            self._task = None
        for job in self.passes:
            if job.close is not None:
                try:
                    await asyncio.wait_for(job.close(), 5)
                except Exception:  # one pass that cannot close does not keep the others open
                    log.exception("sweeper: closing the %s pass failed", job.name)

    async def _loop(self) -> None:
        while True:
            try:
                await self._hold_and_sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.holding:
                    log.warning("sweeper: lost the sweeper lock's connection (%s: %s)",
                                type(exc).__name__, exc)
                else:
                    log.debug("sweeper: cannot reach the database (%s)", exc)
            finally:
                self.holding = False
            await asyncio.sleep(self.retry_interval)

    async def _hold_and_sweep(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.database_url,
                                                         autocommit=True) as conn:
            while not self.holding:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    self.holding = True
                    break
                await asyncio.sleep(self.retry_interval)
            log.info("sweeper: this process sweeps the cluster now")
            due = {p.name: 0.0 for p in self.passes}
            while True:
                await conn.execute("SELECT 1")  # the lock lives as long as this connection
                for job in self.passes:
                    if time.monotonic() >= due[job.name]:
                        due[job.name] = time.monotonic() + job.interval
                        await self._run_pass(job)
                await asyncio.sleep(min(p.interval for p in self.passes) if self.passes
                                    else self.retry_interval)

    @staticmethod
    async def _run_pass(job: PeriodicPass) -> None:
        try:
            changed = await job.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # one failing pass does not stop the others or give up the lock
            log.exception("sweeper: the %s pass failed", job.name)
            return
        if changed:
            log.info("sweeper: %s pass changed %d", job.name, changed)

"""Service benchmarks (issue 13, item 8): how fast a queued run starts, and how runs/s grows
with runner processes.

* ``enqueue_to_running``: one ``orchestrator serve`` process (4 slots, idle); runs submitted
  one at a time, each after a random pause; the latency of each is its ``started_at`` (the
  claim) minus its ``created_at`` (the enqueueing transaction), both PostgreSQL's clock. With
  NOTIFY (the runner as shipped) against the baseline: the same runner with its listener
  switched off, so only its fallback poll (every ``Runner.poll_interval`` s) finds work; the
  pauses before submitting are random over one poll interval there, so the poll's phase is
  random. Target: p50 ≤ 20 ms with NOTIFY.
* ``runs_per_s_3_vs_1``: N runs of a workflow that sleeps 1 s in two nodes (sleep-bound: the
  runners' slots, not the CPU, limit it), submitted at once, executed by 1 and then by 3 serve
  processes of 4 slots each; runs/s = N / (last finish - first enqueue). Target: ≥ 2.5x with 3.

    python -m bench.service [--quick]
    python -m bench.service serve-process [--poll-only] serve ARGS...   (the runners it starts)

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset); the run
uses a namespace of its own and deletes its rows afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel

from orchestrator.facade import Orchestrator
from orchestrator.graphs import WorkflowSpec
from orchestrator.service.runner import Runner
from orchestrator.service.runs import RunService
from orchestrator.settings import Settings

from .common import Result, percentile, run_standalone, settings, subprocess_env

__all__ = ["run"]

FLOW = "bench_service_sleep"
SLOTS = 4  # per runner process, the same in every measurement
RUN_SECONDS = 1.0
POLL_INTERVAL = inspect.signature(Runner).parameters["poll_interval"].default
_LATENCY_TARGET = "enqueue → running p50 ≤ 20 ms with NOTIFY"
_SCALE_TARGET = "runs/s with 3 runner processes ≥ 2.5x with 1 (sleep-bound runs)"


class _Input(BaseModel):
    seconds: float = 0.0


class _State(MultiAgentState, total=False):
    seconds: float
    naps: int


def _nap(last: bool) -> Any:
    async def nap(state: _State) -> dict[str, Any]:
        await asyncio.sleep(state.get("seconds", 0.0) / 2)
        naps = state.get("naps", 0) + 1
        return {"naps": naps, **({"final_result": {"status": "completed"}} if last else {})}
    return nap


def _spec() -> WorkflowSpec:
    builder = StateGraph(_State)
    builder.add_node("nap1", _nap(False))
    builder.add_node("nap2", _nap(True))
    builder.add_edge(START, "nap1")
    builder.add_edge("nap1", "nap2")
    builder.add_edge("nap2", END)
    return WorkflowSpec(FLOW, builder, _Input, "benchmark: sleeps `seconds` in two nodes")


# -- runner processes --------------------------------------------------------------------------


class _Serve:
    """One ``orchestrator serve`` process of the benchmark (its log in a file)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc, self.log = proc, log

    @classmethod
    async def start(cls, base: Settings, log_dir: Path, *, poll_only: bool) -> _Serve:
        log = log_dir / f"serve-{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.service", "serve-process",
                *(["--poll-only"] if poll_only else []),
                "serve", "--port", "0", "--concurrency", str(SLOTS),
                env=subprocess_env(base), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=out)
        serve = cls(proc, log)
        deadline = time.monotonic() + 90
        while "listening on" not in serve.output():
            if proc.returncode is not None or time.monotonic() > deadline:
                await serve.stop()
                raise RuntimeError(f"orchestrator serve did not start:\n{serve.output()}")
            await asyncio.sleep(0.05)
        return serve

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()  # the drain: nothing is in flight by now
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def _runners(base: Settings, log_dir: Path, count: int, *,
                   poll_only: bool = False) -> AsyncIterator[list[_Serve]]:
    started: list[_Serve] = []
    try:
        for _ in range(count):
            started.append(await _Serve.start(base, log_dir, poll_only=poll_only))
        yield started
    finally:
        await asyncio.gather(*(s.stop() for s in started))


# -- measurements ------------------------------------------------------------------------------


async def _until(check: Any, what: str, timeout: float, interval: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)
    return found


async def _latencies(runs: RunService, samples: int, pause: float,
                     rng: random.Random) -> list[float]:
    """Enqueue → claimed, in seconds, for ``samples`` runs submitted one at a time."""
    db = runs.orch.runtime.db
    found: list[float] = []
    for _ in range(samples):
        await asyncio.sleep(rng.uniform(0, pause))
        run = await runs.submit(FLOW, {"seconds": 0.0})

        async def claimed(run_id: int = run.run_id) -> Any:
            return await db.fetchone(
                "SELECT extract(epoch FROM started_at - created_at)::float8 AS s FROM runs "
                "WHERE run_id = %s AND started_at IS NOT NULL", (run_id,))

        row = await _until(claimed, f"run {run.run_id} claimed", 30, 0.005)
        found.append(row["s"])
    return found


def _latency_figures(samples: list[float]) -> dict[str, Any]:
    return {"runs": len(samples), "p50_ms": round(percentile(samples, 50) * 1000, 2),
            "p95_ms": round(percentile(samples, 95) * 1000, 2)}


async def _throughput(runs: RunService, count: int, seconds: float) -> dict[str, Any]:
    """Submit ``count`` runs at once; runs/s from the first enqueue to the last finish."""
    db = runs.orch.runtime.db
    ids = [(await runs.submit(FLOW, {"seconds": seconds})).run_id for _ in range(count)]

    async def all_done() -> Any:
        row = await db.fetchone(
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'running')) AS open, "
            "count(*) FILTER (WHERE status = 'succeeded') AS ok, "
            "extract(epoch FROM max(finished_at) - min(created_at))::float8 AS wall "
            "FROM runs WHERE run_id = ANY(%s)", (ids,))
        return row if row is not None and row["open"] == 0 else None

    row = await _until(all_done, f"{count} runs finished", 60 + 4 * count * seconds, 0.05)
    if row["ok"] != count:
        raise RuntimeError(f"only {row['ok']} of {count} runs succeeded")
    return {"runs": count, "seconds": round(row["wall"], 2),
            "runs_per_s": round(count / row["wall"], 2)}


async def _warm(runs: RunService, count: int) -> None:
    """Instant runs, so every runner has compiled the graph and opened its pool."""
    await _throughput(runs, count, 0.0)


async def _cleanup(orch: Orchestrator, namespace: str) -> None:
    db = orch.runtime.db
    await db.execute("DELETE FROM runs WHERE namespace = %s", (namespace,))
    for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
        await db.execute(f"DELETE FROM {table} WHERE thread_id IN "
                         "(SELECT thread_id FROM workflows WHERE namespace = %s)", (namespace,))
    await db.execute("DELETE FROM workflows WHERE namespace = %s", (namespace,))


async def run(quick: bool = False) -> list[Result]:
    notify_samples, poll_samples, scale_runs = (10, 5, 12) if quick else (60, 30, 72)
    rng = random.Random(8)
    base = settings("service")
    async with Orchestrator(base, agents=[], workflows={FLOW: _spec()}) as orch:
        runs = RunService(orch)
        try:
            with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
                log_dir = Path(tmp)
                async with _runners(base, log_dir, 1) as first:
                    await _warm(runs, SLOTS)
                    notify = await _latencies(runs, notify_samples, 0.2, rng)
                    one = await _throughput(runs, scale_runs, RUN_SECONDS)
                    async with _runners(base, log_dir, 2) as more:
                        await _warm(runs, 3 * SLOTS)
                        before = [s.output().count("claimed run") for s in first + more]
                        three = await _throughput(runs, scale_runs, RUN_SECONDS)
                        claimed_by = [s.output().count("claimed run") - n
                                      for s, n in zip(first + more, before, strict=True)]
                async with _runners(base, log_dir, 1, poll_only=True):
                    await _warm(runs, 1)
                    polled = await _latencies(runs, poll_samples, POLL_INTERVAL, rng)
        finally:
            await _cleanup(orch, base.namespace)

    with_notify, poll_only = _latency_figures(notify), _latency_figures(polled)
    latency = Result(
        "enqueue_to_running", _LATENCY_TARGET, with_notify["p50_ms"] <= 20,
        {"notify": with_notify}, {"poll_only": poll_only, "poll_interval_s": POLL_INTERVAL},
        round(poll_only["p50_ms"] / with_notify["p50_ms"], 1),
        notes="created_at (enqueueing transaction) → started_at (claim), PostgreSQL's clock; "
              "one idle serve process of 4 slots; baseline = the same runner with its LISTEN "
              "switched off (fallback poll only); ratio = baseline p50 / NOTIFY p50")
    ratio = three["runs_per_s"] / one["runs_per_s"]
    scale = Result(
        "runs_per_s_3_vs_1", _SCALE_TARGET, ratio >= 2.5,
        {"three_runners": three, "claims_per_process": claimed_by},
        {"one_runner": one}, round(ratio, 2),
        notes=f"{scale_runs} runs sleeping {RUN_SECONDS:g} s (two nodes) submitted at once; "
              f"{SLOTS} slots per serve process; runs/s = runs / (last finish - first enqueue)")
    return [latency, scale]


# -- the runner processes' entry point ---------------------------------------------------------


def _serve_process(argv: list[str]) -> int:
    """``orchestrator serve`` with the benchmark's workflow as its only one; ``--poll-only``
    switches its runner's LISTEN off (the baseline of the latency benchmark)."""
    from orchestrator import cli, graphs

    if argv[:1] == ["--poll-only"]:
        argv = argv[1:]

        async def no_notifications(self: Runner) -> None:
            await asyncio.Event().wait()  # never woken: the claim loop's poll finds the work

        Runner._listen_loop = no_notifications  # type: ignore[method-assign]
    graphs.available_workflows = lambda: {FLOW: _spec()}  # type: ignore[assignment]
    return cli.main(argv)


def main() -> int:
    if sys.argv[1:2] == ["serve-process"]:
        return _serve_process(sys.argv[2:])
    return run_standalone("service", __doc__, run)


if __name__ == "__main__":
    sys.exit(main())

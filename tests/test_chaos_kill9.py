"""Chaos: ``kill -9`` of ``orchestrator run parallel_docs`` at random points, then ``orchestrator
resume`` must finish with every page byte-identical to an uninterrupted run.

The CLI runs use the test PostgreSQL and Redis, a namespace per iteration; only processes
started here are killed, by pid. Randomness is seeded: set ``CHAOS_SEED`` to replay a run; the
test prints the seed it used. Run with ``-s`` to see the timings and outcomes it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from orchestrator.state.db import Database
from orchestrator.state.migrations import migrate

from orchestrator.testing import delete_keys

from .support.docs import docs_problems, leftovers, make_package, tree
from .support.processes import ORCHESTRATOR_CMD, reaping

pytestmark = pytest.mark.slow


def _seed() -> int:
    raw = os.environ.get("CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


ITERATIONS = 20
PARALLEL = 4  # iterations at once (each is a killed `run`, then a `resume`); 2 cores here
N_MODULES = 30
# A kill inside write_docs leaves the docs:<output> lock to its holder until the lock's TTL
# (60 s, call_agent's default) runs out: resume waits for it. Nothing else should take long.
RESUME_TIMEOUT = 100.0
WRITE_TARGETED = 2  # iterations aimed at the write (see below)
# The default agent heartbeat (2 s) and offline threshold (10 s), not service_env's 0.5 s / 3 s:
# with 6-8 orchestrator processes on 2 cores, a resume's own local agent has been judged
# offline (heartbeat late > 3 s) and the workflow failed with AgentUnavailable.
DEFAULT_LIVENESS = {"ORCHESTRATOR_HEARTBEAT_INTERVAL": "2", "ORCHESTRATOR_AGENT_OFFLINE_AFTER": "10"}
# `orchestrator run/resume` can finish the workflow and then never exit (EventBus.close()
# waits forever for a reply reader whose cancellation was swallowed: see
# test_event_bus_close_returns_while_replies_flow). A process still alive this long after its
# workflow is recorded completed is counted as hung at exit, killed, and judged on its result.
EXIT_GRACE = 20.0


async def _one_value(conn: psycopg.AsyncConnection, query: str, params: tuple[Any, ...]) -> Any:
    try:
        cur = await conn.execute(query, params)
    except psycopg.errors.UndefinedTable:  # the first run has not migrated the database yet
        return None
    row = await cur.fetchone()
    return row[0] if row else None


async def _workflow_status(conn: psycopg.AsyncConnection, thread_id: str) -> str | None:
    return await _one_value(conn, "SELECT status FROM workflows WHERE thread_id = %s",
                            (thread_id,))


async def _has_checkpoint(conn: psycopg.AsyncConnection, thread_id: str) -> bool:
    return bool(await _one_value(conn, "SELECT 1 FROM checkpoints WHERE thread_id = %s LIMIT 1",
                                 (thread_id,)))


def _cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sink:
        return subprocess.Popen([*ORCHESTRATOR_CMD, *args], env=env, stdout=subprocess.PIPE,
                                stderr=sink)


@dataclass
class Finished:
    """How a `run`/`resume` process that was let run ended."""

    exit_code: int | None  # None: killed (timed out, or hung at exit)
    result: dict[str, Any] | None  # its --json output, else the workflow record's
    seconds: float
    completed_after: float | None  # seconds until the record said completed
    hung_at_exit: bool = False
    timed_out: bool = False


async def _let_finish(proc: subprocess.Popen[bytes], conn: psycopg.AsyncConnection,
                      thread_id: str, timeout: float) -> Finished:
    began = time.monotonic()
    completed_at: float | None = None
    hung = timed_out = False
    while proc.poll() is None:
        now = time.monotonic()
        if completed_at is None and await _workflow_status(conn, thread_id) == "completed":
            completed_at = now
        if completed_at is not None and now - completed_at > EXIT_GRACE:
            hung = True
        elif now - began > timeout:
            timed_out = True
        if hung or timed_out:
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            break
        await asyncio.sleep(0.05)
    seconds = time.monotonic() - began
    stdout = proc.stdout.read() if proc.stdout else b""
    result = None
    if proc.returncode == 0 and stdout.strip():
        result = json.loads(stdout)
    elif hung:
        cur = await conn.execute("SELECT status, result FROM workflows WHERE thread_id = %s",
                                 (thread_id,))
        status, final = await cur.fetchone()
        result = {"thread_id": thread_id, "status": status, "final_result": final}
    return Finished(None if (hung or timed_out) else proc.returncode, result, seconds,
                    None if completed_at is None else completed_at - began, hung, timed_out)


@dataclass
class Iteration:
    index: int
    delay: float
    thread_id: str
    anchor: str = "first checkpoint"  # the delay counts from it
    phase: str = "?"
    completed: bool = False
    problems: list[str] = field(default_factory=list)
    resume_s: float = 0.0  # the resume command, start to exit
    hung_at_exit: bool = False
    leftovers: list[str] = field(default_factory=list)


async def _reached(conn: psycopg.AsyncConnection, it: Iteration, n_modules: int) -> bool:
    if it.anchor == "first checkpoint":
        return await _has_checkpoint(conn, it.thread_id)
    pages = await _one_value(conn, "SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s "
                             "AND channel = 'partial_results'", (it.thread_id,))
    return (pages or 0) >= n_modules


async def _phase(conn: psycopg.AsyncConnection, it: Iteration, namespace: str, out: Path,
                 n_modules: int) -> str:
    """Where the killed run was, from what it left behind."""
    if await _workflow_status(conn, it.thread_id) == "completed":
        return "after completion"
    if await asyncio.to_thread(lambda: any(out.glob("*.md"))):
        return "write (files on disk)"
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE channel = 'partial_results'), "
        "count(*) FILTER (WHERE channel = 'subtasks') FROM checkpoint_writes "
        "WHERE thread_id = %s", (it.thread_id,))
    pages, subtasks = await cur.fetchone()
    cur = await conn.execute(
        "SELECT count(*) FROM resource_locks WHERE namespace = %s AND holder IS NOT NULL "
        "AND expires_at > now()", (namespace,))
    (locks,) = await cur.fetchone()
    if locks:
        return "write (docs lock held)"
    if not subtasks:
        return "prepare/discover"
    if pages < n_modules:
        return f"fan-out ({pages}/{n_modules} pages)"
    return "fan-in"


@pytest.mark.timeout(360)
async def test_kill9_at_random_points_then_resume_completes_correctly(
    orchestrator_settings, orchestrator_database_url, orchestrator_redis_url, service_env, tmp_path
) -> None:
    """20 times: `orchestrator run parallel_docs` (hosting the docs agent itself) is killed
    with SIGKILL at a random moment, then `orchestrator resume` must finish the workflow with
    every page byte-identical to an uninterrupted run and an index listing each module once.

    The random delays are counted from the workflow's first checkpoint (two iterations: from
    the moment every page is rendered, to hit the write): a kill between the workflow row and
    that checkpoint (a few ms) always leaves an unresumable workflow, a bug of its own, see
    test_resume_after_a_kill_before_the_first_checkpoint (test_chaos_regressions.py)."""
    seed = _seed()
    print(f"\nchaos seed: {seed} (CHAOS_SEED={seed} replays the delays)")
    rng = random.Random(seed)
    package = tmp_path / "chaospkg"
    modules = make_package(package, N_MODULES)
    base_ns = orchestrator_settings.namespace
    procs: list[subprocess.Popen[bytes]] = []
    hung: list[str] = []
    began = time.monotonic()
    try:
        with reaping(procs):
            conn = await psycopg.AsyncConnection.connect(orchestrator_database_url,
                                                         autocommit=True)
            async with conn:
                # Migrate first: several processes doing the first migration of a database at
                # once can deadlock (test_concurrent_first_starts_on_a_fresh_database_migrate).
                async with Database.connect(orchestrator_database_url, max_size=2) as db:
                    await migrate(db)
                # References: PARALLEL uninterrupted runs at once (the load the iterations run
                # under); all must give the same bytes; their time from first checkpoint to
                # completed sets the span of the kill delays.
                async def reference(k: int) -> tuple[dict[str, bytes], float]:
                    thread = f"chaos-{seed}-ref{k}"
                    out = tmp_path / f"reference{k}"
                    proc = _cli(["run", "parallel_docs", "--set", f"package={package}",
                                 "--set", f"output={out}", "--thread-id", thread, "--json"],
                                {**service_env, **DEFAULT_LIVENESS,
                                 "ORCHESTRATOR_NAMESPACE": f"{base_ns}.r{k}"},
                                tmp_path / f"reference{k}.log")
                    procs.append(proc)
                    while not await _has_checkpoint(conn, thread):
                        assert proc.poll() is None, (tmp_path / f"reference{k}.log").read_text()
                        await asyncio.sleep(0.02)
                    done = await _let_finish(proc, conn, thread, 120)
                    assert done.result and done.result["status"] == "completed", (
                        done, (tmp_path / f"reference{k}.log").read_text())
                    if done.hung_at_exit:
                        hung.append(f"reference run {k}")
                    assert docs_problems(out, modules, None) == []
                    return tree(out), done.completed_after or 0.0

                refs = await asyncio.gather(*(reference(k) for k in range(PARALLEL)))
                reference_tree = refs[0][0]
                assert all(r[0] == reference_tree for r in refs), "runs differ byte-wise"
                work = sorted(r[1] for r in refs)[len(refs) // 2]
                print(f"reference runs ({PARALLEL} at once): {work:.1f}s from the first "
                      f"checkpoint to completed (median), {N_MODULES} modules, "
                      f"{len(reference_tree)} files")

                # Delays from the first checkpoint, over prepare, discover, the fan-out, the
                # write and a little after. The write (lock, request, 31 files) is a sliver of
                # that span, so WRITE_TARGETED iterations count their (short) delay from the
                # moment every page is rendered instead; they run beside the others (a kill
                # holding the docs lock makes their resume wait for its TTL, mostly idle).
                iterations = [
                    Iteration(i, round(rng.uniform(0.0, 0.3), 3), f"chaos-{seed}-{i:02d}",
                              "every page rendered") if i < WRITE_TARGETED else
                    Iteration(i, round(rng.uniform(0.0, work * 1.15), 3), f"chaos-{seed}-{i:02d}")
                    for i in range(ITERATIONS)]
                slots = asyncio.Semaphore(PARALLEL)

                async def one(it: Iteration) -> None:
                    async with slots if it.index >= WRITE_TARGETED else contextlib.nullcontext():
                        await _iteration(it, conn, package, modules, reference_tree,
                                         service_env, f"{base_ns}.k{it.index:02d}", tmp_path,
                                         procs)

                await asyncio.gather(*(one(it) for it in iterations))
    finally:
        delete_keys(orchestrator_redis_url, f"{base_ns}.*")

    total = time.monotonic() - began
    for it in iterations:
        print(f"  #{it.index:02d} killed {it.delay:4.2f}s after its {it.anchor:<19} in "
              f"{it.phase:<26} resume {it.resume_s:5.1f}s"
              f"{' (hung at exit)' if it.hung_at_exit else ''}  "
              f"{'ok' if it.completed else it.problems}")
    hung += [f"resume #{it.index:02d}" for it in iterations if it.hung_at_exit]
    phases = Counter(it.phase.split(" (")[0] for it in iterations)
    resumes = sorted(it.resume_s for it in iterations)
    ok = sum(it.completed for it in iterations)
    print(f"phases at the kill: {dict(phases)}")
    print(f"resume seconds: min {resumes[0]:.1f}, median {resumes[len(resumes) // 2]:.1f}, "
          f"max {resumes[-1]:.1f}; test total {total:.1f}s")
    print(f"processes that finished their workflow but did not exit within {EXIT_GRACE:.0f}s "
          f"(known bug): {hung or 'none'}")
    left = {it.index: it.leftovers for it in iterations if it.leftovers}
    print(f"temporary files left in the output by a killed write (known bug): {left or 'none'}")
    print(f"chaos: {ok}/{ITERATIONS} resumed to a complete, correct result")
    failed = {it.index: (it.phase, it.problems) for it in iterations if not it.completed}
    assert ok == ITERATIONS, f"seed {seed}: failed iterations {failed}"


async def _iteration(it: Iteration, conn: psycopg.AsyncConnection, package: Path,
                     modules: list[str], reference: dict[str, bytes], service_env: dict[str, str],
                     namespace: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    env = {**service_env, **DEFAULT_LIVENESS, "ORCHESTRATOR_NAMESPACE": namespace}
    out = tmp_path / f"out{it.index:02d}"
    log = tmp_path / f"iteration{it.index:02d}.log"
    proc = _cli(["run", "parallel_docs", "--set", f"package={package}", "--set", f"output={out}",
                 "--thread-id", it.thread_id, "--json"], env, log)
    procs.append(proc)
    deadline = time.monotonic() + 60
    while not await _reached(conn, it, len(modules)):
        if proc.poll() is not None or time.monotonic() > deadline:
            it.problems.append(f"the run never reached its {it.anchor}: "
                               f"{log.read_text()[-2000:]}")
            return
        await asyncio.sleep(0.01)
    await asyncio.sleep(it.delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    if proc.returncode != -signal.SIGKILL:
        it.phase = f"ended before the kill ({proc.returncode})"
    else:
        it.phase = await _phase(conn, it, namespace, out, len(modules))

    resume_log = tmp_path / f"resume{it.index:02d}.log"
    resumer = _cli(["resume", it.thread_id, "--json"], env, resume_log)
    procs.append(resumer)
    done = await _let_finish(resumer, conn, it.thread_id, RESUME_TIMEOUT)
    it.resume_s, it.hung_at_exit = done.seconds, done.hung_at_exit
    if done.timed_out:
        it.problems.append(f"resume still running after {RESUME_TIMEOUT:.0f}s: "
                           f"{resume_log.read_text()[-2000:]}")
        return
    if done.result is None:
        it.problems.append(f"resume exit {done.exit_code}: {resume_log.read_text()[-2000:]}")
        return
    result = done.result
    if result["status"] != "completed" or result["thread_id"] != it.thread_id:
        it.problems.append(f"resume ended {result['status']}: {result.get('error')}")
        return
    if (result.get("final_result") or {}).get("modules") != len(modules):
        it.problems.append(f"final result {result.get('final_result')}")
    # a temporary file left by a write killed mid-way is a bug of its own
    # (test_write_docs_killed_mid_write_leaves_no_temporary_files): noted, not failed on here
    it.leftovers = leftovers(out)
    it.problems += docs_problems(out, modules, reference, allow_leftovers=True)
    it.completed = not it.problems



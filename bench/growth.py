"""How cost grows with size (issue 18, item 3): each measured at sizes ten times apart, the
figure at each size and its growth factor per x10, anything worse than linear flagged.

* ``bus``: ``rt.bus.request`` to the no-op agent of one worker process (``bench.bus``'s), in a
  closed loop keeping 1, 10, 100, 1,000 and 10,000 requests in flight: requests/s, round trip
  p50 and p99, CPU per request (this process + the worker + the Redis server), none lost or
  duplicated (the worker counts executions per request id).
* ``workflows``: 100, 1,000 and 10,000 ``parallel_docs``-shaped workflows (5 agent calls each)
  in flight at once in one orchestrator process (``bench.workflows``' memory run, 2 agent
  worker processes): completed, KB of RSS per in-flight workflow, runs/s (N over the time to
  have all N in flight plus the time from their release to the last one's end).
* ``locks``: lock hand-over (``bench.locks``' in-process hand-over) with 1, 10 and 100
  waiters: median and p95, and this process's CPU per hand-over.
* ``depgraph``: ``analyze()`` of generated repositories (``bench.depgraph.generate``) of
  1,000, 10,000 and 100,000 files: median seconds.
* ``sse``: the console's event fan-out (``bench.sse``: one ``orchestrator serve``, raw SSE
  subscribers in 2 client processes) with 10, 100 and 1,000 subscribers at 10 events/s:
  latency p50/p95 and the serve process's CPU per delivered event.

Growth per x10 of size is what a linear cost would multiply by 10: a total (a latency, the time
to analyze N files) by 10, a cost per item (memory per workflow, CPU per request) by 1, a rate
(requests/s) by 1. A step is flagged worse than linear when the cost it implies grows more than
``_SLACK`` (1.25) times faster than linear (the machines are shared and noisy).

Bounded: each ladder has a time bound; a size whose linear projection from the size below
would pass it is skipped with a note, and a size still running at the bound is stopped. With
``--profile`` the two largest sizes run under ``py-spy record --nonblocking`` (the venv's)
attached to the processes that do the work, and the top frames of each at the largest size
measured are summed up (those sizes' figures then include the sampler's cost).

    python -m bench.growth [--quick] [--profile] [--bound-factor F]
                           [--only bus workflows locks depgraph sse]

``--quick``: the smallest sizes only (a smoke test). Uses ORCHESTRATOR_DATABASE_URL /
ORCHESTRATOR_REDIS_URL (embedded services when unset); namespaces of its own, deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from orchestrator.runtime import Runtime

from . import bus, depgraph, locks, sse, workflows
from .common import Result, percentile, print_result, settings
from .profiling import Profiler

__all__ = ["run", "LADDERS"]

#: the sizes of each ladder, full and quick
LADDERS: dict[str, tuple[int, ...]] = {
    "bus": (1, 10, 100, 1_000, 10_000), "workflows": (100, 1_000, 10_000),
    "locks": (1, 10, 100), "depgraph": (1_000, 10_000, 100_000), "sse": (10, 100, 1_000)}
_QUICK: dict[str, tuple[int, ...]] = {
    "bus": (1, 10), "workflows": (10,), "locks": (1, 10), "depgraph": (100, 1_000),
    "sse": (1, 10)}
#: seconds each ladder may take (full run, 10 minutes in all; quick: a half; --bound-factor)
_BOUNDS = {"bus": 75.0, "workflows": 300.0, "locks": 35.0, "depgraph": 100.0, "sse": 90.0}
_SIZE_OF = {"bus": "in flight", "workflows": "in flight", "locks": "waiters",
            "depgraph": "files", "sse": "subscribers"}
_SLACK = 1.25
_TARGET = "cost grows no worse than linearly with size (per x10, 1.25x slack for noise)"


# -- series and growth -----------------------------------------------------------------------


@dataclass
class Series:
    """One figure measured at each size. ``kind`` says what linear growth means for it:
    ``total`` x10 per x10, ``per_item`` x1, ``rate`` x1 (its cost per item is 1/rate),
    ``info`` not judged (e.g. a completion count)."""

    label: str
    unit: str
    kind: str
    at: dict[int, float] = field(default_factory=dict)

    def steps(self) -> list[tuple[int, int, float, float]]:
        """(size, next size, growth factor of the figure, of the cost it implies) per step."""
        sizes = sorted(self.at)
        out = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            if not self.at[a] or self.at[b] is None:
                continue
            factor = self.at[b] / self.at[a]
            scale = b / a
            cost = {"total": factor, "per_item": factor * scale,
                    "rate": scale / factor if factor else float("inf")}.get(self.kind, scale)
            out.append((a, b, factor, cost))
        return out

    def flagged(self) -> list[str]:
        if self.kind == "info":
            return []
        return [f"{self.label}: {a:,} -> {b:,} x{factor:.2f} (cost x{cost:.1f} per x{b // a})"
                for a, b, factor, cost in self.steps() if cost > (b / a) * _SLACK]


@dataclass
class Ladder:
    name: str
    sizes: tuple[int, ...]
    series: list[Series]
    figures: dict[int, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    profiles: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def sampled(self, spy: Profiler, size: int, me: bool = False,
                children: tuple[str, ...] = ()) -> contextlib.AbstractAsyncContextManager[Any]:
        """The sampler on the two largest sizes (the largest may be skipped), else nothing."""
        if size not in self.sizes[-2:]:
            return contextlib.nullcontext()
        return spy.record(self.profiles.setdefault(size, []), me=me, children=children)

    @property
    def profile(self) -> tuple[int, list[dict[str, Any]]] | None:
        """The summaries of the largest size measured under the sampler."""
        sizes = [k for k in self.profiles if k in self.figures]
        return (max(sizes), self.profiles[max(sizes)]) if sizes else None

    def record(self, size: int, values: dict[str, float | None], raw: dict[str, Any]) -> None:
        for s in self.series:
            if values.get(s.label) is not None:
                s.at[size] = float(values[s.label])  # type: ignore[arg-type]
        self.figures[size] = raw

    def result(self, quick: bool, notes: str) -> Result:
        flags = [f for s in self.series for f in s.flagged()]
        flags += [f"{size:,}: {why}" for size, why in self.skipped.items()
                  if why.startswith("failed")]
        return Result(
            f"growth_{self.name}", _TARGET, None if quick else not flags,
            figures={"size": _SIZE_OF[self.name], "sizes": list(self.sizes),
                     "series": {f"{s.label} ({s.unit})": {str(k): v for k, v in s.at.items()}
                                for s in self.series},
                     "growth_per_x10": {s.label: [round(f, 3) for *_, f, _c in s.steps()]
                                        for s in self.series},
                     "worse_than_linear": flags,
                     "skipped": {str(k): v for k, v in self.skipped.items()},
                     "at_each_size": {str(k): v for k, v in self.figures.items()},
                     **({"profile": {"size": self.profile[0], "processes": self.profile[1]}}
                        if self.profile else {})},
            notes=notes)


class _Bound:
    """The time bound of one ladder: skip a size whose linear projection passes it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        # (work units, seconds that scale with them, seconds that do not) of the last size
        self.last: tuple[float, float, float] | None = None

    def skip_reason(self, units: float) -> str | None:
        if self.last is None:
            return None
        done_units, scaled_s, fixed_s = self.last
        projected = fixed_s + scaled_s * units / done_units
        done_s = scaled_s + fixed_s
        if time.monotonic() + projected > self.deadline:
            return (f"skipped: the size below took {done_s:.1f} s, so this one would take "
                    f"~{projected:.0f} s at linear growth, past this ladder's bound of "
                    f"{self.seconds:.0f} s")
        return None

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def done(self, units: float, seconds: float, scaled_s: float | None) -> None:
        scaled = seconds if scaled_s is None else min(seconds, scaled_s)
        self.last = (units, scaled, seconds - scaled)


async def _sized(ladder: Ladder, bound: _Bound, size: int, units: float,
                 measure: Callable[[], Awaitable[tuple[dict[str, float | None], dict[str, Any]]]]
                 ) -> bool:
    """Measure one size within the bound; False (and a note) when it was skipped or stopped.
    ``measure`` answers the figures of the series and the raw figures; ``scaled_s`` in the raw
    ones, when there, is the part of the time that grows with the size (the rest, such as a
    process's start, is taken as fixed when projecting the next size)."""
    reason = bound.skip_reason(units)
    if reason:
        ladder.skipped[size] = reason
        print(f"   {ladder.name} at {size:,}: {reason}", file=sys.stderr, flush=True)
        return False
    started = time.perf_counter()
    try:
        async with asyncio.timeout(bound.remaining() + 30):
            values, raw = await measure()
    except Exception as exc:  # a size that breaks is a finding: flagged, the larger not tried
        ladder.skipped[size] = (
            f"stopped: still running at this ladder's bound of {bound.seconds:.0f} s (+30 s)"
            if isinstance(exc, TimeoutError) else f"failed: {type(exc).__name__}: {exc}"[:400])
        print(f"   {ladder.name} at {size:,}: {ladder.skipped[size]}", file=sys.stderr,
              flush=True)
        return False
    elapsed = time.perf_counter() - started
    raw["wall_s"] = round(elapsed, 2)
    ladder.record(size, values, raw)
    bound.done(units, elapsed, raw.get("scaled_s"))
    print(f"   {ladder.name} at {size:,}: {json.dumps(values)} ({elapsed:.1f} s)",
          file=sys.stderr, flush=True)
    return True


# -- the ladders ------------------------------------------------------------------------------


async def _bus(sizes: tuple[int, ...], bound: _Bound, spy: Profiler, quick: bool) -> Ladder:
    ladder = Ladder("bus", sizes, [
        Series("throughput", "req/s", "rate"), Series("p50", "ms", "total"),
        Series("p99", "ms", "total"), Series("cpu per request", "us", "per_item")])
    base = settings("growth-bus")
    try:
        async with bus._worker_process(base) as proc, Runtime.open(base, agents=[]) as rt:
            await bus._wait_for_agent(rt, "noop")
            cpu, send = bus._CpuMeter(rt, proc.pid), bus._raw_request(rt)
            await _closed_loop(send, 50, 500)  # warm: connections, the worker's scaler

            async def measure(n: int, total: int) -> tuple[dict[str, float | None], dict]:
                await bus._worker_stats(rt, reset=True)
                before = await cpu.read()
                latencies, elapsed, ids, failures = await _closed_loop(send, n, total)
                after = await cpu.read()
                stats = await bus._worker_stats(rt, reset=True)
                used = {k: after[k] - before[k] for k in after}
                lost = total - min(len(ids), len(set(ids)), stats["unique"])
                raw = {"requests": total, "lost": lost,
                       "duplicated": stats["executions"] - stats["unique"],
                       "failures": failures[:3],
                       "cpu_us_per_request": {k: round(v / total * 1e6, 1)
                                              for k, v in used.items()}}
                return {"throughput": round(total / elapsed, 1),
                        "p50": round(percentile(latencies, 50) * 1000, 3),
                        "p99": round(percentile(latencies, 99) * 1000, 3),
                        "cpu per request": round(sum(used.values()) / total * 1e6, 1)}, raw

            for n in sizes:
                total = max(200, 2 * n) if quick else 500 if n == 1 else max(1000, 3 * n)
                # time ~ requests / throughput, which grows with what is in flight up to ~100
                units = total / min(n, 100)
                async with ladder.sampled(spy, n, me=True, children=("bench._noop_worker",)):
                    await _sized(ladder, bound, n, units, lambda n=n, t=total: measure(n, t))
    finally:
        await bus._delete_namespace(base, base.namespace)
    return ladder


async def _closed_loop(send: Callable[[], Awaitable[Any]], in_flight: int, total: int
                       ) -> tuple[list[float], float, list[str], list[str]]:
    """``total`` requests with ``in_flight`` outstanding at all times (each client sends its
    next one when its last is answered): latencies, seconds, answered ids, failures."""
    latencies: list[float] = []
    ids: list[str] = []
    failures: list[str] = []
    left = [total]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            t = time.perf_counter()
            try:
                response = await send()
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t)
            ids.append(response.request_id)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(in_flight, total))))
    return latencies, time.perf_counter() - started, ids, failures


async def _workflows(sizes: tuple[int, ...], bound: _Bound, spy: Profiler,
                     quick: bool) -> Ladder:
    ladder = Ladder("workflows", sizes, [
        Series("runs/s", "wf/s", "rate"), Series("memory per workflow", "KB", "per_item"),
        Series("peak RSS", "MB", "total"), Series("completed", "share", "info")])
    base = settings("growth-workflows", local_agents=False)
    threads: list[str] = []
    available_mb = psutil.virtual_memory().available / 2**20

    async def measure(n: int) -> tuple[dict[str, float | None], dict[str, Any]]:
        result = await workflows._memory(base, n, threads, timeout=max(150.0, bound.remaining()))
        f = result.figures
        f["scaled_s"] = f["start_s"] + f["drain_s"]
        return {"runs/s": round(n / f["scaled_s"], 1),
                "memory per workflow": f["kb_per_in_flight_workflow"],
                "peak RSS": f["peak_rss_mb"], "completed": round(f["completed"] / n, 4)}, f

    try:
        async with workflows._agent_workers(base, 2):
            for n in sizes:
                last = ladder.figures.get(max(ladder.figures, default=0))
                if last and last["rss_idle_mb"] + last["kb_per_in_flight_workflow"] * n / 1024 \
                        > available_mb / 2:
                    ladder.skipped[n] = (f"skipped: would take more than half the "
                                         f"{available_mb:.0f} MB of memory available")
                    continue
                async with ladder.sampled(spy, n, children=("bench._worker agent",
                                                            "bench._worker memory")):
                    await _sized(ladder, bound, n, n, lambda n=n: measure(n))
    finally:
        await workflows._cleanup(base, threads)
    return ladder


async def _locks(sizes: tuple[int, ...], bound: _Bound, spy: Profiler, quick: bool) -> Ladder:
    ladder = Ladder("locks", sizes, [
        Series("hand-over p50", "ms", "total"), Series("hand-over p95", "ms", "total"),
        Series("cpu per hand-over", "us", "total")])
    base = settings("growth-locks", local_agents=False)
    rounds = 40 if quick else 300
    me = psutil.Process()
    async with Runtime.open(base, agents=[]) as rt:
        try:
            await locks._handover_rounds(rt, "growth:warm", 20, 10)

            async def measure(w: int) -> tuple[dict[str, float | None], dict[str, Any]]:
                before = sum(me.cpu_times()[:2])
                samples = await locks._handover_rounds(rt, f"growth:handover:{w}", rounds, w)
                used = sum(me.cpu_times()[:2]) - before
                return {"hand-over p50": round(statistics.median(samples) * 1000, 3),
                        "hand-over p95": round(percentile(samples, 95) * 1000, 3),
                        "cpu per hand-over": round(used / len(samples) * 1e6, 1)}, \
                    {"hand_overs": len(samples), "hold_ms": 1}

            for w in sizes:
                async with ladder.sampled(spy, w, me=True):
                    await _sized(ladder, bound, w, rounds, lambda w=w: measure(w))
        finally:
            await rt.db.execute("DELETE FROM resource_locks WHERE namespace = %s",
                                (base.namespace,))
    await bus._delete_namespace(base, base.namespace)  # the runtime's events stream
    return ladder


async def _depgraph(sizes: tuple[int, ...], bound: _Bound, spy: Profiler,
                    quick: bool) -> Ladder:
    ladder = Ladder("depgraph", sizes, [Series("analyze", "s", "total"),
                                        Series("edges", "edges", "info")])

    async def measure(files: int, runs: int) -> tuple[dict[str, float | None], dict[str, Any]]:
        # packages of 99 modules and an __init__, and the root __init__: files + 1
        result = await asyncio.to_thread(depgraph._timed_generated, "growth", depgraph.generate,
                                         (max(1, files // 100), 99, runs), "bench-growth-")
        f = result.figures
        return {"analyze": f["median_s"], "edges": f["edges"]}, f

    for files in sizes:
        runs = 1 if files >= 100_000 else 3
        async with ladder.sampled(spy, files, me=True):
            await _sized(ladder, bound, files, files * (runs + 2),
                         lambda f=files, r=runs: measure(f, r))
    return ladder


async def _sse(sizes: tuple[int, ...], bound: _Bound, spy: Profiler, quick: bool) -> Ladder:
    ladder = Ladder("sse", sizes, [
        Series("fan-out p50", "ms", "total"), Series("fan-out p95", "ms", "total"),
        Series("serve cpu per delivery", "us", "per_item"),
        Series("received", "share", "info")])
    rate, seconds = (10.0, 1.0) if quick else (10.0, 5.0)

    async with sse.serving_console(settings("growth-sse", local_agents=False)) as served:

        serve = psutil.Process(served.serve_pid)

        async def measure(n: int) -> tuple[dict[str, float | None], dict[str, Any]]:
            before = sum(serve.cpu_times()[:2])
            f = await served.round(n, rate, seconds)
            f["serve_cpu_s"] = round(sum(serve.cpu_times()[:2]) - before, 3)
            return {"fan-out p50": f["p50_ms"], "fan-out p95": f["p95_ms"],
                    "serve cpu per delivery": round(f["serve_cpu_s"] / f["expected"] * 1e6, 1),
                    "received": round(f["received"] / f["expected"], 4)}, f

        for n in sizes:
            async with ladder.sampled(spy, n, children=("orchestrator.cli serve",
                                                        "bench.sse subscribers")):
                # the time is mostly the clients' start and the round's fixed length
                await _sized(ladder, bound, n, 1, lambda n=n: measure(n))
    return ladder


_RUNNERS = {"bus": _bus, "workflows": _workflows, "locks": _locks, "depgraph": _depgraph,
            "sse": _sse}
_NOTES = {
    "bus": "closed loop: N clients each sending its next bus.request when its last is "
           "answered (500 requests at 1, else 1,000 or 3 x N); one worker process; lost and "
           "duplicated per size in at_each_size",
    "workflows": "bench.workflows' memory run at each size: N workflows held in flight in one "
                 "orchestrator process, then released; runs/s = N / (start_s + drain_s); "
                 "memory per workflow = (RSS holding - RSS idle) / N",
    "locks": "bench.locks' in-process hand-over (1 ms hold; the holder queues again only once "
             "another holds it) with 1 holder and W waiters; cpu = this process's",
    "depgraph": "bench.depgraph.generate: packages of 99 modules + __init__ (files + 1); "
                "median of 3 analyze() runs (1 at 100,000)",
    "sse": "bench.sse's round at 10 events/s for 5 s per size; latency = subscriber wall "
           "clock - XADD; cpu per delivery = the serve process's CPU over the whole round "
           "(subscribers connecting included) / (events x subscribers)",
}


# -- the table --------------------------------------------------------------------------------


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def growth_table(ladders: list[Ladder]) -> str:
    """The growth table as Markdown: one row per figure, its value at each size, the growth
    factor per x10 and whether a step is worse than linear."""
    rows = ["| what | figure | at each size | growth per x10 | worse than linear? |",
            "|---|---|---|---|---|"]
    for ladder in ladders:
        for s in ladder.series:
            at = " · ".join(f"{k:,}: {_num(v)}" for k, v in sorted(s.at.items()))
            skipped = "; ".join(f"{k:,}: skipped" for k in ladder.skipped)
            growth = " · ".join(f"x{f:.2f}" for *_, f, _c in s.steps()) or "-"
            flags = s.flagged()
            verdict = "-" if s.kind == "info" else (
                "**yes**: " + ", ".join(f.split(": ", 1)[1] for f in flags) if flags else "no")
            rows.append(f"| {ladder.name} ({_SIZE_OF[ladder.name]}) | {s.label} ({s.unit}) | "
                        f"{at}{' · ' + skipped if skipped else ''} | {growth} | {verdict} |")
    return "\n".join(rows)


def profile_text(ladders: list[Ladder]) -> str:
    lines = []
    for ladder in ladders:
        if ladder.profile is None:
            continue
        size, found = ladder.profile
        for p in found:
            if "error" in p:
                lines.append(f"{ladder.name} at {size:,}: {p['error']}")
                continue
            lines.append(f"{ladder.name} at {size:,} — {p['process']} "
                         f"({p['samples']} samples at 50 Hz, "
                         f"{100 * (p['waiting_in_select'] or 0):.0f}% waiting in select):")
            lines.append("   own:  " + "; ".join(p["top_own"][:6]))
            lines.append("   ours: " + "; ".join(p["top_ours_inclusive"][:6]))
    return "\n".join(lines)


# -- the suite --------------------------------------------------------------------------------


async def run(quick: bool = False, profile: bool = False, only: list[str] | None = None,
              bound_factor: float = 1.0) -> list[Result]:
    spy = Profiler(profile)
    ladders: list[Ladder] = []
    results: list[Result] = []
    for name in only or list(_RUNNERS):
        sizes = (_QUICK if quick else LADDERS)[name]
        bound = _Bound(_BOUNDS[name] * bound_factor / (2 if quick else 1))
        ladder = await _RUNNERS[name](sizes, bound, spy, quick)
        ladders.append(ladder)
        results.append(ladder.result(quick, _NOTES[name]))
    print("\n" + growth_table(ladders), flush=True)
    if profile:
        print("\n" + profile_text(ladders), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smallest sizes only")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the largest size of each ladder; print the top frames")
    parser.add_argument("--only", nargs="+", choices=list(_RUNNERS), metavar="LADDER",
                        help=f"run only these ({', '.join(_RUNNERS)})")
    parser.add_argument("--bound-factor", type=float, default=1.0, metavar="F",
                        help="multiply each ladder's time bound by F (a busy machine)")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick, args.profile, args.only, args.bound_factor))
    for result in results:
        print_result(result)
    print(json.dumps({"results": [r.to_dict() for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ETA of a ``plan_execution`` run: the time its remaining tasks will take, dispatched
the way the run dispatches them.

``dispatch`` starts up to ``max_parallel`` ready tasks, in its priority order, and runs again
when all of them have ended (they are one LangGraph step); so the rest of the run lasts the sum,
over those rounds, of each round's longest task. :func:`forecast` replays that with each task's
estimate (``estimate_s`` in its record, from :mod:`orchestrator.learning.durations` or the
plan's ``estimate``) and the caller's own ordering function (``dispatch``'s), so the forecast
and the run cannot disagree on the order. A round's length is the *expected* longest of its
tasks (:func:`expected_longest`): each task's duration is taken as lognormal around its
estimate with its learned ``estimate_spread``, and the longest of several noisy tasks is on
average longer than the longest estimate (taking the estimates' maximum made the ETA 17% short
in ``tests/test_learning_durations.py``'s simulation). A task with no estimate counts as the median of what
is known (the other tasks' estimates and this run's finished attempts); with nothing known at
all the ETA is unknown (``seconds_left`` None).

Revised at every dispatch: finished tasks leave the forecast, and the remaining estimates are
scaled by the run's pace so far (the sum of its finished attempts' durations over the sum of
their estimates, shrunk towards 1 while few tasks have finished: a uniformly slower machine
shows after a few tasks; one slow task barely moves it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["LEARNED_BASES", "describe", "expected_longest", "forecast"]

# estimate_basis values that come from history (the others: "plan estimate", "none")
LEARNED_BASES = ("history", "size fit", "last success", "kind average")
# finished tasks that weigh as much as the prior pace of 1 (shrinkage of the observed pace)
PACE_PRIOR = 5.0

Order = Callable[[dict[str, dict[str, Any]]], list[str]]


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _pace(tasks: Mapping[str, Mapping[str, Any]]) -> tuple[float, int]:
    """This run's observed over estimated duration (shrunk to 1), and the attempts it is from."""
    spent = planned = 0.0
    count = 0
    for rec in tasks.values():
        est = rec.get("estimate_s")
        if not est:
            continue
        for attempt in rec.get("attempts") or ():
            if attempt.get("outcome") == "passed" and not attempt.get("cache_hit"):
                spent += float(attempt.get("seconds") or 0.0)
                planned += float(est)
                count += 1
    if not count or planned <= 0:
        return 1.0, 0
    return (spent / planned * count + PACE_PRIOR) / (count + PACE_PRIOR), count


def _lognormal_cdf(x: float, median: float, spread: float) -> float:
    if spread <= 0:
        return 1.0 if x >= median else 0.0
    return 0.5 * (1.0 + math.erf(math.log(x / median) / (spread * math.sqrt(2.0))))


def expected_longest(tasks: list[tuple[float, float]], points: int = 64) -> float:
    """The expected longest duration of tasks run together, each lognormal with the given
    ``(median, spread)`` (spread: the standard deviation of its logarithm; 0: exactly the
    median): ``E[max] = integral of (1 - prod F_i(x)) dx``, by the midpoint rule over
    ``points`` steps up to where every task has ended with probability > 0.9999."""
    if not tasks:
        return 0.0
    if len(tasks) == 1 or all(s <= 0 for _, s in tasks):
        return max(m * math.exp(s * s / 2) for m, s in tasks)
    top = max(m * math.exp(4.0 * s) for m, s in tasks)
    step = top / points
    total = 0.0
    for i in range(points):
        x = (i + 0.5) * step
        total += 1.0 - math.prod(_lognormal_cdf(x, m, s) for m, s in tasks if m > 0)
    return total * step


def _basis(tasks: Mapping[str, Mapping[str, Any]]) -> str:
    bases = [str(rec.get("estimate_basis") or "none") for rec in tasks.values()]
    if any(b.startswith(LEARNED_BASES) for b in bases):
        return "learned"
    return "estimates" if "plan estimate" in bases else "unknown"


def forecast(tasks: Mapping[str, Mapping[str, Any]], *, max_parallel: int, order: Order,
             now: float) -> dict[str, Any]:
    """The plan state's ``eta``: ``{"seconds_left", "finish_at", "revised_at", "done",
    "total", "basis", "pace"}``.

    Args:
        tasks: the run's task records (``status``, ``deps``, ``estimate_s``, ``attempts``...).
        max_parallel: how many tasks dispatch starts at once.
        order: the tasks that may start now, best first, given task records (dispatch's
            ordering; back-offs are not waited for in the forecast).
        now: the time of the revision (epoch seconds).
    """
    remaining = [t for t, rec in tasks.items() if rec.get("status") in ("pending", "retry")]
    done = sum(1 for rec in tasks.values() if rec.get("status") == "done")
    basis = _basis({t: tasks[t] for t in remaining} or tasks)
    known = [float(rec["estimate_s"]) for rec in tasks.values() if rec.get("estimate_s")]
    known += [float(a["seconds"]) for rec in tasks.values() for a in rec.get("attempts") or ()
              if a.get("outcome") == "passed" and not a.get("cache_hit")]
    fill = statistics.median(known) if known else None
    pace, observed = _pace(tasks)
    eta: dict[str, Any] = {"seconds_left": None, "finish_at": None, "revised_at": _iso(now),
                           "done": done, "total": len(tasks), "basis": basis,
                           "pace": round(pace, 3), "paced_by": observed}
    # a copy the replay marks done round by round; dead and skipped tasks never finish, so
    # what waits for them never starts (as in the run, until a person answers)
    sim = dict(tasks)
    left = 0.0
    while True:
        chosen = order(sim)[:max_parallel]
        if not chosen:
            break
        costs = [(sim[t].get("estimate_s") or fill, sim[t].get("estimate_spread") or 0.0)
                 for t in chosen]
        if any(c is None for c, _ in costs):
            return {**eta, "basis": "unknown"}
        left += expected_longest([(float(c or 0.0), float(s)) for c, s in costs])
        for task_id in chosen:
            sim[task_id] = {**sim[task_id], "status": "done"}
    left *= pace
    return {**eta, "seconds_left": round(left, 3), "finish_at": _iso(now + left)}


def _duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe(eta: Mapping[str, Any] | None, now: float) -> str:
    """An ETA as a few words for a progress line: ``ETA 3m12s`` (time left from ``now`` to
    its ``finish_at``), ``ETA ~3m12s`` when no estimate is learned, ``ETA passed 20s ago``,
    ``ETA unknown``; ``""`` when there is none."""
    if not eta:
        return ""
    finish = eta.get("finish_at")
    if finish is None:
        return "ETA unknown"
    left = datetime.fromisoformat(finish).timestamp() - now
    if left < 0:
        return f"ETA passed {_duration(-left)} ago"
    rough = "" if eta.get("basis") == "learned" else "~"
    return f"ETA {rough}{_duration(left)}"

"""How long a plan task will take, learned from the durations of its earlier successes.

Per key (repository, kind, file), from the newest successful attempts that did the work
(``learn_tasks`` rows with status ``passed``; :mod:`orchestrator.learning.tasks`):

* 3 or more samples: a robust average, the median (one slow outlier does not move it), and
  the spread of the durations around it (the robust standard deviation of their logarithm,
  ``spread``), with which the ETA expects the longest of tasks run together;
* 8 or more samples whose sizes vary (3 distinct sizes or more) and a known size now: a
  Theil-Sen fit of duration on size (the median of the pairwise slopes; robust to a quarter of
  the points being outliers), evaluated at the task's size now, when the durations stray
  less from the fit than from the median (a spread under 0.9 times the median's: the size
  explains some of the variation); a fit that predicts less than half or more than twice
  anything seen is not trusted either. Otherwise the median;
* 1 or 2 samples: the last success (too few for an average to be robust);
* none: the median over the repository's files of that kind (each file's median counts once);
* nothing of that kind either: unknown (``seconds`` None; its weight stays 1.0).

``plan_execution`` weighs its critical path with these (a task's own ``estimate`` wins) and
its ETA (:mod:`orchestrator.learning.eta`) adds them up the way dispatch will run the tasks.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.learning.tasks import TaskSample, kind_samples, samples_by_key
from orchestrator.state.db import Database

__all__ = ["Estimate", "TaskKey", "estimate", "estimate_tasks", "log_spread", "theil_sen"]

log = logging.getLogger(__name__)

FEW = 2          # up to this many samples: the last success
FIT_MIN = 8      # from this many samples with varying sizes: the size fit
FIT_SIZES = 3    # distinct sizes a fit needs
FIT_GAIN = 0.9   # a fit is used when it strays less than this much of the median's spread


@dataclass(frozen=True)
class Estimate:
    """A task's expected duration (None: unknown) and how it was found (``basis``, shown in
    the task's record as ``estimate_basis``)."""

    seconds: float | None
    basis: str
    samples: int = 0
    spread: float = 0.0  # the robust standard deviation of log(duration) around it


    @property
    def learned(self) -> bool:
        return self.seconds is not None


@dataclass(frozen=True)
class TaskKey:
    """What the estimate of one task is looked up by: ``kind`` and ``file`` in the plan's
    repository, and its size now (lines; 0: not known, a description-only task)."""

    task_id: str
    kind: str
    file: str
    size: int = 0


UNKNOWN = Estimate(None, "none")


def theil_sen(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """The Theil-Sen line ``(slope, intercept)`` through ``(x, y)`` points: the median of
    the slopes between pairs with different x, and the median of ``y - slope * x``; None when
    no two points differ in x."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
              for x2, y2 in points[i + 1:] if x2 != x1]
    if not slopes:
        return None
    slope = statistics.median(slopes)
    return slope, statistics.median(y - slope * x for x, y in points)


def log_spread(seconds: Sequence[float], expected: Sequence[float]) -> float:
    """How far durations stray from what was expected of them: the robust standard deviation
    (1.4826 x the median absolute deviation) of ``log(seconds / expected)``; 0 for fewer than
    3 samples."""
    ratios = [math.log(s / e) for s, e in zip(seconds, expected, strict=True) if s > 0 and e > 0]
    if len(ratios) < 3:
        return 0.0
    center = statistics.median(ratios)
    return 1.4826 * statistics.median(abs(r - center) for r in ratios)


def estimate(samples: Sequence[TaskSample], size: int = 0,
             kind_medians: Sequence[float] = ()) -> Estimate:
    """The estimate of one task from its key's successes (newest first), its size now, and the
    medians of the other files of its kind in the repository (the fallback)."""
    n = len(samples)
    if n == 0:
        if kind_medians:
            return Estimate(statistics.median(kind_medians),
                            f"kind average: median of {len(kind_medians)} files", 0)
        return UNKNOWN
    if n <= FEW:
        return Estimate(samples[0].seconds, "last success", n)
    seconds = [s.seconds for s in samples]
    median = statistics.median(seconds)
    plain = Estimate(median, f"history: median of {n} runs", n,
                     log_spread(seconds, [median] * n))
    if n >= FIT_MIN and size > 0 and len({s.size for s in samples}) >= FIT_SIZES:
        line = theil_sen([(float(s.size), s.seconds) for s in samples])
        if line is not None:
            fitted = line[0] * size + line[1]
            spread = log_spread(seconds, [line[0] * s.size + line[1] for s in samples])
            if (min(seconds) / 2 <= fitted <= max(seconds) * 2
                    and spread < FIT_GAIN * plain.spread):
                return Estimate(fitted, f"size fit: {n} runs, {size} lines", n, spread)
    return plain


async def estimate_tasks(db: Database, namespace: str, repo: str,
                         tasks: Sequence[TaskKey]) -> dict[str, Estimate]:
    """The estimate of each task of a plan on ``repo`` (by task id), from ``learn_tasks``.

    Never raises: when the history cannot be read every task is unknown (logged), and the
    plan runs with the weights it would have had without learning.
    """
    try:
        by_key = await samples_by_key(db, namespace, repo, [(t.kind, t.file) for t in tasks])
        missing = {t.kind for t in tasks if not by_key.get((t.kind, t.file))}
        by_kind = await kind_samples(db, namespace, repo, missing)
    except Exception as exc:  # noqa: BLE001 - learning is advice: without it, unit weights
        log.warning("learning: durations of %s not read, tasks weigh 1: %s", repo, exc)
        return {t.task_id: UNKNOWN for t in tasks}
    return {t.task_id: estimate(by_key.get((t.kind, t.file), []), t.size,
                                by_kind.get(t.kind, ())) for t in tasks}

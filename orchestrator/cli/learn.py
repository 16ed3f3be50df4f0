"""``orchestrator learn stats`` and ``orchestrator learn reset``: what was learned from
outcomes, and forgetting it.

``stats`` reads the outcome records (``orchestrator.learning``) of the settings' namespace:

* fixes (``learn_fixes``): attempts, fixed and fixed at the first try, by prompt version,
  tier and task kind;
* plan tasks (``learn_tasks``): attempts, passed, passed QA at the first try, median seconds,
  by prompt version, tier and kind;
* healing (``learn_healing``): per service, issue and action: attempts, verified recoveries,
  success rate, median seconds to recover (what ``self_healing`` orders its runbook by);
* agent calls (``learn_calls``): per agent and request type: calls, error rate, p50/p95 ms;
* canaries and review answers.

``--service S`` narrows to one service's healing and canary, ``--kind K`` to one issue or task
kind, ``--repo R`` to one repository's tasks and fixes; a section without that dimension is
left out. ``--json`` prints one object with a key per section.

``reset`` deletes records: ``--service S`` that service's healing records (its runbook order
goes back to the runbook's own), ``--repo R`` that repository's task and fix records (its
durations and similar past fixes), ``--all`` every record of the namespace. It needs
``--yes``: without it nothing is deleted (exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..learning.fixes import fix_stats, repo_key, reset_fixes
from ..learning.store import LearningStore
from .exits import EXIT_OK, UsageError
from .output import print_json
from .parser import settings_for

__all__ = ["cmd_learn", "learn_stats", "task_stats"]

_TASK_GROUPS = (("prompt", "coalesce(prompt_version, '(no model)')"),
                ("tier", "coalesce(tier, '-')"), ("kind", "kind"))


async def task_stats(db: Any, namespace: str, *, repo: str | None = None,
                     kind: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Plan task outcomes (``learn_tasks``) by prompt version, tier and kind: ``attempts``
    (work done: cache hits left out), ``passed``, ``pass_rate``, ``first_time`` (tasks that
    passed QA at their first attempt) over ``first_attempts``, ``median_s`` of the passes."""
    found: dict[str, list[dict[str, Any]]] = {}
    for by, column in _TASK_GROUPS:
        rows = await db.fetch(
            f"""SELECT {column} AS key,
                       count(*) FILTER (WHERE status <> 'cached') AS attempts,
                       count(*) FILTER (WHERE status = 'passed') AS passed,
                       count(*) FILTER (WHERE attempt = 1 AND status <> 'cached') AS firsts,
                       count(*) FILTER (WHERE qa_first_time) AS first_time,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds)
                           FILTER (WHERE status = 'passed') AS median_s
                FROM learn_tasks WHERE namespace = %(ns)s
                  AND (%(repo)s::text IS NULL OR repo = %(repo)s)
                  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
                GROUP BY 1 ORDER BY 1""",  # noqa: S608 - the column is one of _TASK_GROUPS
            {"ns": namespace, "repo": repo, "kind": kind})
        found[by] = [{by: r["key"], "attempts": r["attempts"], "passed": r["passed"],
                      "pass_rate": _rate(r["passed"], r["attempts"]),
                      "first_attempts": r["firsts"], "first_time": r["first_time"],
                      "first_time_rate": _rate(r["first_time"], r["firsts"]),
                      "median_s": None if r["median_s"] is None else round(r["median_s"], 3)}
                     for r in rows]
    return found


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def learn_stats(db: Any, namespace: str, *, service: str | None = None,
                      kind: str | None = None, repo: str | None = None) -> dict[str, Any]:
    """Every section's statistics, narrowed by the filters given; a section that has no
    such dimension is left out when one is given (see the module's docstring)."""
    store = LearningStore(db, namespace)
    repo = repo and repo_key(repo)
    stats: dict[str, Any] = {}
    if service is None:
        stats["fixes"] = await fix_stats(db, namespace, repo=repo, kind=kind)
        stats["tasks"] = await task_stats(db, namespace, repo=repo, kind=kind)
    if repo is None:
        stats["healing"] = _plain(await store.healing_stats(service=service, kind=kind))
    if repo is None and kind is None:
        stats["canary"] = await store.canary_stats(deployment=service)
    if service is None and kind is None:
        if repo is None:
            stats["calls"] = _plain(await store.call_stats())
        stats["reviews"] = _plain(await store.review_stats(repo=repo))
    return stats


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their numbers as JSON numbers (PostgreSQL's numeric comes back Decimal)."""
    return [{k: float(v) if type(v).__name__ == "Decimal" else v for k, v in r.items()}
            for r in rows]


async def cmd_learn(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..runtime import Runtime

    if args.learn_command not in ("stats", "reset"):
        raise UsageError("orchestrator learn stats | reset: say which (see --help)")
    if args.learn_command == "reset":
        _check_reset(args)
    settings = settings_for(args)
    async with Runtime.open(settings, agents=[]) as rt:
        if args.learn_command == "reset":
            deleted = await _reset(rt.db, settings.namespace, args)
            if args.json:
                print_json(deleted, out)
            else:
                out.write("forgot " + ", ".join(f"{n} {table}" for table, n in deleted.items())
                          + " rows\n")
            return EXIT_OK
        stats = await learn_stats(rt.db, settings.namespace, service=args.service,
                                  kind=args.kind, repo=args.repo)
    if args.json:
        print_json(stats, out)
    else:
        _print_stats(stats, out)
    return EXIT_OK


def _check_reset(args: argparse.Namespace) -> None:
    chosen = [name for name in ("service", "repo") if getattr(args, name)]
    if args.all:
        chosen.append("all")
    if len(chosen) != 1:
        raise UsageError("orchestrator learn reset: give one of --service S, --repo R or --all "
                         f"(got {', '.join('--' + c for c in chosen) or 'none'})")
    if not args.yes:
        what = (f"the healing records of service {args.service!r}" if args.service else
                f"the task and fix records of {args.repo}" if args.repo else
                "everything learned in this namespace")
        raise UsageError(f"this deletes {what}, and what was learned from it is lost; "
                         "add --yes to do it")


async def _reset(db: Any, namespace: str, args: argparse.Namespace) -> dict[str, int]:
    store = LearningStore(db, namespace)
    if args.service:
        return await store.forget(service=args.service)
    repo = None if args.all else repo_key(args.repo)
    deleted = await store.forget() if args.all else {}
    deleted["learn_tasks"] = await db.execute(
        "DELETE FROM learn_tasks WHERE namespace = %s AND (%s::text IS NULL OR repo = %s)",
        (namespace, repo, repo))
    deleted["learn_fixes"] = await reset_fixes(db, namespace, repo=repo)
    return deleted


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def _table(out: TextIO, title: str, head: list[str], rows: list[list[Any]]) -> None:
    out.write(f"\n{title}\n")
    if not rows:
        out.write("  (nothing recorded)\n")
        return
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    for row in [head, *rows]:
        out.write("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                  .rstrip() + "\n")


def _print_stats(stats: dict[str, Any], out: TextIO) -> None:
    """The sections as text tables."""
    for by in ("prompt", "tier", "kind"):
        if "fixes" in stats:
            _table(out, f"fixes by {by}", [by.upper(), "ATTEMPTS", "FIXED", "FIRST TRY"],
                   [[r[by], r["attempts"], f"{r['fixed']} ({_pct(r['fixed_rate'])})",
                     f"{r['first_time']} ({_pct(r['first_time_rate'])})"]
                    for r in stats["fixes"][by]])
    for by in ("prompt", "tier", "kind"):
        if "tasks" in stats:
            _table(out, f"plan tasks by {by}",
                   [by.upper(), "ATTEMPTS", "PASSED", "QA FIRST TIME", "MEDIAN S"],
                   [[r[by], r["attempts"], f"{r['passed']} ({_pct(r['pass_rate'])})",
                     f"{r['first_time']}/{r['first_attempts']} ({_pct(r['first_time_rate'])})",
                     "-" if r["median_s"] is None else f"{r['median_s']:.1f}"]
                    for r in stats["tasks"][by]])
    if "healing" in stats:
        _table(out, "healing by service, issue and action",
               ["SERVICE", "ISSUE", "ACTION", "ATTEMPTS", "VERIFIED", "MEDIAN RECOVER S"],
               [[r["service"], r["issue"], r["action_key"], r["attempts"],
                 f"{r['verified']} ({_pct(r['success_rate'])})",
                 "-" if r["median_recover_s"] is None else f"{r['median_recover_s']:.1f}"]
                for r in stats["healing"]])
    if "canary" in stats:
        _table(out, "canaries", ["DEPLOYMENT", "ROLLOUTS", "COMPLETED", "ROLLED BACK", "LAST CAUSE"],
               [[r["deployment"], r["rollouts"], r["completed"], r["rolled_back"],
                 (r["last_rollback"] or {}).get("reason") or "-"] for r in stats["canary"]])
    if "calls" in stats:
        _table(out, "agent calls", ["AGENT", "REQUEST", "CALLS", "ERRORS", "P50 MS", "P95 MS"],
               [[r["agent_type"], r["request_type"], r["calls"], _pct(r["error_rate"]),
                 f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}"] for r in stats["calls"]])
    if "reviews" in stats:
        _table(out, "review answers by rule", ["RULE", "ANSWERS", "OVERRIDDEN", "UPHELD"],
               [[r["rule"] or "(no finding)", r["answers"],
                 f"{r['overridden']} ({_pct(r['override_rate'])})", r["upheld"]]
                for r in stats["reviews"]])

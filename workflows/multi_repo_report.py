"""What ``multi_repo_change`` says: per-repository checks, the approval question, the rows of
the result (one per repository, shown as a table by ``orchestrator show``), the follow-up
issues of the repositories that blocked the change, and the run's status.

Status: ``completed`` when every target moved (exit 0), ``failed`` when none did (exit 1),
``partial`` when some did and others not (exit 4): with ``atomic: false`` that is what was
asked for; with ``atomic`` it only happens when a rollback could not swap a branch back (it
moved on meanwhile), which the rows name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.config import get_config
from orchestrator.state.schema import now_iso
from orchestrator.workflows.followup import IssueSink, write_issue
from orchestrator.workflows.pr_deployment import ApprovalAnswer

from orchestrator.questions import ask

__all__ = ["approve", "blocking", "checks_of", "finish", "report", "rows"]


def checks_of(state: dict[str, Any], name: str) -> dict[str, Any]:
    """The review and tests of ``name`` in short: what the question and the result show."""
    rev = (state.get("reviews") or {}).get(name) or {}
    tst = (state.get("tests") or {}).get(name) or {}
    return {
        "review": {"passed": rev.get("passed"), "verdict": rev.get("verdict"),
                   "findings": rev.get("findings", [])[:20], "reason": rev.get("reason")},
        "tests": {"passed": tst.get("passed"), "counts": tst.get("counts", {}),
                  "failures": tst.get("failures", []), "reason": tst.get("reason"),
                  "commit": tst.get("commit"), "seconds": tst.get("seconds"),
                  "future_state": tst.get("future_state", False)},
    }


def blocking(state: dict[str, Any]) -> dict[str, str]:
    """Repositories whose own checks failed: name -> why."""
    out = {}
    for name in state["graph"]["order"]:
        checks = checks_of(state, name)
        reasons = []
        if checks["review"]["passed"] is not True:
            reasons.append(f"review: {checks['review']['reason'] or 'not passed'}")
        if checks["tests"]["passed"] is not True:
            reasons.append(f"tests: {checks['tests']['reason'] or 'not passed'}")
        if reasons:
            out[name] = "; ".join(reasons)
    return out


async def approve(state: dict[str, Any]) -> dict[str, Any]:
    """ONE question for the whole change: every repository's findings, tests and merge."""
    merge = state["merge"]
    changes = {c["name"]: c for c in state["changes"]}
    plan = [{"name": n, "repo": changes[n]["repo"], "merge": f"{changes[n]['source']} into "
             f"{changes[n]['target']}", "after": state["graph"]["depends"][n],
             **checks_of(state, n)} for n in state["graph"]["order"] if n in merge["ready"]]
    held = [n for n in state["graph"]["order"] if n not in merge["ready"]]
    question = (f"merge {len(plan)} repositories in this order: "
                f"{', '.join(p['name'] for p in plan)}"
                + (" (all or none)?" if state.get("atomic", True) else "?"))
    context = {"mode": state.get("mode"), "atomic": state.get("atomic", True), "plan": plan,
               "bundles": state["graph"]["bundles"],
               "not_merged": {n: blocking(state).get(n, "an upstream in its bundle failed")
                              for n in held}}
    answer = ask(ApprovalAnswer, kind="approval", question=question, context=context)
    decision = {"approved": answer.approve, "by": answer.by, "comment": answer.comment,
                "at": now_iso()}
    return {"decision": decision, "updated_at": now_iso()}


def _short_review(checks: dict[str, Any]) -> str | None:
    rev = checks["review"]
    if rev["passed"] is None:
        return None
    found = len(rev["findings"])
    return (rev["verdict"] or ("passed" if rev["passed"] else "failed")) + (
        f" ({found} findings)" if found else "")


def _short_tests(checks: dict[str, Any]) -> str | None:
    tst = checks["tests"]
    if tst["passed"] is None:
        return None
    counts = ", ".join(f"{v} {k}" for k, v in sorted(tst["counts"].items()))
    if counts:
        return counts
    return "passed" if tst["passed"] else (tst["reason"] or "failed")[:60]


def rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per repository: review, tests, merge commit, rollback commit, canary, status."""
    merge = state.get("merge") or {}
    plan, status = merge.get("plan") or {}, merge.get("status") or {}
    rollbacks, canaries = merge.get("rollbacks") or {}, state.get("canaries") or {}
    out = []
    for c in sorted(state["changes"], key=lambda c: state["graph"]["order"].index(c["name"])):
        name, checks = c["name"], checks_of(state, c["name"])
        st = status.get(name, "not merged")
        moved = st in ("moved", "rolled back", "rollback failed")
        rolled = rollbacks.get(name) or {}
        canary = canaries.get(name)
        out.append({
            "name": name, "repo": c["repo"], "review": _short_review(checks),
            "tests": _short_tests(checks),
            "merge_commit": plan[name]["new"][:12] if moved and name in plan else None,
            "rollback_commit": (plan[name]["old"][:12] if rolled.get("moved")
                                else None),
            "canary": canary.get("status") if canary else None,
            "status": {"pending": "not merged", "moved": "merged"}.get(st, st),
        })
    return out


def _thread_id() -> str:
    return str(get_config()["configurable"].get("thread_id") or "run")


async def report(state: dict[str, Any]) -> dict[str, Any]:
    """Write a follow-up issue for each blocking repository (once: recorded in state)."""
    sink = state.get("issues")
    blocked = blocking(state)
    merge = state.get("merge") or {}
    for group, reason in (merge.get("failed") or {}).items():
        for name in merge["groups"][int(group)]:
            if name not in blocked and reason.startswith(f"{name}:"):
                blocked[name] = reason.removeprefix(f"{name}: ")
    followups = dict(state.get("followups") or {})
    if sink and blocked:
        spec = IssueSink.model_validate(sink)
        changes = {c["name"]: c for c in state["changes"]}
        for name, reason in blocked.items():
            if name in followups:
                continue
            change, checks = changes[name], checks_of(state, name)
            failures = "\n".join(f"- `{f}`" for f in checks["tests"]["failures"][:30])
            body = (f"The change merging `{change['source']}` into `{change['target']}` of "
                    f"`{change['repo']}` is blocked here.\n\n**Why:** {reason}\n\n"
                    + (f"**Failing tests:**\n{failures}\n\n" if failures else "")
                    + f"Other repositories of the change: "
                    f"{', '.join(n for n in state['graph']['order'] if n != name) or 'none'}.\n"
                    f"Workflow: `{_thread_id()}` (multi_repo_change).\n")
            followups[name] = await asyncio.to_thread(
                write_issue, spec, key=f"{_thread_id()}:{name}", title=f"{name}: change "
                f"{change['source']} blocked", body=body, repo=change["repo"], name=name)
    return {"followups": followups, "updated_at": now_iso()}


def finish(state: dict[str, Any]) -> dict[str, Any]:
    merge = state.get("merge") or {}
    table = rows(state)
    merged = [r["name"] for r in table if r["status"] == "merged"]
    kept = [r["name"] for r in table if r["status"] == "rollback failed"]
    reasons = [f"{n}: {why}" for n, why in blocking(state).items()]
    reasons += [r for r in (merge.get("failed") or {}).values() if r not in reasons]
    decision = state.get("decision") or {}
    if decision.get("approved") is False:
        reasons.append(f"rejected by {decision['by']}: {decision.get('comment') or 'no comment'}")
    canary_failed = [n for n, c in (state.get("canaries") or {}).items()
                     if c.get("status") != "completed"]
    reasons += [f"{n}: canary {state['canaries'][n].get('status')}: "
                f"{state['canaries'][n].get('reason')}" for n in canary_failed]
    if len(merged) == len(table):
        status = "failed" if canary_failed else "completed"
    else:
        status = "partial" if merged or kept else "failed"
    if decision.get("approved") is False:
        stage = "approval"
    elif merge.get("stage"):
        stage = merge["stage"]
    elif canary_failed and len(merged) == len(table):
        stage = "canary"
    else:
        stage = "merge"
    final = {"status": status, "mode": state.get("mode"), "atomic": state.get("atomic", True),
             "order": state["graph"]["order"], "bundles": state["graph"]["bundles"],
             "merged": merged, "repositories": table,
             "checks": {n: checks_of(state, n) for n in state["graph"]["order"]},
             "plan": merge.get("plan") or {}, "decision": decision or None,
             "followups": state.get("followups") or {}, "reasons": reasons}
    if status != "completed":
        final["stage"] = stage
    return {"final_result": final, "updated_at": now_iso()}

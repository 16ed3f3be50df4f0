"""``multi_repo_change``'s merge phase: every merge commit prepared under the repository locks,
then each target moved by compare-and-swap, one checkpointed step per repository, and the
moves undone the same way when the change cannot be completed.

* ``prepare`` holds the ``repo:<path>`` lock of every repository to merge for the workflow
  (:func:`~orchestrator.locks.held.hold_lock`: the workflow is the holder, so the locks
  survive steps, interrupts and crashes, and a resume keeps their fencing tokens), taken in
  sorted order, then has the ``cicd`` agent make each merge commit in the object store
  (``prepare_merge``: no ref moves). Gated: the commit whose future state was tested is the
  one merged, provided neither ``target`` nor ``source`` moved since (else the group fails:
  what was tested is not what would merge). ``merge["plan"]`` records ``{old, new}`` per
  repository before anything moves.
* ``move`` moves ONE repository per step (a checkpoint between repositories), in topological
  order: ``move_ref`` with the lock's fencing token, compare-and-swap from ``old`` to
  ``new``. The agent answers ``already`` when the branch is at ``new`` (the step ran before a
  crash), so a resumed step never merges twice. A branch at neither (someone pushed) fails
  the repository's group.
* ``rollback`` undoes ONE move per step, newest first, for every failed group: compare-and-
  swap from ``new`` back to ``old``. A branch that moved on since cannot be swapped back: the
  repository is reported ``rollback failed`` with where it is, never forced.
* ``release`` lets the locks go (every path after ``prepare`` passes through it).

Groups are what is merged all or none: with ``atomic`` every ready repository in one group;
without, each repository alone (a dependency cycle's bundle together).
"""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.state.schema import merge_updates, now_iso

from orchestrator.contracts.cicd import MOVE_REF, PREPARE_MERGE, MoveRef, PrepareMerge
from orchestrator.contracts.repos import repo_lock
from orchestrator.errors import ResourceLocked
from orchestrator.locks.held import hold_lock, release_lock

__all__ = ["LOCK_TTL", "after_move", "after_prepare", "move", "prepare", "release", "rollback"]

LOCK_TTL = 3600.0  # seconds the repo locks outlive a silent workflow (extended at each step)


def _changes(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in state["changes"]}


def _message(state: dict[str, Any], change: dict[str, Any]) -> str:
    decision = state.get("decision") or {}
    by = f" (approved by {decision['by']})" if decision.get("by") else ""
    return f"Merge {change['source']} into {change['target']}{by}"


async def _hold_all(names: list[str], changes: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Every repository's lock for the workflow, in sorted order: resource -> token."""
    tokens: dict[str, int] = {}
    for resource in sorted({repo_lock(changes[n]["repo"]) for n in names}):
        lease = await hold_lock(resource, ttl=LOCK_TTL)
        tokens[resource] = lease.token
    return tokens


async def prepare(state: dict[str, Any]) -> dict[str, Any]:
    merge = dict(state["merge"])
    changes, order = _changes(state), state["graph"]["order"]
    names = [n for n in order if n in set(merge["ready"])]
    try:
        await _hold_all(names, changes)
    except ResourceLocked as exc:
        for resource in sorted({repo_lock(changes[n]["repo"]) for n in names}):
            await release_lock(resource)
        reason = f"{exc}: another workflow is changing that repository; run again later"
        merge["failed"] = {str(i): reason for i in range(len(merge["groups"]))}
        merge["status"] = dict.fromkeys(names, "not merged")
        return {"merge": merge, "updated_at": now_iso()}
    plan: dict[str, Any] = {}
    failed: dict[str, str] = dict(merge.get("failed") or {})
    staged = state.get("staged") or {}
    updates: list[dict[str, Any]] = []
    for name in names:
        change = changes[name]
        call = await PREPARE_MERGE.call(
            PrepareMerge(repo=change["repo"], source=change["source"], target=change["target"],
                         message=_message(state, change)), subtask=f"prepare:{name}")
        updates.append(call.updates)
        result = call.result.model_dump(mode="json")
        group = _group_of(merge, name)
        if not result["prepared"]:
            failed.setdefault(group, f"{name}: {result['reason']}")
            continue
        tested = staged.get(name)
        commit = result["commit"]
        if state.get("mode") == "gated" and tested:
            if (tested.get("target_commit"), tested.get("source_commit")) != (
                    result["target_commit"], result["source_commit"]):
                failed.setdefault(group, (
                    f"{name}: {change['target']} or {change['source']} moved after the future "
                    "state was tested; run the change again to test what would merge"))
                continue
            commit = tested["commit"]  # merge exactly the commit whose tree was tested
        plan[name] = {"old": result["target_commit"], "new": commit,
                      "source_commit": result["source_commit"],
                      "already_merged": result["already_merged"]}
    merge.update(plan=plan, failed=failed, prepared_at=now_iso(), status={
        n: "not merged" if _group_of(merge, n) in failed else "pending" for n in names})
    return merge_updates(*updates, {"merge": merge, "updated_at": now_iso()})


def _group_of(merge: dict[str, Any], name: str) -> str:
    return next(str(i) for i, g in enumerate(merge["groups"]) if name in g)


def after_prepare(state: dict[str, Any]) -> Literal["move", "release"]:
    status = state["merge"]["status"]
    return "move" if any(s == "pending" for s in status.values()) else "release"


def _next_move(state: dict[str, Any]) -> str | None:
    merge = state["merge"]
    for name in state["graph"]["order"]:
        if merge["status"].get(name) == "pending" and _group_of(merge, name) not in merge["failed"]:
            return name
    return None


def _next_rollback(state: dict[str, Any]) -> str | None:
    merge = state["merge"]
    for name in reversed(state["graph"]["order"]):
        if merge["status"].get(name) == "moved" and _group_of(merge, name) in merge["failed"]:
            return name
    return None


async def _move_ref(state: dict[str, Any], name: str, new: str, old: str, what: str
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``move_ref`` of ``name``'s target from ``old`` to ``new`` with its lock's token."""
    change = _changes(state)[name]
    lease = await hold_lock(repo_lock(change["repo"]), ttl=LOCK_TTL)  # extends; same token
    call = await MOVE_REF.call(
        MoveRef(repo=change["repo"], ref=change["target"], new=new, old=old),
        fencing={lease.resource: lease.token}, subtask=f"{what}:{name}")
    return call.result.model_dump(mode="json"), call.updates


async def move(state: dict[str, Any]) -> dict[str, Any]:
    """Move the next repository's target (one per step)."""
    name = _next_move(state)
    if name is None:
        return {"updated_at": now_iso()}
    merge = {**state["merge"], "status": dict(state["merge"]["status"]),
             "moves": dict(state["merge"].get("moves") or {}),
             "failed": dict(state["merge"]["failed"])}
    plan = merge["plan"][name]
    result, updates = await _move_ref(state, name, plan["new"], plan["old"], "move")
    merge["moves"][name] = {**result, "at": now_iso()}
    if result["moved"]:
        merge["status"][name] = "moved"
    else:
        merge["status"][name] = "not merged"
        merge["failed"][_group_of(merge, name)] = f"{name}: {result['reason']}"
    status = "done" if result["moved"] else "failed"
    return merge_updates(updates, {"merge": merge, "subtask_status": {f"move:{name}": status}})


async def rollback(state: dict[str, Any]) -> dict[str, Any]:
    """Move the newest moved repository of a failed group back to its old commit."""
    name = _next_rollback(state)
    if name is None:
        return {"updated_at": now_iso()}
    merge = {**state["merge"], "status": dict(state["merge"]["status"]),
             "rollbacks": dict(state["merge"].get("rollbacks") or {})}
    plan = merge["plan"][name]
    result, updates = await _move_ref(state, name, plan["old"], plan["new"], "rollback")
    merge["rollbacks"][name] = {**result, "at": now_iso()}
    merge["status"][name] = "rolled back" if result["moved"] else "rollback failed"
    status = "done" if result["moved"] else "failed"
    return merge_updates(updates, {"merge": merge,
                                   "subtask_status": {f"rollback:{name}": status}})


def after_move(state: dict[str, Any]) -> Literal["move", "rollback", "release"]:
    """Undo a failed group's moves first, then move on; both done: release the locks."""
    if _next_rollback(state) is not None:
        return "rollback"
    return "move" if _next_move(state) is not None else "release"


async def release(state: dict[str, Any]) -> dict[str, Any]:
    changes = _changes(state)
    for resource in sorted({repo_lock(changes[n]["repo"]) for n in state["merge"]["ready"]}):
        await release_lock(resource)
    return {"merge": {**state["merge"], "released_at": now_iso()}, "updated_at": now_iso()}

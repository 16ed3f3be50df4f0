"""multi_repo_change is all or none: ``kill -9`` at every step boundary of the merge phase, and
a concurrent push to each repository in turn, always end with every target advanced or every
target at its original commit; a resume repeats no merge and no checkpointed test run.

The kill chain runs ``orchestrator run``/``resume`` in CLI subprocesses hosting the built-in
agents (they die with it). The process SIGKILLs itself (a hook installed before the CLI
starts, :data:`_CRASHING_CLI`) at the first of its triggers:

* ``stored``: right after the first test run's answer is stored (the gate's other runs are
  still going): the resume must take that answer from the store, not run the tests again;
* ``checkpoint``: right after a checkpoint is written, once the merge phase has begun (the
  ``merge`` channel exists): after decide, prepare, each move, each rollback, release...;
* ``moved``: inside ``move_ref``, right after the compare-and-swap moved a branch and before
  the answer is stored: the resumed step runs the request again and must find it done.

The hook logs each agent execution (``tests-done NAME``, ``prepare NAME``, ``move NAME
cas|already|refused``) to count what ran, and with ``PUSH_TO`` it commits to that
repository's ``main`` (a concurrent push) just before the workflow first tries to move it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from orchestrator.agents.cicd import move_ref as builtin_move_ref

from orchestrator.testing import stand_in

from .support.fixture_repo import git
from .support.multi_repo import NAMES, change_input, make_multi_repos, push, tip

_CRASHING_CLI = r"""
import json, os, signal, subprocess, sys
from pathlib import Path

at = set(filter(None, os.environ.get("MR_CRASH_AT", "").split(",")))
log_path = os.environ["MR_LOG"]

def log(line):
    with open(log_path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())

def die(point):
    log("killed " + point)
    os.kill(os.getpid(), signal.SIGKILL)

from orchestrator.state.checkpointer import FencedSaver
put = FencedSaver.aput

async def aput(self, config, checkpoint, *args, **kwargs):
    out = await put(self, config, checkpoint, *args, **kwargs)
    if "checkpoint" in at and "merge" in (checkpoint.get("channel_values") or {}):
        die("checkpoint")
    return out

FencedSaver.aput = aput

from orchestrator.bus.claims import Claims
flush = Claims._flush_responses

async def flush_responses(self, items):
    out = await flush(self, items)
    if "stored" in at and any(b"output_tail" in (i[6] if isinstance(i[6], bytes)
                                                  else str(i[6]).encode()) for i in items):
        die("stored")
    return out

Claims._flush_responses = flush_responses

from orchestrator.agents.cicd import agent
handlers = dict(agent.handlers)

def name(payload):
    return Path(payload["repo"]).name

async def run_tests(payload, ctx):
    out = await handlers["run_tests"](payload, ctx)
    log("tests-done " + name(payload))
    return out

async def prepare_merge(payload, ctx):
    log("prepare " + name(payload))
    return await handlers["prepare_merge"](payload, ctx)

async def move_ref(payload, ctx):
    repo = name(payload)
    marker = Path(log_path + ".pushed")
    if os.environ.get("PUSH_TO") == repo and not marker.exists():
        marker.write_text(repo)
        parent = subprocess.run(["git", "-C", payload["repo"], "rev-parse", "refs/heads/main"],
                                capture_output=True, text=True, check=True).stdout.strip()
        tree = parent + "^{tree}"
        commit = subprocess.run(["git", "-C", payload["repo"], "commit-tree", tree, "-p", parent,
                                 "-m", "a concurrent push"], capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run(["git", "-C", payload["repo"], "update-ref", "refs/heads/main", commit,
                        parent], check=True)
        log("pushed " + repo)
    out = await handlers["move_ref"](payload, ctx)
    kind = "already" if out["already"] else "cas" if out["moved"] else "refused"
    log(f"move {repo} {kind} {payload['new'][:12]}")
    if kind == "cas" and "moved" in at:
        die("moved")
    return out

agent.handlers.update(run_tests=run_tests, prepare_merge=prepare_merge, move_ref=move_ref)

from orchestrator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _crashing_cli(env: dict[str, str], at: str, log: Path, push_to: str | None, *args: str
                  ) -> subprocess.CompletedProcess[str]:
    extra = {"MR_CRASH_AT": at, "MR_LOG": str(log), **({"PUSH_TO": push_to} if push_to else {})}
    return subprocess.run([sys.executable, "-c", _CRASHING_CLI, *args], env={**env, **extra},
                          capture_output=True, text=True, timeout=300)


def _contains(repo: Path, commit: str) -> bool:
    done = subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", commit,
                           "refs/heads/main"], capture_output=True)
    return done.returncode == 0


def _assert_all_or_none(repos: dict[str, Path], before: dict[str, str],
                        plan: dict[str, Any], pushed: str | None) -> bool:
    """Every target advanced (holds its merge commit) or every one original (does not, and
    each unpushed one is exactly where it was); returns whether they advanced."""
    advanced = {n: _contains(repos[n], plan[n]["new"]) for n in NAMES}
    assert len(set(advanced.values())) == 1, f"a partial state: {advanced}"
    if not advanced["lib"]:
        assert {n: tip(repos[n]) for n in NAMES if n != pushed} == \
            {n: before[n] for n in NAMES if n != pushed}
    return advanced["lib"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("push_to", [None, "lib", "service", "app"])
async def test_kill_9_at_every_boundary_of_the_merge_phase_is_all_or_none(
        push_to, orchestrator_factory, service_env, tmp_path) -> None:
    orch = await orchestrator_factory(builtin=False)  # the database only: no agents here
    repos = make_multi_repos(tmp_path / "repos")
    before = {n: tip(r) for n, r in repos.items()}
    source = tmp_path / "change.json"
    source.write_text(json.dumps(change_input(repos, approval="auto")))
    thread = f"mr-crash-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "executions.log"
    kills: list[str] = []
    for segment in range(40):
        at = "stored,checkpoint,moved" if segment == 0 else "checkpoint,moved"
        args = (["run", "multi_repo_change", "--input", str(source), "--thread-id", thread]
                if segment == 0 else ["resume", thread])
        done = await asyncio.to_thread(_crashing_cli, service_env, at, log, push_to, *args,
                                       "--json")
        if done.returncode != -9:
            break
        kills.append(log.read_text().split("killed ")[-1].strip())
    else:
        pytest.fail(f"still not done after 40 segments: {kills}")
    result = json.loads(done.stdout)
    final = result["final_result"]
    lines = log.read_text().splitlines()
    print(f"\npush to {push_to}: {len(kills)} kills {Counter(kills)}; exit {done.returncode}")
    moves = [line.split()[1:3] for line in lines if line.startswith("move ")]
    # what ran: each test once (the one stored before the kill was never run again), each
    # merge commit prepared once in the gate and once under the locks, no branch moved twice
    assert Counter(line for line in lines if line.startswith("tests-done")) == \
        {f"tests-done {n}": 1 for n in NAMES}, lines
    assert kills[0] == "stored" and "checkpoint" in kills and (push_to == "lib" or "moved" in kills)
    assert Counter(line for line in lines if line.startswith("prepare")) == \
        {f"prepare {n}": 2 for n in NAMES}
    cas = Counter(n for n, kind in moves if kind == "cas")
    assert all(count <= 2 for count in cas.values())  # a move and perhaps its rollback
    state = (await orch.get(thread)).values
    plan = state["merge"]["plan"]
    advanced = _assert_all_or_none(repos, before, plan, push_to)
    if push_to is None:
        assert done.returncode == 0 and result["status"] == "completed", done.stderr
        assert advanced and final["merged"] == list(NAMES)
        assert cas == dict.fromkeys(NAMES, 1)
        assert all(tip(repos[n]) == plan[n]["new"] for n in NAMES)
    else:
        assert done.returncode == 1 and result["status"] == "failed", done.stderr
        assert not advanced and final["merged"] == []
        assert final["stage"] == "merge" and any("pushed to" in r for r in final["reasons"])
        upstream = list(NAMES)[:list(NAMES).index(push_to)]
        assert cas == dict.fromkeys(upstream, 2)  # moved, then moved back
        rows = {r["name"]: r for r in final["repositories"]}
        assert {n: rows[n]["status"] for n in upstream} == dict.fromkeys(upstream, "rolled back")
        assert all(rows[n]["rollback_commit"] == before[n][:12] for n in upstream)
        assert rows[push_to]["status"] == "not merged"
    # the locks were let go
    assert await orch.runtime.db.fetch(
        "SELECT resource FROM resource_locks WHERE namespace = %s AND holder IS NOT NULL",
        (orch.runtime.settings.namespace,)) == []


def _pushing_cicd(repos: dict[str, Path], target: str, when: str, pushes: list[str]):
    """The cicd agent, with a concurrent push to ``target`` just before (``when="before"``)
    or just after its branch is first moved."""
    async def move_ref(payload, ctx):
        first = Path(payload["repo"]).name == target and not pushes
        if first and when == "before":
            pushes.append(push(repos[target]))
        out = await builtin_move_ref(payload, ctx)
        if first and when == "after":
            pushes.append(push(repos[target]))
        return out

    return stand_in("cicd", {"move_ref": move_ref}, keep_builtin=True)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("target", NAMES)
async def test_a_concurrent_push_to_each_repository_is_all_or_none(
        target, when, orchestrator_factory, tmp_path) -> None:
    repos = make_multi_repos(tmp_path / "repos")
    before = {n: tip(r) for n, r in repos.items()}
    pushes: list[str] = []
    orch = await orchestrator_factory(stand_ins=[_pushing_cicd(repos, target, when, pushes)])
    result = await orch.run("multi_repo_change", change_input(repos, approval="auto"))
    assert len(pushes) == 1
    final = result.final_result
    advanced = _assert_all_or_none(repos, before, final["plan"], target)
    if when == "after":  # pushed on top of the merge: nothing lost, every target advanced
        assert advanced and result.status == "completed" and final["merged"] == list(NAMES)
        assert tip(repos[target]) == pushes[0]
    else:  # the move's compare-and-swap is refused: every moved one moved back
        assert not advanced and result.status == "failed", result
        assert tip(repos[target]) == pushes[0]  # the push is kept, never overwritten
        reason = next(r for r in final["reasons"] if r.startswith(f"{target}:"))
        assert "pushed to meanwhile" in reason
        for name in NAMES[:NAMES.index(target)]:
            assert git(repos[name], "status", "--porcelain") == ""  # work tree followed back


async def test_a_rollback_that_cannot_swap_back_is_reported(orchestrator_factory,
                                                            tmp_path) -> None:
    """lib moved, someone pushed on top of lib's merge, then app's move is refused: lib
    cannot be swapped back without losing that push; it is reported, never forced."""
    repos = make_multi_repos(tmp_path / "repos")
    before = {n: tip(r) for n, r in repos.items()}
    pushes: list[str] = []

    async def move_ref(payload, ctx):
        name = Path(payload["repo"]).name
        if name == "app" and not pushes:
            pushes.append(push(repos["lib"]))
            pushes.append(push(repos["app"]))
        return await builtin_move_ref(payload, ctx)

    orch = await orchestrator_factory(
        stand_ins=[stand_in("cicd", {"move_ref": move_ref}, keep_builtin=True)])
    result = await orch.run("multi_repo_change", change_input(repos, approval="auto"))
    final = result.final_result
    rows = {r["name"]: r for r in final["repositories"]}
    assert rows["lib"]["status"] == "rollback failed" and tip(repos["lib"]) == pushes[0]
    assert rows["service"]["status"] == "rolled back" and tip(repos["service"]) == before["service"]
    assert final["status"] == "partial" and result.status == "completed"

"""Exact ledger totals after ``kill -9`` and resume at every node boundary of a scripted plan
(issue 15, item 6).

``orchestrator run plan_execution`` runs in a CLI subprocess that hosts the built-in agents
(so they die with it); the developer writes each description-only task with its chat model,
the real ``langchain-openai`` client against the test model server. The process SIGKILLs
itself at a chosen point (a hook installed before the CLI starts, :data:`_CRASHING_CLI`): that
makes "right after the boundary" exact, where a kill from outside lands somewhere after it.
Then ``orchestrator resume T --json`` continues it, and may itself be killed at the next point.

One chain of segments covers every boundary: each segment dies at the first of its triggers,

* ``checkpoint``: right after a checkpoint is written (every node boundary; with
  ``max_parallel: 1`` one node per step), and, when a ``work`` node comes next,
* ``before_store``: as the developer's answer is about to be stored (the model was called
  and its row written): the resumed run re-executes the request, a second real call that
  the ledger must hold once more, under another execution;
* ``after_store`` (the segment after a ``before_store``): right after it is stored: the
  resumed run is answered from the response store, which must add nothing.

After every kill the ledger (the ``model_calls`` rows of the thread, and the thread's budget)
must hold exactly what the server answered: one row per answered request, the same tokens,
the cost of those tokens at the override prices, nothing still reserved.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support import socket_guard
from tests.support.openai_server import OpenAIServer, last_user_text
from tests.test_llm_e2e import _describe_repo, _writes_files

pytestmark = pytest.mark.slow

# ``orchestrator`` (argv as usual) that SIGKILLs itself at the first of the triggers named in
# LLM_CRASH_AT, after appending the trigger's name to LLM_CRASH_LOG.
_CRASHING_CLI = r"""
import os, signal, sys

at = set(filter(None, os.environ.get("LLM_CRASH_AT", "").split(",")))

def die(point):
    with open(os.environ["LLM_CRASH_LOG"], "a") as log:
        log.write(point + "\n")
        log.flush()
        os.fsync(log.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

from orchestrator.state.checkpointer import FencedSaver
put = FencedSaver.aput

async def aput(self, *args, **kwargs):
    out = await put(self, *args, **kwargs)
    if "checkpoint" in at:
        die("checkpoint")
    return out

FencedSaver.aput = aput

from orchestrator.bus.claims import Claims
flush = Claims._flush_responses

async def flush_responses(self, items):
    # (store key, request id, reply to, stream, agent type, ...): a developer's answer stored
    developer = any(item[0] and item[4] == "developer" for item in items)
    if developer and "before_store" in at:
        die("before_store")
    out = await flush(self, items)
    if developer and "after_store" in at:
        die("after_store")
    return out

Claims._flush_responses = flush_responses

from orchestrator.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: the next segment's triggers, after a segment killed at this point (None: the first run)
_NEXT = {None: "checkpoint,before_store", "checkpoint": "checkpoint,before_store",
         "before_store": "checkpoint,after_store", "after_store": "checkpoint"}
_PRICES = {"input": Decimal(3), "cached": Decimal("1.5"), "output": Decimal(15)}  # per Mtok


def _crashing_cli(env: dict[str, str], at: str, log: Path, *args: str
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CRASHING_CLI, *args],
                          env={**env, "LLM_CRASH_AT": at, "LLM_CRASH_LOG": str(log)},
                          capture_output=True, text=True, timeout=60)


def _served(server: OpenAIServer) -> list[tuple[str, int, int, int]]:
    """Each request the server answered: (the file it asked for, prompt, completion, cached
    tokens)."""
    out = []
    for e in list(server.exchanges):
        assert e.usage is not None and e.reply.status == 200
        asked = last_user_text(e.body)
        # (a task's prompt names the files it depends on too: the dependent's first)
        file = next(f for f in ("app/greet.py", "app/config.py", "app/__init__.py")
                    if f"`{f}`" in asked)
        out.append((file, e.usage["prompt_tokens"], e.usage["completion_tokens"],
                    e.usage["prompt_tokens_details"]["cached_tokens"]))
    return out


async def _assert_ledger_is_what_was_served(db: Any, ns: str, thread: str,
                                            server: OpenAIServer, where: str) -> list[dict]:
    rows = await db.fetch(
        "SELECT request_id, execution, sequence, input_tokens, cached_tokens, output_tokens, "
        "cost_usd FROM model_calls WHERE namespace = %s AND thread_id = %s", (ns, thread))
    served = _served(server)
    # one row per answered request, with its usage: none missing, none counted twice
    assert Counter((r["input_tokens"], r["output_tokens"], r["cached_tokens"]) for r in rows) \
        == Counter((p, c, k) for _, p, c, k in served), where
    cost = sum((Decimal(p - k) * _PRICES["input"] + Decimal(k) * _PRICES["cached"]
                + Decimal(c) * _PRICES["output"]) / 1_000_000 for _, p, c, k in served)
    assert sum((r["cost_usd"] for r in rows), Decimal(0)) == cost, where
    budget = await db.fetchone(
        "SELECT spent_usd, reserved_usd FROM model_budgets WHERE namespace = %s AND scope = %s",
        (ns, f"thread:{thread}"))
    if served:  # the thread's budget settled exactly the ledger's cost, holds nothing back
        assert (budget["spent_usd"], budget["reserved_usd"]) == (cost, 0), (where, budget)
    return rows


async def _checkpoints(db: Any, thread: str) -> int:
    return (await db.fetchone("SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s",
                              (thread,)))["n"]


async def test_kill_9_at_every_boundary_of_a_plan_keeps_the_ledger_exact(
        model_server: OpenAIServer, orchestrator_factory, service_env, tmp_path) -> None:
    orch = await orchestrator_factory(builtin=False)  # the database only: no agents here
    db, ns = orch.runtime.db, orch.runtime.settings.namespace
    spec = model_server.spec("crash")
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"{spec}: {{input_per_mtok: {_PRICES['input']}, "
                      f"cached_input_per_mtok: {_PRICES['cached']}, "
                      f"output_per_mtok: {_PRICES['output']}}}\n")
    env = socket_guard.subprocess_env({**service_env, **model_server.env(spec),
                                       "ORCHESTRATOR_PRICES_FILE": str(prices)})
    model_server.script = _writes_files
    plan = _describe_repo(tmp_path / "repo")
    plan["max_parallel"] = 1  # one node per step: each checkpoint is one node's boundary
    source = tmp_path / "input.json"
    source.write_text(json.dumps({"plan": plan, "budget_usd": 10.0, "budget_policy": "fail"}))
    thread = f"crash-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "crashes"

    killed: list[str | None] = [None]
    checkpoints = 0
    answered_before = 0
    for segment in range(40):
        at = _NEXT[killed[-1]]
        args = (["run", "plan_execution", "--input", str(source), "--thread-id", thread]
                if segment == 0 else ["resume", thread])
        done = await asyncio.to_thread(_crashing_cli, env, at, log, *args, "--json")
        if done.returncode != -9:
            break
        point = log.read_text().split()[-1]
        killed.append(point)
        where = f"segment {segment} killed at {point} ({at})"
        await _assert_ledger_is_what_was_served(db, ns, thread, model_server, where)
        answered = len(model_server.exchanges)
        # killed right after the one checkpoint it wrote, or inside a node before any
        count = await _checkpoints(db, thread)
        assert count == checkpoints + (point == "checkpoint"), (where, count, checkpoints)
        checkpoints = count
        if killed[-2] == "before_store":
            # the re-executed request called the model again (after_store: stored it now)
            assert answered == answered_before + 1, where
        if killed[-2] == "after_store":
            assert answered == answered_before, f"{where}: the stored answer called again"
        answered_before = answered
    else:
        pytest.fail(f"still not done after 40 segments: {killed}")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed", result
    assert (tmp_path / "repo" / "app" / "greet.py").exists()

    tasks = ("app/__init__.py", "app/config.py", "app/greet.py")
    # each task's request: killed before its answer was stored, executed again, stored,
    # then answered from the store: two real calls each, and the ledger holds both
    assert Counter(f for f, *_ in _served(model_server)) == dict.fromkeys(tasks, 2)
    assert killed.count("before_store") == killed.count("after_store") == 3, killed
    # every boundary of the run was a kill's: the last segment wrote none, or only its end
    assert killed.count("checkpoint") == checkpoints >= 12, killed
    assert await _checkpoints(db, thread) - checkpoints <= 1
    rows = await _assert_ledger_is_what_was_served(db, ns, thread, model_server, "the end")
    by_request = Counter(r["request_id"] for r in rows)
    assert sorted(by_request.values()) == [2, 2, 2]
    assert len({(r["request_id"], r["execution"]) for r in rows}) == 6

"""The console shows what learning decided (issue 17, item 6), in-process (httpx over ASGI)
against real PostgreSQL and Redis: the reason behind each learned runbook choice on a real
self_healing run's page (a simulated service whose runbook's second action is the one that
works: the next incident's page says it goes first, and why), and the ETA of a running
plan_execution run in the runs list, its row fragment and its page, gone once it is done."""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.service.app import ServerContext, create_app
from orchestrator.service.auth import TokenStore
from orchestrator.service.runs import RunService
from orchestrator.testing import stand_in
from tests.support.healing_sim import SimServices


class Browser:
    """A signed-in console session on an app of the test's orchestrator."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def page(self, path: str) -> str:
        answer = await self.client.get(path)
        assert answer.status_code == 200, answer.text[:2000]
        return answer.text


async def _signed_in(orch: Any, stack: list[httpx.AsyncClient]) -> Browser:
    async def ready() -> bool:
        return True

    app = create_app(ServerContext(orch, RunService(orch), None, ready))
    _, secret = await TokenStore(orch.runtime.db, orch.settings.namespace).create(
        "viewer", "viewer-token")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.9", 1)),
                               base_url="https://console.test")
    stack.append(client)
    answer = await client.post("/login", data={"token": secret, "next": "/console/"})
    assert answer.status_code == 303, answer.text
    return Browser(client)


@pytest.fixture
async def clients() -> AsyncIterator[list[httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []
    yield made
    for one in made:
        await one.aclose()


async def test_a_self_healing_page_shows_each_learned_choice_and_its_reason(
        orchestrator_factory, clients) -> None:
    sims = SimServices()
    web = sims.add("web", seed=1, p_b=1.0)  # B cures every incident; the runbook says A, B
    orch = await orchestrator_factory(stand_ins=[sims.agent()])
    browser = await _signed_in(orch, clients)

    web.incident()
    first = await orch.run("self_healing", sims.heal_input("web"))
    assert first.final_result["outcome"] == "healed", first.final_result
    page = await browser.page(f"/console/runs/{first.thread_id}")
    rows = re.findall(r'<tr data-attempt="(\d+)" data-action="([^"]*)">', page)
    assert rows == [("1", "A"), ("2", "B")]  # no history: the runbook's order, A then B

    web.incident()
    second = await orch.run("self_healing", sims.heal_input("web"))
    assert second.final_result["attempts"] == 1
    choices = (await orch.get(second.thread_id)).values["healing"]["choices"]
    page = await browser.page(f"/console/runs/{second.thread_id}")
    assert 'data-testid="choices"' in page
    assert re.findall(r'<tr data-attempt="(\d+)" data-action="([^"]*)">', page) == [("1", "B")]
    reasons = [html.unescape(r) for r in re.findall(
        r'<td data-testid="choice-reason">(.*?)</td>', page, re.S)]
    # the reason in the run's state, shown as it is: B first, from what the first run recorded
    assert reasons == [choices[0]["reason"]]
    assert reasons[0].startswith("`B`: 1 of 1 verified recoveries from `latency` on `web`")
    assert "B → A" in page
    # a plan's page has no choices table; a self_healing run never shows an ETA
    assert 'data-testid="run-eta"' not in page


def _developer(gate: asyncio.Event, started: asyncio.Event) -> Any:
    """A developer stand-in writing each task's content; the task ``slow`` waits for ``gate``."""

    async def develop(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        task = payload["task"]
        if task["id"] == "slow":
            started.set()
            await gate.wait()
        path = Path(payload["repo"]) / task["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(task["content"])
        return {"file": task["file"], "action": "wrote", "changed": True,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "detail": f"wrote {task['file']}", "attempt": payload.get("attempt") or 1}

    return stand_in("developer", {"develop": develop})


def _repo(path: Path) -> Path:
    """A git repository with one commit."""
    path.mkdir()
    (path / "README.md").write_text("a repository\n")
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "start"]):
        subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@e",
                        *argv], check=True, capture_output=True)
    return path


async def test_a_running_plan_shows_its_eta_in_the_list_and_on_its_page(
        orchestrator_factory, clients, tmp_path) -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    orch = await orchestrator_factory(stand_ins=[_developer(gate, started)])
    browser = await _signed_in(orch, clients)
    repo = _repo(tmp_path / "repo")
    plan = {"repo": str(repo), "integration_command": "python -c pass", "max_parallel": 1,
            "retry_delay": 0,
            "tasks": [{"id": "quick", "file": "app/quick.py", "kind": "new",
                       "content": "A = 1\n", "estimate": 1},
                      {"id": "slow", "file": "app/slow.py", "kind": "new",
                       "content": "B = 2\n", "estimate": 5, "depends_on": ["quick"]}]}
    running = asyncio.create_task(orch.run("plan_execution", {"plan": plan}, "eta-plan-1"))
    try:
        await asyncio.wait_for(started.wait(), 60)
        deadline = time.monotonic() + 30
        while True:  # the checkpoint after the slow task's dispatch carries the revised ETA
            eta = (await orch.get("eta-plan-1")).values.get("eta") or {}
            if eta.get("done") == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert eta.get("done") == 1 and eta.get("total") == 2, eta
        left = float(eta["seconds_left"])

        listing = await browser.page("/console/")
        row = re.search(r'<tr data-thread-id="eta-plan-1".*?</tr>', listing, re.S)
        assert row, listing[:3000]
        cell = re.search(r'<td data-testid="eta"><span class="eta" title="([^"]*)" '
                         r'data-seconds-left="([^"]+)" data-basis="([^"]+)">([^<]+) left</span>',
                         row.group(0))
        assert cell, row.group(0)
        assert float(cell.group(2)) == pytest.approx(max(left, 0.0))
        assert cell.group(3) == eta["basis"]
        assert "1 of 2 tasks done" in html.unescape(cell.group(1))
        fragment = await browser.page("/console/fragments/rows/eta-plan-1")
        assert 'data-testid="eta"><span class="eta"' in fragment

        page = await browser.page("/console/runs/eta-plan-1")
        shown = re.search(r'<span data-testid="run-eta" data-seconds-left="([^"]+)" '
                          r'data-basis="([^"]+)">ETA <strong>([^<]+)</strong> left', page)
        assert shown, page[:3000]
        assert float(shown.group(1)) == pytest.approx(max(left, 0.0))
        assert "1 of 2 tasks done" in page
    finally:
        gate.set()
    result = await asyncio.wait_for(running, 120)
    assert result.status == "completed", result
    # done: no ETA any more, in the list or on the page
    assert 'data-testid="run-eta"' not in await browser.page("/console/runs/eta-plan-1")
    row = re.search(r'<tr data-thread-id="eta-plan-1".*?</tr>',
                    await browser.page("/console/"), re.S)
    assert row and '<td data-testid="eta"></td>' in row.group(0)

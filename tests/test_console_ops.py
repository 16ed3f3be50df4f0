"""The console's operations pages in-process (httpx over ASGI, on the test's event loop) against
real PostgreSQL and Redis: canary rollouts run by an in-process runner with the real deployer
agent against a real HTTP service, agents, locks, both kinds of dead letters; the actions
(continue, roll back, replay, purge) with their roles, CSRF token and audit rows."""

from __future__ import annotations

import asyncio
import html
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.service import audit
from orchestrator.service.app import ServerContext, create_app
from orchestrator.service.auth import TokenStore
from orchestrator.service.queue import RunQueue
from orchestrator.service.runner import Runner
from orchestrator.service.runs import RunService
from orchestrator.testing import stand_in
from tests.support.commands import RECORD, lines, traffic_log_command
from tests.support.graphs_for_tests import approval, rollout

ROLES = ("viewer", "operator", "admin")
CLIENT = "127.0.0.9"  # the address the console's audit rows must name


async def _review(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"verdict": "looks fine", "change": payload["change"]}


@dataclass
class Console:
    orch: Any
    runs: RunService
    http: dict[str, httpx.AsyncClient]  # role -> a client signed in with that role's token
    csrf: dict[str, str]
    start_runner: Callable[[], Awaitable[Runner]]

    async def page(self, role: str, path: str, **headers: str) -> str:
        response = await self.http[role].get(path, headers=headers)
        assert response.status_code == 200, response.text
        return response.text

    async def post(self, role: str, path: str, data: dict[str, str] | None = None, *,
                   csrf: bool = True, **headers: str) -> httpx.Response:
        form = {**(data or {}), **({"csrf": self.csrf[role]} if csrf else {})}
        return await self.http[role].post(path, data=form, headers=headers)

    async def audit(self, target: str) -> list[Any]:
        return await audit.entries(self.orch.runtime.db, self.orch.settings.namespace,
                                   target=target)


@pytest.fixture
async def console(orchestrator_factory) -> AsyncIterator[Console]:
    orch = await orchestrator_factory(
        stand_ins=[stand_in("reviewer", {"review": _review})],
        workflows={"rollout": rollout, "approval": approval}, run_max_attempts=1)
    runs = RunService(orch)

    async def ready() -> bool:
        return True

    app = create_app(ServerContext(orch, runs, None, ready))
    store = TokenStore(orch.runtime.db, orch.settings.namespace)
    clients: dict[str, httpx.AsyncClient] = {}
    csrf: dict[str, str] = {}
    runners: list[Runner] = []

    async def start_runner() -> Runner:
        runner = Runner(runs, runs.queue, concurrency=2,
                        run_lease=orch.settings.run_lease, poll_interval=0.2)
        await runner.start()
        runners.append(runner)
        return runner

    try:
        for role in ROLES:
            secret = (await store.create(role, f"{role}-token"))[1]
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(CLIENT, 40000)),
                base_url="https://console.test")
            clients[role] = client
            signed = await client.post("/login", data={"token": secret, "next": "/console/locks"})
            assert signed.status_code == 303, signed.text
            body = await client.get("/console/locks")
            csrf[role] = re.search(r'<meta name="csrf-token" content="([^"]+)"', body.text)[1]
        yield Console(orch, runs, clients, csrf, start_runner)
    finally:
        for runner in runners:
            await runner.drain(0)
        for client in clients.values():
            await client.aclose()


def count_testid(text: str, name: str) -> int:
    return text.count(f'data-testid="{name}"')


async def settled(orch: Any, thread_id: str, statuses: set[str], timeout: float = 60.0) -> Any:
    """Poll the workflow row until its status is one of ``statuses`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        record = await orch.runtime.workflows.get(thread_id)
        if record.status in statuses:
            return record
        assert time.monotonic() < deadline, f"{thread_id} stayed {record.status}"
        await asyncio.sleep(0.05)


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something true (bounded)."""
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)
    return found


# -- canary --------------------------------------------------------------------------------------


def spec(name: str, service: Any, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {"name": name, "stage_seconds": 0.1, "samples": 2, "sample_interval": 0.05,
            "stages": [10, 25, 50], "pause_after": [25],
            "traffic": {"command": traffic_log_command(tmp_path / f"{name}.traffic")},
            "rollback_command": [sys.executable, "-c", RECORD,
                                 str(tmp_path / f"{name}.rollback"), "rolled back"],
            "health": {"kind": "http", "url": service.url + "/health"}, **overrides}


async def _at_the_gate(console: Console, name: str, service: Any, tmp_path: Path) -> str:
    """A rollout submitted to the service, run by the runner to its gate at 25%."""
    await console.start_runner()
    run = await console.runs.submit("rollout", {"deploy": spec(name, service, tmp_path)},
                                    f"canary-{name}", by="test")
    await settled(console.orch, run.thread_id, {"interrupted", "failed"})
    return run.thread_id


def _rollout(page: str, thread_id: str) -> str:
    start = page.index(f'data-testid="rollout" data-thread-id="{thread_id}"')
    return page[start:page.index("</article>", start)]


async def test_a_waiting_canary_shows_its_stages_samples_and_gate(console: Console,
                                                                  start_service,
                                                                  tmp_path: Path) -> None:
    service = await start_service()
    thread_id = await _at_the_gate(console, "web", service, tmp_path)
    page = await console.page("operator", "/console/canary")
    rollout_html = _rollout(page, thread_id)
    stages = re.findall(r'<li data-percent="(\d+)" data-state="(\w+)" data-verdict="(\w*)"',
                        rollout_html)
    assert stages == [("10", "passed", "healthy"), ("25", "current", "healthy"),
                      ("50", "pending", "")]
    assert 'data-status="running"' in rollout_html and 'data-percent="25"' in rollout_html
    assert count_testid(rollout_html, "health-chart") == 1
    samples = json.loads(html.unescape(re.search(
        r'<script type="application/json" data-testid="samples">(.*?)</script>',
        rollout_html, re.S)[1]))
    assert [s["percent"] for s in samples] == [10, 10, 25, 25]  # 2 samples per observation
    assert all(s["latency_ms"] is not None and s["status"] == "healthy" for s in samples)
    assert samples == sorted(samples, key=lambda s: s["at"])
    assert "web is healthy at 25%" in rollout_html
    assert count_testid(rollout_html, "continue") == 1 and count_testid(rollout_html, "rollback") == 1
    # the page loads the vendored uPlot and its script, nothing from elsewhere
    assert "/console/static/vendor/uPlot-1.6.32.iife.min.js" in page
    assert "/console/static/canary.js" in page and "http://" not in page
    assert "canary.observed" in page  # the events the page listens to
    # the fragment the page re-fetches is the same rollout
    fragment = await console.page("viewer", f"/console/canary/{thread_id}", **{"HX-Request": "true"})
    assert fragment.startswith('<article class="rollout"') and "<html" not in fragment
    assert (await console.http["viewer"].get("/console/canary/nope")).status_code == 422


async def test_continue_answers_the_gate_and_the_rollout_goes_on(console: Console, start_service,
                                                                 tmp_path: Path) -> None:
    service = await start_service()
    thread_id = await _at_the_gate(console, "shop", service, tmp_path)
    answer = f"/console/canary/{thread_id}/answer"
    # a viewer sees no buttons, and is refused anyway; an operator without the CSRF token too
    viewer_page = _rollout(await console.page("viewer", "/console/canary"), thread_id)
    assert count_testid(viewer_page, "gate") == 1 and count_testid(viewer_page, "continue") == 0
    assert count_testid(viewer_page, "rollback") == 0
    assert (await console.post("viewer", answer, {"action": "continue"})).status_code == 403
    assert (await console.post("operator", answer, {"action": "continue"},
                               csrf=False)).status_code == 403
    assert (await console.post("operator", answer, {"action": "ship it"})).status_code == 422
    assert await console.audit(thread_id) == []
    assert (await console.orch.runtime.workflows.get(thread_id)).status == "interrupted"
    assert lines(tmp_path / "shop.traffic") == ["10", "25"]

    done = await console.post("operator", answer, {"action": "continue", "reason": "flat"})
    assert done.status_code == 303 and done.headers["location"] == "/console/canary"
    record = await settled(console.orch, thread_id, {"completed", "failed"})
    assert record.status == "completed"
    details = await console.orch.get(thread_id)
    canary = details.values["canary"]
    assert canary["status"] == "completed"
    assert [(c["percent"], c["by"], c["reason"]) for c in canary["continued"]] == [
        (25, "operator-token", "flat")]
    assert lines(tmp_path / "shop.traffic") == ["10", "25", "50"]
    [entry] = await console.audit(thread_id)
    assert (entry.action, entry.actor, entry.source) == ("run.resume", "operator-token", CLIENT)
    assert entry.detail["value"] == {"action": "continue", "by": "operator-token",
                                     "reason": "flat"}
    final = _rollout(await console.page("operator", "/console/canary"), thread_id)
    assert 'data-status="completed"' in final and count_testid(final, "gate") == 0
    assert re.findall(r'data-state="(\w+)"', final) == ["passed", "passed", "passed"]


async def test_roll_back_answers_the_gate_and_the_rollout_rolls_back(console: Console,
                                                                     start_service,
                                                                     tmp_path: Path) -> None:
    service = await start_service()
    thread_id = await _at_the_gate(console, "api", service, tmp_path)
    # as htmx sends it: the answer is the rollout's fragment again, with no buttons left
    fragment = await console.post("operator", f"/console/canary/{thread_id}/answer",
                                  {"action": "rollback", "reason": "errors in the logs"},
                                  **{"HX-Request": "true"})
    assert fragment.status_code == 200, fragment.text
    assert fragment.text.startswith('<article class="rollout"')
    assert count_testid(fragment.text, "continue") == 0 and count_testid(fragment.text, "rollback") == 0
    record = await settled(console.orch, thread_id, {"completed", "failed"})
    assert record.status == "failed"
    canary = (await console.orch.get(thread_id)).values["canary"]
    assert canary["status"] == "rolled_back" and canary["rollback"]["mode"] == "manual"
    assert canary["reason"] == "rolled back by operator-token: errors in the logs"
    assert lines(tmp_path / "api.traffic") == ["10", "25", "0"]
    assert (tmp_path / "api.rollback").read_text() == "rolled back\n"
    shown = _rollout(await console.page("viewer", "/console/canary"), thread_id)
    assert 'data-status="rolled_back"' in shown and 'data-percent="0"' in shown
    assert re.findall(r'data-state="(\w+)"', shown) == ["passed", "failed", "pending"]
    assert "rolled back by operator-token" in shown
    [entry] = await console.audit(thread_id)
    assert entry.action == "run.resume" and entry.detail["value"]["action"] == "rollback"


# -- agents --------------------------------------------------------------------------------------


async def test_agents_show_instances_backlog_in_flight_breaker_and_latency(
        console: Console) -> None:
    rt = console.orch.runtime
    # three requests for an agent type no worker serves; one taken by a consumer that never
    # answers: backlog 3, 1 of them in flight
    await rt.bus.ensure_group("slowpoke")
    for _ in range(3):
        request = rt.bus.new_reply_stream_request(target="slowpoke", request_type="x",
                                                  payload={})
        await rt.redis.xadd(rt.bus.keys.requests("slowpoke", "normal"),
                            {b"m": request.model_dump_json().encode()})
    assert len(await rt.bus.read_requests("slowpoke", "ghost", count=1, block_ms=100)) == 1
    for _ in range(console.orch.settings.breaker_min_calls):
        await rt.breaker.record("slowpoke", ok=False)
    assert await rt.breaker.state("slowpoke") == "open"
    # answers of the window: 1..100 ms (p50 50, p95 95), one of them failed; one outside it
    for ms in range(1, 101):
        await rt.bus.publish("agent.answered", {"target": "reviewer", "ms": ms,
                                                "status": "success" if ms > 1 else "error"})
    page = await console.page("viewer", "/console/agents")
    reviewer = page[page.index('data-agent-type="reviewer"'):]
    reviewer = reviewer[:reviewer.index("</tr>")]
    assert re.search(r'data-testid="instances">1/1<', reviewer)
    assert re.search(r'data-testid="p50">50<', reviewer)
    assert re.search(r'data-testid="p95">95<', reviewer)
    assert re.search(r'data-testid="calls">100 <small>\(1 failed\)', reviewer)
    assert 'data-state="closed"' in reviewer
    slow = page[page.index('data-agent-type="slowpoke"'):]
    slow = slow[:slow.index("</tr>")]
    assert re.search(r'data-testid="backlog">3<', slow)
    assert re.search(r'data-testid="in-flight">1<', slow)
    assert 'data-state="open"' in slow and re.search(r'data-testid="instances">0/0<', slow)
    assert re.search(r'data-agent-id="reviewer@[^"]+" data-live="true"', page)
    # the fragment htmx re-fetches on agent events: the tables alone
    fragment = await console.page("viewer", "/console/agents", **{"HX-Request": "true"})
    assert fragment.startswith('<table class="grid" data-testid="agents">')
    assert "sse:agent.answered" in page and "/events?types=agent.answered" in page


# -- locks ---------------------------------------------------------------------------------------


async def test_locks_show_holder_token_expiry_and_waiters(console: Console) -> None:
    locks = console.orch.runtime.locks
    held = await locks.hold("deploy:web", "workflow:t-1", ttl=60)

    async def contender() -> int:
        async with locks.acquire("deploy:web", "worker-b", ttl=30, wait_timeout=20) as lease:
            return lease.token

    waiting = asyncio.create_task(contender())
    try:
        async def row() -> str | None:
            page = await console.page("viewer", "/console/locks")
            found = page[page.index('data-resource="deploy:web"'):]
            found = found[:found.index("</tr>")]
            return found if 'data-waiter="worker-b"' in found else None

        shown = await until(row, "the waiter on the locks page")
        assert re.search(r'data-testid="holder">workflow:t-1<', shown)
        assert re.search(rf'data-testid="token">{held.token}<', shown)
        assert held.expires_at.isoformat() in shown
        await locks.release_held("deploy:web", "workflow:t-1")
        token = await asyncio.wait_for(waiting, 20)
    finally:
        waiting.cancel()

    async def taken() -> str | None:
        page = await console.page("viewer", "/console/locks")
        if "worker-b" not in page:  # released by the contender already: nothing held
            return page
        found = page[page.index('data-resource="deploy:web"'):]
        return found if re.search(r'data-testid="holder">worker-b<', found) else None

    # the contender held it (token+1) and let go; its waiter entry went with its acquisition
    assert token == held.token + 1
    page = await until(taken, "the lock's next holder")
    assert 'data-waiter="worker-b"' not in page


# -- dead letters --------------------------------------------------------------------------------


async def _dead_run(console: Console, thread_id: str) -> int:
    """A start run that failed its only attempt (run_max_attempts=1): a dead run."""
    await console.runs.submit("approval", {"change": thread_id}, thread_id, by="test")
    queue = RunQueue(console.orch.runtime.db, console.orch.settings)
    claimed = await queue.claim("test-runner")
    assert claimed is not None and claimed.thread_id == thread_id
    dead = await queue.fail(claimed, "test-runner", {"code": "internal_error", "message": "boom"})
    assert dead is not None and dead.status == "dead", dead
    return claimed.run_id


async def _dead_requests(console: Console) -> tuple[Any, list[str]]:
    """A readable request and a garbage entry of agent type ``archivist`` (no worker serves
    it), dead-lettered."""
    bus = console.orch.runtime.bus
    stream = bus.keys.requests("archivist", "normal")
    await bus.ensure_group("archivist")
    good = bus.new_reply_stream_request(target="archivist", request_type="list_modules",
                                        payload={"package_dir": "/nowhere"})
    await console.orch.runtime.redis.xadd(stream, {b"m": good.model_dump_json().encode()})
    await console.orch.runtime.redis.xadd(stream, {b"m": b"garbage"})
    for delivery in await bus.read_requests("archivist", "ghost", count=10, block_ms=100):
        await bus.dead_letter(delivery, agent_type="archivist", reason="undeliverable")
    letters = await bus.dead_letters("archivist")
    return good, [d["id"] for d in letters]


async def test_dead_letters_of_both_kinds_show_with_buttons_by_role(console: Console) -> None:
    run_id = await _dead_run(console, "dl-run-1")
    good, (good_id, garbage_id) = await _dead_requests(console)
    admin = await console.page("admin", "/console/dead-letters")
    assert f'data-testid="dead-run" data-run-id="{run_id}" data-thread-id="dl-run-1"' in admin
    assert f'data-agent-type="archivist" data-entry-id="{good_id}"' in admin
    assert f'data-agent-type="archivist" data-entry-id="{garbage_id}"' in admin
    assert "archivist.list_modules" in admin and good.request_id in admin and "boom" in admin
    assert count_testid(admin, "inspect") == 3
    assert count_testid(admin, "replay") == 3 and count_testid(admin, "purge") == 3
    operator = await console.page("operator", "/console/dead-letters")
    assert count_testid(operator, "replay") == 3 and count_testid(operator, "purge") == 0
    viewer = await console.page("viewer", "/console/dead-letters")
    assert count_testid(viewer, "replay") == 0 and count_testid(viewer, "purge") == 0
    assert count_testid(viewer, "dead-run") == 1 and count_testid(viewer, "dead-request") == 2

    # refused: a viewer's replay, an operator's purge, a POST without the CSRF token
    for role, path, csrf in [
        ("viewer", f"/console/dead-letters/runs/{run_id}/replay", True),
        ("viewer", f"/console/dead-letters/requests/archivist/{good_id}/replay", True),
        ("operator", f"/console/dead-letters/runs/{run_id}/purge", True),
        ("operator", f"/console/dead-letters/requests/archivist/{good_id}/purge", True),
        ("admin", f"/console/dead-letters/runs/{run_id}/purge", False),
    ]:
        refused = await console.post(role, path, csrf=csrf)
        assert refused.status_code == 403, (role, path, refused.text)
    assert len(await console.runs.dead_letters()) == 1
    assert len(await console.orch.runtime.bus.dead_letters("archivist")) == 2
    for target in (str(run_id), f"archivist/{good_id}"):
        assert await console.audit(target) == []


async def test_replay_and_purge_work_and_are_audited(console: Console) -> None:
    bus = console.orch.runtime.bus
    first, second = await _dead_run(console, "dl-run-a"), await _dead_run(console, "dl-run-b")
    good, (good_id, garbage_id) = await _dead_requests(console)

    replayed = await console.post("operator", f"/console/dead-letters/runs/{first}/replay")
    assert replayed.status_code == 303 and replayed.headers["location"] == "/console/dead-letters"
    queued = await console.runs.runs(thread_id="dl-run-a", status="queued")
    assert [r.kind for r in queued] == ["start"]

    # as htmx posts it: the answer is the tables again, without the purged run
    purged = await console.post("admin", f"/console/dead-letters/runs/{second}/purge",
                                **{"HX-Request": "true"})
    assert purged.status_code == 200 and "<html" not in purged.text
    assert f'data-run-id="{second}"' not in purged.text
    assert [r.run_id for r in await console.runs.dead_letters()] == [first]  # kept, replayed

    again = await console.post("operator", f"/console/dead-letters/requests/archivist/{good_id}/replay")
    assert again.status_code == 303
    assert [d["id"] for d in await bus.dead_letters("archivist")] == [garbage_id]
    pending = await console.orch.runtime.redis.xrange(bus.keys.requests("archivist", "normal"))
    assert [json.loads(f[b"m"])["request_id"] for _, f in pending] == [good.request_id]
    unreadable = await console.post("operator",
                                    f"/console/dead-letters/requests/archivist/{garbage_id}/replay")
    assert unreadable.status_code == 422 and "purge it instead" in unreadable.text
    gone = await console.post("admin", f"/console/dead-letters/requests/archivist/{garbage_id}/purge")
    assert gone.status_code == 303 and await bus.dead_letters("archivist") == []
    missing = await console.post("admin", f"/console/dead-letters/requests/archivist/{garbage_id}/purge")
    assert missing.status_code == 404

    rows = {(e.target, e.action, e.actor, e.source)
            for t in (str(first), str(second), f"archivist/{good_id}", f"archivist/{garbage_id}")
            for e in await console.audit(t)}
    assert rows == {
        (str(first), "dead_letter.replay", "operator-token", CLIENT),
        (str(second), "dead_letter.purge", "admin-token", CLIENT),
        (f"archivist/{good_id}", "dead_request.replay", "operator-token", CLIENT),
        (f"archivist/{garbage_id}", "dead_request.purge", "admin-token", CLIENT),
    }
    page = await console.page("viewer", "/console/dead-letters")
    assert count_testid(page, "dead-request") == 0 and count_testid(page, "dead-run") == 1

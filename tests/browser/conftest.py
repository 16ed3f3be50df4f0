"""Fixtures of the browser tests: a real ``orchestrator serve`` hosting the built-in agents, an
operator and a viewer token, Chromium signed in at ``/login``, and a guard that no request
leaves loopback.

* ``console``: ``orchestrator serve --local-agents`` (the built-in workflows and agents, so
  ``pr_deployment``, its canary and ``parallel_docs`` really run) on a free loopback port, on
  the test's database, Redis and namespace; killed by pid at teardown. It carries the tokens,
  an API client and the test's own Orchestrator (hosting no agents: the server's do the work).
* ``open_page``: ``await open_page("operator")`` is a page in a fresh browser context, signed
  in through the sign-in form (so the session cookie is the one the console set).
* every context records each request it makes and aborts any that is not for 127.0.0.1 or
  localhost; the test fails at teardown when there was one (and the loopback test asserts it
  directly).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from orchestrator.bus.wire import verified
from orchestrator.facade import Orchestrator
from orchestrator.messages import Event
from orchestrator.service.auth import TokenStore
from tests.browser.chromium import in_ci, launch_args, missing_reason, sign_in
from tests.support.processes import ORCHESTRATOR_CMD
from tests.support.serve_process import ROOT, ServiceHandle, _ready, _wait
from tests.support.service_app import free_port

SCREENSHOTS = ROOT / "docs" / "console"
LOOPBACK = {"127.0.0.1", "localhost"}
#: schemes that never touch the network
_LOCAL_SCHEMES = {"data", "blob", "about"}


@pytest.fixture(scope="session")
def chromium_ready() -> None:
    reason = missing_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true and the browser tests cannot run: {reason}")
    pytest.skip(f"browser tests skipped: {reason}")


@pytest.fixture(scope="session")
async def browser(chromium_ready: None) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(**launch_args())
        yield launched
        await launched.close()


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Console:
    """A running ``orchestrator serve`` with its console, and what tests need around it."""

    url: str
    serve: ServiceHandle
    orch: Orchestrator
    operator: str
    viewer: str
    tmp_path: Path
    http: httpx.AsyncClient = field(repr=False)

    async def api(self, method: str, path: str, *, token: str | None = None,
                  **kwargs: Any) -> httpx.Response:
        return await self.http.request(
            method, self.url + path,
            headers={"Authorization": f"Bearer {token or self.operator}"}, **kwargs)

    async def submit(self, workflow: str, input: dict[str, Any], **extra: Any) -> str:
        response = await self.api("POST", "/runs", json={"workflow": workflow, "input": input,
                                                         **extra})
        assert response.status_code == 202, response.text
        return response.json()["thread_id"]

    async def details(self, thread_id: str) -> dict[str, Any]:
        response = await self.api("GET", f"/runs/{thread_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_until(self, thread_id: str, check: Callable[[dict[str, Any]], bool],
                         what: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll ``GET /runs/{thread_id}`` until ``check(details)``; the details."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.details(thread_id)
            if check(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{thread_id}: {what} not within {timeout} s; last: "
                                     f"{found['record']}\n{self.serve.output()[-3000:]}")
            await asyncio.sleep(0.1)

    async def wait_for_question(self, thread_id: str, kind: str,
                                timeout: float = 60.0) -> dict[str, Any]:
        found = await self.wait_until(
            thread_id, lambda d: (d["question"] or {}).get("kind") == kind,
            f"a {kind} question", timeout)
        return found["question"]

    async def wait_for_status(self, thread_id: str, *statuses: str,
                              timeout: float = 60.0) -> dict[str, Any]:
        return await self.wait_until(thread_id, lambda d: d["record"]["status"] in statuses,
                                     f"status in {statuses}", timeout)

    async def thread_events(self, thread_id: str) -> list[tuple[str, Event]]:
        """Every event of the stream about ``thread_id``: (stream entry id, event), oldest
        first, read from Redis directly (what the SSE ids are)."""
        bus = self.orch.runtime.bus
        found = []
        for entry_id, fields in await bus.redis.xrange(bus.keys.events):
            event = Event.model_validate_json(verified(fields, bus.secret))
            if event.data.get("thread_id") == thread_id:
                found.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                              event))
        return found


def start_console_server(env: dict[str, str], tmp_path: Path, *,
                         timeout: float = 30.0) -> ServiceHandle:
    """``orchestrator serve --local-agents`` with the built-in workflows and agents on a free
    loopback port; returns once ``/readyz`` says ready."""
    port = free_port()
    log_file = tmp_path / f"serve-{port}.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [*ORCHESTRATOR_CMD, "serve", "--port", str(port), "--concurrency", "4",
             "--local-agents"],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    handle = ServiceHandle(process, log_file, url)
    _wait(handle, lambda: _ready(url), "orchestrator serve", timeout)
    return handle


@pytest.fixture
async def console(service_env: dict[str, str], tmp_path: Path,
                  orchestrator_factory: Callable[..., Awaitable[Orchestrator]]
                  ) -> AsyncIterator[Console]:
    orch = await orchestrator_factory(builtin=False)  # the server's agents do the work
    store = TokenStore(orch.runtime.db, orch.settings.namespace)
    _, operator = await store.create("operator", "alice")
    _, viewer = await store.create("viewer", "victor")
    env = {**service_env, "ORCHESTRATOR_DRAIN_GRACE": "0.2"}
    serve = await asyncio.to_thread(start_console_server, env, tmp_path)
    http = httpx.AsyncClient(trust_env=False, timeout=10)
    try:
        yield Console(serve.url or "", serve, orch, operator, viewer, tmp_path, http)
    finally:
        await http.aclose()
        await asyncio.to_thread(serve.kill)


# -- the browser ---------------------------------------------------------------------------------


def leaves_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in _LOCAL_SCHEMES:
        return False
    return parts.hostname not in LOOPBACK


@dataclass
class LoopbackGuard:
    """Every URL the test's browser contexts requested; those that were not loopback."""

    requested: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    async def watch(self, context: Any) -> None:
        context.on("request", lambda request: self.requested.append(request.url))

        async def refuse(route: Any) -> None:
            self.refused.append(route.request.url)
            await route.abort("blockedbyclient")

        await context.route(leaves_loopback, refuse)

    def outside(self) -> list[str]:
        return sorted({u for u in self.requested if leaves_loopback(u)} | set(self.refused))


@pytest.fixture
def loopback_guard() -> LoopbackGuard:
    return LoopbackGuard()


OpenPage = Callable[..., Awaitable[Any]]


@pytest.fixture
async def open_page(browser: Any, console: Console,
                    loopback_guard: LoopbackGuard) -> AsyncIterator[OpenPage]:
    """``await open_page("operator" | "viewer", base_url=None)``: a signed-in page in a
    context of its own (its own cookie jar)."""
    contexts: list[Any] = []

    async def open_one(role: str = "operator", base_url: str | None = None) -> Any:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(15_000)
        contexts.append(context)
        await loopback_guard.watch(context)
        page = await context.new_page()
        await sign_in(page, base_url or console.url, getattr(console, role))
        return page

    yield open_one
    for context in contexts:
        await context.close()
    outside = loopback_guard.outside()
    assert not outside, f"the console requested URLs off loopback: {outside}"


async def screenshot(page: Any, name: str) -> None:
    """Save ``docs/console/<name>.png`` when ``ORCHESTRATOR_SCREENSHOTS=1`` (the README's
    pictures, taken from a real run; off by default so test runs leave the tree alone)."""
    if os.environ.get("ORCHESTRATOR_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)

"""The console's sign-in, runs list, run page and inbox in-process (httpx over ASGI, on the
test's event loop) against real PostgreSQL and Redis, with a Runner in the process doing the
queued runs: cookies and their flags, sessions ending with their token, every page's names of
CONSOLE.md on real runs, answers that resume the run and record who, refusals (malformed
answer, viewer, missing CSRF token), no external URL."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from orchestrator.service import audit
from orchestrator.service.app import ServerContext, create_app
from orchestrator.service.auth import TokenStore
from orchestrator.service.console.session import COOKIE
from orchestrator.service.runner import Runner
from orchestrator.service.runs import RunService
from orchestrator.testing import stand_in
from tests.support.graphs_for_tests import approval

ROLES = ("viewer", "operator", "admin")


async def _review(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"verdict": "looks fine", "change": payload["change"]}


@dataclass
class Console:
    orch: Any
    runs: RunService
    app: Any
    tokens: dict[str, str]  # role -> secret; the token of role R is named "R-token"
    clients: list[httpx.AsyncClient]

    def client(self) -> httpx.AsyncClient:
        """A browser without a session (https: the cookie is Secure)."""
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.9", 40000))
        one = httpx.AsyncClient(transport=transport, base_url="https://console.test")
        self.clients.append(one)
        return one

    async def signed_in(self, role: str) -> tuple[httpx.AsyncClient, str]:
        """A browser signed in with the token of ``role``, and its CSRF token."""
        browser = self.client()
        answer = await browser.post("/login", data={"token": self.tokens[role], "next": "/console/"})
        assert answer.status_code == 303, answer.text
        page = await browser.get("/console/")
        assert page.status_code == 200, page.text
        match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
        assert match, page.text[:500]
        return browser, match.group(1)

    async def interrupted(self, thread_id: str, change: str = "v2") -> None:
        """An approval workflow at its question (run by the facade, as a runner would)."""
        result = await self.orch.run("approval", {"change": change}, thread_id)
        assert result.status == "interrupted", result


@pytest.fixture
async def console(orchestrator_factory) -> AsyncIterator[Console]:
    orch = await orchestrator_factory(stand_ins=[stand_in("reviewer", {"review": _review})],
                                      builtin=False, workflows={"approval": approval},
                                      run_max_attempts=1)

    async def ready() -> bool:
        return True

    runs = RunService(orch)
    app = create_app(ServerContext(orch, runs, None, ready))
    store = TokenStore(orch.runtime.db, orch.settings.namespace)
    tokens = {role: (await store.create(role, f"{role}-token"))[1] for role in ROLES}
    made = Console(orch, runs, app, tokens, [])
    try:
        yield made
    finally:
        for one in made.clients:
            await one.aclose()


@pytest.fixture
async def runner(console) -> AsyncIterator[Runner]:
    one = Runner(console.runs, console.runs.queue,
                 concurrency=2, run_lease=console.orch.settings.run_lease, poll_interval=0.2)
    await one.start()
    yield one
    await one.drain(0)


async def settled(orch: Any, thread_id: str, statuses: set[str], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        record = await orch.runtime.workflows.get(thread_id)
        if record.status in statuses:
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"{thread_id} stayed {record.status}, expected one of {statuses}")
        await asyncio.sleep(0.1)


def ids_in(html: str) -> set[str]:
    return set(re.findall(r'data-testid="([^"]+)"', html))


def assert_no_external_url(html: str) -> None:
    """Every src/href/action of the page is relative to this server."""
    for attr, url in re.findall(r'\b(src|href|action|hx-get|hx-post)\s*=\s*["\']([^"\']*)', html):
        assert not re.match(r"^\s*(https?:)?//", url, re.I), f"{attr}={url}"
    assert "http://" not in html and "https://" not in html


# -- sign-in and sessions ------------------------------------------------------------------------


async def test_sign_in_sets_a_secure_http_only_strict_cookie_and_sign_out_ends_it(console):
    browser = console.client()
    form = await browser.get("/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    assert_no_external_url(form.text)
    answer = await browser.post("/login", data={"token": console.tokens["viewer"],
                                                "next": "/console/inbox"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/inbox"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags, cookie
    session_id = cookie.split(";")[0].split("=", 1)[1]
    # only the id's hash is stored, never the id or the token
    stored = await console.orch.runtime.db.fetch("SELECT * FROM console_sessions")
    assert len(stored) == 1 and stored[0]["token_name"] == "viewer-token"
    assert session_id not in str(stored) and console.tokens["viewer"] not in str(stored)

    page = await browser.get("/console/")
    assert page.status_code == 200 and 'data-testid="me"' in page.text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    assert (await browser.post("/logout", data={})).status_code == 403  # no CSRF token
    out = await browser.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert await console.orch.runtime.db.fetch("SELECT * FROM console_sessions") == []
    # the old cookie is worth nothing now, even replayed
    replay = console.client()
    replay.cookies.set(COOKIE, session_id, domain="console.test")
    gone = await replay.get("/console/")
    assert gone.status_code == 303 and gone.headers["location"].startswith("/login")


async def test_a_bad_token_is_refused_and_pages_send_to_the_sign_in(console):
    browser = console.client()
    refused = await browser.post("/login", data={"token": "orch_not-a-token"})
    assert refused.status_code == 401 and 'data-testid="login-error"' in refused.text
    assert COOKIE not in refused.headers.get("set-cookie", "")
    for path in ("/console/", "/console/inbox", "/console/runs/x"):
        answer = await browser.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=")
    assert (await browser.get("/", follow_redirects=False)).headers["location"] == "/console/"
    # a sign-in may only send to this server's paths
    good = await console.client().post("/login", data={"token": console.tokens["viewer"],
                                                       "next": "//evil.example/x"})
    assert good.headers["location"] == "/console/"


async def test_revoking_the_token_ends_its_sessions(console):
    browser, _ = await console.signed_in("operator")
    assert (await browser.get("/runs")).status_code == 200  # the API takes the cookie too
    await TokenStore(console.orch.runtime.db, console.orch.settings.namespace).revoke(
        "operator-token")
    assert (await browser.get("/console/")).status_code == 303
    assert (await browser.get("/runs")).status_code == 401
    # a new token given the revoked one's name does not revive the old session
    await TokenStore(console.orch.runtime.db, console.orch.settings.namespace).create(
        "operator", "operator-token")
    assert (await browser.get("/console/")).status_code == 303


async def test_api_posts_with_the_cookie_need_the_csrf_header(console):
    await console.interrupted("api-csrf")
    browser, csrf = await console.signed_in("operator")
    post = ("POST", "/runs/api-csrf/resume")
    body = {"value": {"approve": True, "by": "operator-token"}}
    refused = await browser.request(*post, json=body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    assert await console.runs.runs(thread_id="api-csrf") == []
    taken = await browser.request(*post, json=body, headers={"X-CSRF-Token": csrf})
    assert taken.status_code == 202, taken.text


# -- pages ---------------------------------------------------------------------------------------


async def test_every_page_shows_a_real_run_with_the_console_names(console, runner):
    await console.interrupted("pages-1")
    browser, _ = await console.signed_in("operator")

    runs = await browser.get("/console/")
    assert runs.status_code == 200
    assert {"runs", "status", "step", "waited", "filter-status", "filter-workflow",
            "search"} <= ids_in(runs.text)
    assert 'data-thread-id="pages-1"' in runs.text
    assert_no_external_url(runs.text)
    row = await browser.get("/console/fragments/rows/pages-1", headers={"HX-Request": "true"})
    assert row.status_code == 200 and row.text.lstrip().startswith("<tr")
    assert 'data-status="interrupted"' in row.text and 'data-attention="waiting"' in row.text

    run = await browser.get("/console/runs/pages-1")
    assert run.status_code == 200, run.text
    assert {"graph", "timeline", "state", "checkpoints", "errors", "result",
            "run-status"} <= ids_in(run.text)
    states = dict(re.findall(r'data-node="([^"]+)" data-state="([^"]+)"', run.text))
    assert states == {"__start__": "done", "review": "done", "approve": "waiting",
                      "finish": "pending", "__end__": "pending"}
    assert 'data-status="interrupted"' in run.text
    assert "looks fine" in run.text  # the state holds the review
    assert_no_external_url(run.text)
    # a checkpoint's state, and a checkpoint the run does not have
    first = re.search(r'data-checkpoint-id="([^"]+)"', run.text).group(1)
    at = await browser.get(f"/console/runs/pages-1?checkpoint={first}")
    assert at.status_code == 200 and 'class="chosen"' in at.text
    assert (await browser.get("/console/runs/pages-1?checkpoint=nope")).status_code == 422
    assert (await browser.get("/console/runs/no-such-run")).status_code == 404

    inbox = await browser.get("/console/inbox")
    assert inbox.status_code == 200
    form = re.search(r'<form data-testid="question" data-thread-id="pages-1".*?</form>',
                     inbox.text, re.S)
    assert form, inbox.text
    assert {"approve", "reject", "answer-error"} <= ids_in(form.group(0))
    assert "approve v2?" in form.group(0)
    assert_no_external_url(inbox.text)

    # answer, the runner finishes it, and the pages say so
    approve = re.search(r'data-testid="approve"', form.group(0))
    assert approve
    await console.orch.name_checkpoint("pages-1", "before-answer")
    answered = await browser.post("/console/inbox/pages-1/answer",
                                  data={"csrf": _csrf(inbox.text), "approve": "true"},
                                  headers={"HX-Request": "true"})
    assert answered.status_code == 202 and 'data-testid="answered"' in answered.text
    record = await settled(console.orch, "pages-1", {"completed", "failed"})
    assert record.status == "completed" and record.result["by"] == "operator-token"
    done = await browser.get("/console/runs/pages-1")
    states = dict(re.findall(r'data-node="([^"]+)" data-state="([^"]+)"', done.text))
    assert states == {"__start__": "done", "review": "done", "approve": "done",
                      "finish": "done", "__end__": "done"}
    assert 'data-status="completed"' in done.text and "operator-token" in done.text
    assert 'data-testid="restore"' in done.text  # the named checkpoint, for an operator
    timeline = re.search(r'data-testid="timeline".*?</ol>', done.text, re.S).group(0)
    assert "workflow.completed" in timeline and "data-event-id=" in timeline


def _csrf(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


async def test_the_inbox_answer_resumes_the_run_and_records_who(console, runner):
    await console.interrupted("inbox-1")
    browser, csrf = await console.signed_in("operator")
    answered = await browser.post("/console/inbox/inbox-1/answer",
                                  data={"csrf": csrf, "approve": "false"})
    assert answered.status_code == 303 and answered.headers["location"] == "/console/inbox"
    record = await settled(console.orch, "inbox-1", {"completed", "failed"})
    assert record.result == {"status": "failed", "approved": False, "by": "operator-token"}
    [queued] = [r for r in await console.runs.runs(thread_id="inbox-1") if r.kind == "resume"]
    assert queued.requested_by == "operator-token"
    [entry] = [e for e in await audit.entries(console.orch.runtime.db,
                                              console.orch.settings.namespace, target="inbox-1")]
    assert (entry.actor, entry.action, entry.source) == ("operator-token", "run.resume",
                                                          "127.0.0.9")
    assert entry.detail["value"] == {"by": "operator-token", "approve": False}
    # the question is gone from the inbox
    assert 'data-thread-id="inbox-1"' not in (await browser.get("/console/inbox")).text


async def test_a_malformed_answer_shows_the_error_and_changes_nothing(console):
    await console.interrupted("bad-1")
    browser, csrf = await console.signed_in("operator")
    for value in ('"yes"', "not json"):
        refused = await browser.post("/console/inbox/bad-1/answer",
                                     data={"csrf": csrf, "approve": value},
                                     headers={"HX-Request": "true"})
        assert refused.status_code == 422, refused.text
        error = re.search(r'data-testid="answer-error"[^>]*>([^<]+)<', refused.text)
        assert error and "approve" in error.group(1), refused.text
    assert await console.runs.runs(thread_id="bad-1") == []
    assert (await console.orch.runtime.workflows.get("bad-1")).status == "interrupted"
    assert await audit.entries(console.orch.runtime.db, console.orch.settings.namespace,
                               target="bad-1") == []


async def test_a_viewer_sees_no_action_buttons_and_is_refused_anyway(console):
    await console.interrupted("viewer-1")
    await console.orch.name_checkpoint("viewer-1", "mark")
    browser, csrf = await console.signed_in("viewer")
    inbox = await browser.get("/console/inbox")
    assert 'data-thread-id="viewer-1"' in inbox.text
    assert not {"approve", "reject", "continue", "rollback"} & ids_in(inbox.text)
    run = await browser.get("/console/runs/viewer-1")
    assert "restore" not in ids_in(run.text) and "mark" in run.text
    refused = await browser.post("/console/inbox/viewer-1/answer",
                                 data={"csrf": csrf, "approve": "true"})
    assert refused.status_code == 403
    restore = await browser.post("/console/runs/viewer-1/restore",
                                 data={"csrf": csrf, "name": "mark"})
    assert restore.status_code == 403
    assert await console.runs.runs(thread_id="viewer-1") == []


async def test_a_console_post_without_the_csrf_token_is_refused(console):
    await console.interrupted("csrf-1")
    browser, csrf = await console.signed_in("operator")
    for data in ({"approve": "true"}, {"approve": "true", "csrf": csrf[:-2] + "xx"}):
        refused = await browser.post("/console/inbox/csrf-1/answer", data=data)
        assert refused.status_code == 403, data
    assert await console.runs.runs(thread_id="csrf-1") == []
    # the header htmx sends does as well as the field
    taken = await browser.post("/console/inbox/csrf-1/answer", data={"approve": "true"},
                               headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert taken.status_code == 202, taken.text


async def test_the_runs_list_puts_attention_first_filters_and_pages(console):
    db, ns = console.orch.runtime.db, console.orch.settings.namespace
    await console.interrupted("att-waiting")
    for i in range(55):
        await console.runs.submit("approval", {"change": f"c{i}"}, f"plain-{i:02d}")
    # a dead run and a run being retried, as the queue leaves them
    await console.runs.submit("approval", {"change": "d"}, "att-dead")
    await console.runs.submit("approval", {"change": "r"}, "att-retry")
    await db.execute("UPDATE runs SET status = 'dead', attempts = 1 WHERE thread_id = 'att-dead'")
    await db.execute("UPDATE runs SET attempts = 1 WHERE thread_id = 'att-retry'")
    await db.execute("UPDATE workflows SET status = 'failed' WHERE thread_id = 'plain-07'")
    browser, _ = await console.signed_in("viewer")

    first = (await browser.get("/console/")).text
    order = re.findall(r'<tr data-thread-id="([^"]+)"', first)
    assert order[:4] == ["att-waiting", "att-dead", "plain-07", "att-retry"], order[:6]
    assert len(order) == 50 and 'data-testid="next"' in first and "58 workflows" in first
    second = (await browser.get("/console/?page=2")).text
    assert len(re.findall(r"<tr data-thread-id=", second)) == 8

    attention = (await browser.get("/console/?status=attention")).text
    assert set(re.findall(r'<tr data-thread-id="([^"]+)"', attention)) == {
        "att-waiting", "att-dead", "plain-07", "att-retry"}
    searched = (await browser.get("/console/fragments/runs?q=plain-1",
                                  headers={"HX-Request": "true"})).text
    assert set(re.findall(r'<tr data-thread-id="([^"]+)"', searched)) == {
        f"plain-{i}" for i in range(10, 20)}
    by_text = (await browser.get("/console/?q=c42")).text  # in the input
    assert re.findall(r'<tr data-thread-id="([^"]+)"', by_text) == ["plain-42"]
    none = (await browser.get("/console/?workflow=other")).text
    assert "No workflow matches these filters" in none
    assert (await browser.get("/console/?status=bogus")).status_code == 422
    assert ns  # the rows above are this namespace's only

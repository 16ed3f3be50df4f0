"""The console end to end in Chromium, against real runs of the built-in workflows on a real
``orchestrator serve`` (issue 14, item 4): an approval clicked in the inbox merges; a canary
gate continued from the inbox completes and one rolled back from the canary page rolls back;
a running ``parallel_docs`` updates its page without a reload; a cut event stream catches up
with no gap and no duplicate; a viewer sees no buttons and its forged action is refused; and
no request leaves loopback. With ``ORCHESTRATOR_SCREENSHOTS=1`` the approval test also saves
the README's pictures (docs/console/)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.contracts.docs import output_lock
from tests.browser.conftest import Console, LoopbackGuard, OpenPage, screenshot
from tests.browser.proxy import CuttableProxy
from tests.support.commands import RECORD, lines, traffic_log_command
from tests.support.fixture_repo import git

pytestmark = pytest.mark.slow


def question_form(page: Any, thread_id: str) -> Any:
    return page.locator(f"form[data-testid=question][data-thread-id='{thread_id}']")


def canary_spec(name: str, service: Any, tmp_path: Path) -> dict[str, Any]:
    """Two quick stages, a human gate after the first (as tests/test_canary.py's spec)."""
    return {
        "name": name, "stages": [10, 100], "pause_after": [10], "stage_seconds": 0.1,
        "samples": 2, "sample_interval": 0.05,
        "traffic": {"command": traffic_log_command(tmp_path / f"{name}.traffic")},
        "rollback_command": [sys.executable, "-c", RECORD, str(tmp_path / f"{name}.rollback"),
                             "rolled back"],
        "health": {"kind": "http", "url": service.url + "/health"},
    }


async def node_state(page: Any, node: str) -> str | None:
    return await page.locator(f"[data-testid=graph] [data-node='{node}']").first.get_attribute(
        "data-state")


async def wait_for_node(page: Any, node: str, state: str, timeout: float = 30.0) -> None:
    await page.wait_for_selector(f"[data-testid=graph] [data-node='{node}'][data-state={state}]",
                                 timeout=timeout * 1000)


def entry_order(entry_id: str) -> tuple[int, int]:
    """A Redis stream entry id (``<ms>-<seq>``) as something that sorts like the stream."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def timeline_ids(page: Any) -> list[str]:
    return await page.eval_on_selector_all(
        "[data-testid=timeline] li[data-event-id]",
        "items => items.map(li => li.getAttribute('data-event-id'))")


@pytest.fixture
async def docs_output_held(console: Console, tmp_path: Path) -> AsyncIterator[Any]:
    """The output lock of a parallel_docs run, held by the test: the run documents every module
    and then waits in ``write_docs`` until the test lets go (``await release()``), so a page
    can be open while it runs. Released at teardown in any case."""
    output = tmp_path / "docs-out"
    resource = output_lock(output)
    holder = console.orch.runtime.process_id
    await console.orch.runtime.locks.hold(resource, holder, ttl=120)
    held = True

    async def release() -> None:
        nonlocal held
        if held:
            held = False
            await console.orch.runtime.locks.release_held(resource, holder)

    release.output = output  # type: ignore[attr-defined]
    yield release
    await release()


async def test_approve_in_the_inbox_resumes_the_run_and_merges(
        console: Console, open_page: OpenPage, fixture_repo: Path) -> None:
    before = git(fixture_repo, "rev-parse", "main")
    thread_id = await console.submit("pr_deployment",
                                     {"repo": str(fixture_repo), "source": "feature-pass"})
    failing = await console.submit("pr_deployment",
                                   {"repo": str(fixture_repo), "source": "feature-fail"})
    await console.wait_for_question(thread_id, "approval")
    await console.wait_for_status(failing, "failed")

    page = await open_page("operator")
    await page.goto(f"{console.url}/console/")
    rows = page.locator("table[data-testid=runs] tr[data-thread-id]")
    await rows.nth(1).wait_for()
    # needs attention first: the waiting and the failed run, whatever their age
    assert {await rows.nth(i).get_attribute("data-thread-id") for i in (0, 1)} == \
        {thread_id, failing}
    row = page.locator(f"table[data-testid=runs] tr[data-thread-id='{thread_id}']")
    await row.wait_for()
    await screenshot(page, "runs")
    await page.goto(f"{console.url}/console/inbox")
    form = question_form(page, thread_id)
    await form.wait_for()
    await screenshot(page, "inbox")
    await form.locator("[data-testid=approve]").click()

    done = await console.wait_for_status(thread_id, "completed", "failed", timeout=60)
    assert done["record"]["status"] == "completed", done["result"]
    assert done["result"]["decision"]["by"] == "alice"  # the operator token's name
    merged = git(fixture_repo, "rev-parse", "main")
    parents = git(fixture_repo, "rev-list", "--parents", "-n", "1", merged).split()[1:]
    assert parents == [before, git(fixture_repo, "rev-parse", "feature-pass")]
    assert git(fixture_repo, "log", "-1", "--format=%s") == \
        "Merge feature-pass into main (approved by alice)"
    await form.wait_for(state="detached")  # answered: gone from the inbox, without a reload

    await page.goto(f"{console.url}/console/runs/{thread_id}")
    await page.locator("[data-testid=run-status]", has_text="completed").wait_for()
    await page.locator("[data-testid=timeline] li[data-type='workflow.completed']").wait_for()
    await screenshot(page, "run")


async def test_continue_at_a_canary_gate_from_the_inbox_completes_the_rollout(
        console: Console, open_page: OpenPage, fixture_repo: Path, start_service: Any,
        tmp_path: Path) -> None:
    service = await start_service()
    spec = canary_spec("web", service, tmp_path)
    thread_id = await console.submit("pr_deployment", {
        "repo": str(fixture_repo), "source": "feature-pass", "approval": "auto",
        "deploy": spec})
    await console.wait_for_question(thread_id, "canary_gate")

    page = await open_page("operator")
    await page.goto(f"{console.url}/console/inbox")
    form = question_form(page, thread_id)
    await form.locator("[data-testid=continue]").click()

    done = await console.wait_for_status(thread_id, "completed", "failed", timeout=60)
    assert done["record"]["status"] == "completed", done["result"]
    assert done["result"]["canary"]["status"] == "completed"
    canary = done["values"]["canary"]  # the rollout's whole record, with who continued
    assert canary["percent"] == 100
    assert [(c["percent"], c["by"]) for c in canary["continued"]] == [(10, "alice")]
    assert lines(tmp_path / "web.traffic") == ["10", "100"]
    assert not (tmp_path / "web.rollback").exists()
    await form.wait_for(state="detached")


async def test_roll_back_at_a_canary_gate_from_the_canary_page_rolls_back(
        console: Console, open_page: OpenPage, fixture_repo: Path, start_service: Any,
        tmp_path: Path) -> None:
    service = await start_service()
    thread_id = await console.submit("pr_deployment", {
        "repo": str(fixture_repo), "source": "feature-pass", "approval": "auto",
        "deploy": canary_spec("api", service, tmp_path)})
    await console.wait_for_question(thread_id, "canary_gate")

    page = await open_page("operator")
    await page.goto(f"{console.url}/console/canary")
    rollout = page.locator(f"[data-testid=rollout][data-thread-id='{thread_id}']")
    await rollout.locator("[data-testid=stages]").wait_for()
    await rollout.locator("[data-testid=health-chart]").wait_for()
    await rollout.locator("[data-testid=rollback]").click()

    done = await console.wait_for_status(thread_id, "completed", "failed", timeout=60)
    assert done["record"]["status"] == "failed"
    canary = done["values"]["canary"]
    assert canary["status"] == "rolled_back" and canary["rollback"]["mode"] == "manual"
    assert canary["manual_rollback"]["by"] == "alice"
    assert done["result"]["reasons"] == [canary["reason"]]
    assert canary["reason"].startswith("rolled back by alice")
    assert lines(tmp_path / "api.traffic") == ["10", "0"]
    assert (tmp_path / "api.rollback").read_text() == "rolled back\n"


async def test_a_running_parallel_docs_updates_its_page_without_a_reload(
        console: Console, open_page: OpenPage, fixture_package: Path,
        docs_output_held: Any) -> None:
    thread_id = await console.submit("parallel_docs", {
        "package": str(fixture_package), "output": str(docs_output_held.output)})
    page = await open_page("operator")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url)
            if frame == page.main_frame else None)
    await page.goto(f"{console.url}/console/runs/{thread_id}")
    await page.evaluate("() => { window.__sameDocument = 'marked'; }")
    navigations.clear()

    await wait_for_node(page, "document_module", "done")  # live, while write_docs waits
    assert await node_state(page, "write_docs") != "done"
    before = await timeline_ids(page)
    assert not (await console.details(thread_id))["result"]

    await docs_output_held()  # write_docs gets the lock: the run finishes
    await wait_for_node(page, "write_docs", "done")
    await page.locator("[data-testid=run-status]", has_text="completed").wait_for()
    after = await timeline_ids(page)

    assert await page.evaluate("() => window.__sameDocument") == "marked"
    assert navigations == []  # the same document all along: no reload, no navigation
    assert len(after) > len(before) and after[:len(before)] == before
    assert (await console.details(thread_id))["record"]["status"] == "completed"


async def test_a_cut_event_stream_catches_up_with_no_gap_and_no_duplicate(
        console: Console, open_page: OpenPage, fixture_package: Path,
        docs_output_held: Any) -> None:
    proxy = await CuttableProxy(int(console.url.rsplit(":", 1)[1])).start()
    try:
        thread_id = await console.submit("parallel_docs", {
            "package": str(fixture_package), "output": str(docs_output_held.output)})
        page = await open_page("operator", base_url=proxy.url)
        await page.goto(f"{proxy.url}/console/runs/{thread_id}")
        await wait_for_node(page, "document_module", "done")
        shown_before = await timeline_ids(page)
        assert shown_before

        proxy.cut()  # the stream drops mid-run; reconnects are refused for now
        await docs_output_held()
        await console.wait_for_status(thread_id, "completed", timeout=30)
        last_seen = max(map(entry_order, shown_before))
        missed = [eid for eid, _ in await console.thread_events(thread_id)
                  if entry_order(eid) > last_seen]
        assert missed, "nothing happened while the stream was down"
        proxy.restore()

        await page.locator("[data-testid=run-status]", has_text="completed").wait_for()
        await wait_for_node(page, "write_docs", "done")
        stream = await console.thread_events(thread_id)
        deadline = time.monotonic() + 10
        while True:  # the catch-up may land in a few fragments
            shown = await timeline_ids(page)
            shown_types = {e.type for eid, e in stream if eid in set(shown)}
            expected = [eid for eid, e in stream if e.type in shown_types]
            if set(expected) <= set(shown) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

        duplicates = [eid for eid, n in Counter(shown).items() if n > 1]
        assert not duplicates, f"timeline entries shown twice: {duplicates}"
        assert set(shown) <= {eid for eid, _ in stream}, "entries not of this run's events"
        gap = sorted(set(expected) - set(shown))
        assert not gap, f"events of the run missing from the timeline: {gap}"
        assert set(missed) & set(shown), "nothing of what happened during the cut is shown"
    finally:
        await proxy.close()


async def test_a_viewer_sees_no_action_buttons_and_its_forged_action_is_refused(
        console: Console, open_page: OpenPage, fixture_repo: Path) -> None:
    thread_id = await console.submit("pr_deployment",
                                     {"repo": str(fixture_repo), "source": "feature-pass"})
    await console.wait_for_question(thread_id, "approval")
    operator = await open_page("operator")
    await operator.goto(f"{console.url}/console/inbox")
    op_form = question_form(operator, thread_id)
    await op_form.locator("[data-testid=approve]").wait_for()
    action = await op_form.evaluate("form => form.action")

    viewer = await open_page("viewer")
    for path in ("/console/", "/console/inbox", f"/console/runs/{thread_id}",
                 "/console/canary", "/console/dead-letters"):
        await viewer.goto(f"{console.url}{path}")
        for testid in ("approve", "reject", "continue", "rollback", "restore", "replay",
                       "purge"):
            assert await viewer.locator(f"[data-testid={testid}]").count() == 0, (path, testid)

    # the viewer's own session, with its own CSRF token: the server still says no
    await viewer.goto(f"{console.url}/console/inbox")
    forged = await viewer.evaluate(
        """async (action) => {
            const csrf = JSON.parse(document.body.getAttribute('hx-headers') || '{}');
            const body = new URLSearchParams({approve: 'true', comment: 'forged', csrf:
                                              csrf['X-CSRF-Token'] || ''});
            const sent = await fetch(action, {method: 'POST', body, headers: csrf,
                                              credentials: 'same-origin'});
            return {status: sent.status, text: await sent.text(), csrf};
        }""", action)
    assert forged["csrf"].get("X-CSRF-Token"), "the viewer's page carries its CSRF token"
    assert forged["status"] == 403, forged
    assert "viewer" in forged["text"] and "CSRF" not in forged["text"], forged["text"][:500]
    assert (await console.details(thread_id))["question"]["kind"] == "approval"  # unanswered
    assert git(fixture_repo, "log", "-1", "--format=%s") != \
        "Merge feature-pass into main (approved by victor)"


async def test_no_request_leaves_loopback(console: Console, open_page: OpenPage,
                                          loopback_guard: LoopbackGuard,
                                          fixture_package: Path) -> None:
    thread_id = await console.submit("parallel_docs", {
        "package": str(fixture_package), "output": str(console.tmp_path / "docs-out")})
    await console.wait_for_status(thread_id, "completed", "failed", timeout=30)
    page = await open_page("operator")
    for path in ("/console/", f"/console/runs/{thread_id}", "/console/inbox",
                 "/console/canary", "/console/agents", "/console/locks",
                 "/console/dead-letters"):
        response = await page.goto(f"{console.url}{path}")
        assert response is not None and response.status == 200, path
        await page.wait_for_load_state("load")
    assert loopback_guard.requested, "the guard saw no request at all"
    assert any("/console/static/" in url for url in loopback_guard.requested)
    assert loopback_guard.outside() == []

    # the guard itself: a request off loopback is seen and never sent
    sent = await page.evaluate("""() => fetch('http://192.0.2.1/probe.js', {mode: 'no-cors'})
                                         .then(() => 'sent', () => 'refused')""")
    assert sent == "refused" and loopback_guard.outside() == ["http://192.0.2.1/probe.js"]
    loopback_guard.requested.clear()
    loopback_guard.refused.clear()

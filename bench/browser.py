"""Browser benchmark (issue 14, item 5): how long after a step finishes its row shows in the
console, measured in Chromium.

One ``orchestrator serve`` process (tests/support/serve_process.py: ``svcflow``, whose steps
each make one ``tally`` call sleeping ``STEP_SECONDS``, so steps finish at a steady rate)
runs a workflow while a signed-in Chromium page shows its run page. In the page a
MutationObserver notes, for each timeline entry ``li[data-event-id]`` that appears, when it
did (``performance.timeOrigin + performance.now()``, the wall clock in ms); the delay of a
``step.finished`` event is that minus the event's own timestamp (``at``, set on the server
when the step finished; one machine, one clock).

Baseline, in the same run and the same page: an EventSource of the benchmark's own on
``/events?thread=...`` noting when each raw ``step.finished`` message arrives, i.e. the
event path without the page's fragment re-fetch and swap. Target: p95 ≤ 250 ms on loopback.

    python -m bench.browser [--quick]      (or python -m bench --only browser)

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset), a
namespace of its own, and the system's Chromium (``ORCHESTRATOR_TEST_CHROMIUM`` or
``chromium`` on PATH); without one it reports why and measures nothing.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from orchestrator.facade import Orchestrator
from orchestrator.service.auth import TokenStore
from orchestrator.service.runs import RunService

from .common import Result, percentile, run_standalone, settings, subprocess_env

__all__ = ["run"]

_TARGET = "step finished → its timeline row in the browser's DOM, p95 ≤ 250 ms (loopback)"
STEP_SECONDS = 0.2

#: installed before the page's own scripts: note when each timeline entry first appears
_OBSERVE = """
window.__domSeen = {};
new MutationObserver((records) => {
  const now = performance.timeOrigin + performance.now();
  for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeType !== 1) continue;
      const found = node.matches('li[data-event-id]') ? [node]
        : node.querySelectorAll('li[data-event-id]');
      for (const li of found) {
        const id = li.getAttribute('data-event-id');
        if (!(id in window.__domSeen)) window.__domSeen[id] = now;
      }
    }
  }
}).observe(document, {childList: true, subtree: true});
"""

#: the baseline: the raw SSE messages, as they arrive in the same page
_LISTEN = """
(url) => new Promise((resolve) => {
  window.__sseSeen = {};
  const source = new EventSource(url);
  source.addEventListener('step.finished', (message) => {
    const now = performance.timeOrigin + performance.now();
    const event = JSON.parse(message.data);
    window.__sseSeen[message.lastEventId] = {arrived: now, at: Date.parse(event.at)};
  });
  source.onopen = () => resolve(true);
  window.__baseline = source;
})
"""


async def _measure(orch: Orchestrator, url: str, token: str, steps: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from tests.browser.chromium import launch_args, sign_in

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**launch_args())
        try:
            page = await browser.new_page()
            await sign_in(page, url, token)
            await page.add_init_script(_OBSERVE)
            thread_id = f"bench-browser-{uuid.uuid4().hex[:8]}"
            # the run page exists from the submission on (the workflow's row is written with
            # its run); the steps finished before the page listened are not counted
            await RunService(orch).submit("svcflow", {"seconds": STEP_SECONDS, "steps": steps},
                                          thread_id)
            await page.goto(f"{url}/console/runs/{thread_id}")
            await page.evaluate(_LISTEN, f"{url}/events?thread={thread_id}&types=step.finished")
            opened = time.time() * 1000
            deadline = time.monotonic() + steps * STEP_SECONDS * 3 + 30
            while (await orch.get(thread_id)).record.status not in ("completed", "failed"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{thread_id} did not finish")
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the last fragments land
            dom = await page.evaluate("() => window.__domSeen")
            sse = await page.evaluate("() => window.__sseSeen")
        finally:
            await browser.close()
    # events of steps that finished after the baseline listened, seen by both
    pairs = [(dom[eid] - seen["at"], seen["arrived"] - seen["at"])
             for eid, seen in sse.items() if seen["at"] > opened and eid in dom]
    return {"pairs": pairs, "events": len(sse), "rows": len(dom)}


def _figures(delays_ms: list[float]) -> dict[str, float]:
    return {"n": len(delays_ms), "p50_ms": round(percentile(delays_ms, 50), 1),
            "p95_ms": round(percentile(delays_ms, 95), 1),
            "max_ms": round(max(delays_ms), 1) if delays_ms else float("nan")}


async def run(quick: bool = False) -> list[Result]:
    from tests.browser.chromium import missing_reason
    from tests.support.serve_process import start_serve, svcflow

    reason = missing_reason()
    if reason is not None:
        return [Result("step_to_browser_row", _TARGET, None, notes=f"not measured: {reason}")]
    steps = 15 if quick else 60
    base = settings("browser")
    async with Orchestrator(base, agents=[], workflows={"svcflow": svcflow}) as orch:
        _, token = await TokenStore(orch.runtime.db, base.namespace).create("viewer", "bench")
        with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
            serve = await asyncio.to_thread(start_serve, subprocess_env(base), Path(tmp),
                                            Path(tmp) / "tally-events.txt", local_agents=True)
            try:
                measured = await _measure(orch, serve.url or "", token, steps)
            finally:
                await asyncio.to_thread(serve.kill)
        await _cleanup(orch, base.namespace)
    pairs = measured["pairs"]
    dom, sse = _figures([d for d, _ in pairs]), _figures([s for _, s in pairs])
    return [Result(
        "step_to_browser_row", _TARGET, bool(pairs) and dom["p95_ms"] <= 250,
        {"dom_row": dom, "step_seconds": STEP_SECONDS, "steps": steps,
         "sse_events": measured["events"], "rows_seen": measured["rows"]},
        {"raw_sse_message": sse},
        round(dom["p95_ms"] / sse["p95_ms"], 2) if pairs and sse["p95_ms"] > 0 else None,
        notes="delay from step.finished's server timestamp to the timeline entry added in the "
              "run page's DOM (MutationObserver) in Chromium; baseline = the same event's raw "
              "SSE message arriving in the same page; ratio = DOM p95 / baseline p95")]


async def _cleanup(orch: Orchestrator, namespace: str) -> None:
    db = orch.runtime.db
    for statement in (
        "DELETE FROM runs WHERE namespace = %s",
        "DELETE FROM api_tokens WHERE namespace = %s",
        "DELETE FROM console_sessions WHERE namespace = %s",
    ):
        await db.execute(statement, (namespace,))
    for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
        await db.execute(f"DELETE FROM {table} WHERE thread_id IN "
                         "(SELECT thread_id FROM workflows WHERE namespace = %s)", (namespace,))
    await db.execute("DELETE FROM workflows WHERE namespace = %s", (namespace,))


def main() -> int:
    return run_standalone("browser", __doc__, run)


if __name__ == "__main__":
    sys.exit(main())

"""The console's runs list with 10,000 workflows: server time of a filtered, paged page.

* ``console_runs_list``: 10,000 workflows of four types (inserted by SQL: a mix of statuses
  with a few waiting, failed, dead and retried, as a busy namespace has) and, in the same run,
  100 as the baseline. Each is asked the same pages, signed in with a console session, in
  process (httpx over ASGI: the time is the server's, query and template, no network): the
  first page (needs attention first), a status filter at page 5, a workflow filter at page 3,
  both at page 2, "needs attention". Target: p95 ≤ 50 ms at 10,000. A text search (ILIKE
  over the input, result and error) is reported beside it.

    python -m bench.console [--quick]

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from orchestrator.facade import Orchestrator
from orchestrator.service.app import ServerContext, create_app
from orchestrator.service.auth import TokenStore
from orchestrator.service.runs import RunService

from .common import Result, percentile, run_standalone, settings, summary

__all__ = ["run"]

_TARGET = "runs list (10,000 workflows, filtered and paged) server time p95 ≤ 50 ms"
_PAGES = ("/console/", "/console/?status=completed&page=5", "/console/?workflow=type_b&page=3",
          "/console/?status=completed&workflow=type_c&page=2", "/console/?status=attention")
_SEARCH = "/console/?q=needle-7"


async def _fill(orch: Orchestrator, n: int, prefix: str) -> None:
    """``n`` workflows in one statement: 2% waiting, 2% failed, 10% running, the rest done;
    1% of them with a dead run and 1% with a run queued again after a failed attempt."""
    db, ns = orch.runtime.db, orch.settings.namespace
    await db.execute(
        """
        INSERT INTO workflows (thread_id, namespace, workflow_type, status, current_step, input,
                               result, created_at, updated_at)
        SELECT %(p)s || i, %(ns)s, 'type_' || chr(97 + i %% 4),
               CASE WHEN i %% 50 = 0 THEN 'interrupted' WHEN i %% 50 = 1 THEN 'failed'
                    WHEN i %% 10 = 2 THEN 'running' ELSE 'completed' END,
               'step_' || (i %% 7), jsonb_build_object('change', 'needle-' || i),
               jsonb_build_object('ok', true),
               now() - make_interval(secs => i * 7), now() - make_interval(secs => i * 3)
        FROM generate_series(1, %(n)s) i""",
        {"p": prefix, "ns": ns, "n": n},
    )
    await db.execute(
        """
        INSERT INTO runs (namespace, thread_id, kind, status, attempts, max_attempts)
        SELECT %(ns)s, %(p)s || i, 'start',
               CASE WHEN i %% 100 = 3 THEN 'dead' WHEN i %% 100 = 4 THEN 'queued'
                    ELSE 'succeeded' END,
               1, 5
        FROM generate_series(1, %(n)s) i""",
        {"p": prefix, "ns": ns, "n": n},
    )
    await db.execute("ANALYZE workflows")
    await db.execute("ANALYZE runs")


async def _times(browser: httpx.AsyncClient, paths: tuple[str, ...], rounds: int
                 ) -> list[float]:
    samples = []
    for _ in range(rounds):
        for path in paths:
            started = time.perf_counter()
            answer = await browser.get(path)
            samples.append(time.perf_counter() - started)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return samples


async def _measure(n: int, rounds: int) -> dict[str, Any]:
    base = settings(f"console{n}", local_agents=False)
    async with Orchestrator(base, agents=[]) as orch:
        try:
            await _fill(orch, n, f"bench-{orch.settings.namespace}-")

            async def ready() -> bool:
                return True

            app = create_app(ServerContext(orch, RunService(orch), None, ready))
            _, token = await TokenStore(orch.runtime.db, orch.settings.namespace).create(
                "viewer", "bench-viewer")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="https://console.test") as browser:
                signed = await browser.post("/login", data={"token": token})
                assert signed.status_code == 303, signed.text
                await _times(browser, _PAGES + (_SEARCH,), 2)  # warm: plans, templates
                each = {path: await _times(browser, (path,), rounds) for path in _PAGES}
                search = await _times(browser, (_SEARCH,), rounds)
            pages = [t for samples in each.values() for t in samples]
            return {"pages": summary(pages), "p95_ms": round(percentile(pages, 95) * 1000, 1),
                    "p95_ms_by_page": {path: round(percentile(samples, 95) * 1000, 1)
                                       for path, samples in each.items()},
                    "search_p95_ms": round(percentile(search, 95) * 1000, 1),
                    "requests": len(pages)}
        finally:
            await _clean(orch)


async def _clean(orch: Orchestrator) -> None:
    ns = orch.settings.namespace
    await orch.runtime.db.execute("DELETE FROM workflows WHERE namespace = %s", (ns,))
    await orch.runtime.db.execute("DELETE FROM console_sessions WHERE namespace = %s", (ns,))
    await orch.runtime.db.execute("DELETE FROM api_tokens WHERE namespace = %s", (ns,))


async def run(quick: bool = False) -> list[Result]:
    rounds = 4 if quick else 40
    baseline = await _measure(100, rounds)
    large = await _measure(10_000, rounds)
    ratio = large["p95_ms"] / baseline["p95_ms"] if baseline["p95_ms"] else None
    return [Result("console_runs_list", _TARGET, large["p95_ms"] <= 50.0,
                   {"workflows": 10_000, **large}, {"workflows": 100, **baseline},
                   round(ratio, 2) if ratio else None,
                   notes="in-process ASGI request time (query + template), signed in; "
                         "ratio = p95 at 10,000 / p95 at 100")]


def main() -> int:
    return run_standalone("console", __doc__, run)


if __name__ == "__main__":
    main()

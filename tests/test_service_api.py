"""The HTTP API in-process (httpx over ASGI, on the test's event loop) against real PostgreSQL
and Redis: every route's answer and errors, the roles, the audit rows, the OpenAPI document."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from orchestrator.service import audit
from orchestrator.service.app import ENDPOINTS, ServerContext, create_app
from orchestrator.service.auth import TokenStore
from orchestrator.testing import stand_in
from tests.support.graphs_for_tests import approval

ROLES = ("viewer", "operator", "admin")
#: thread ids are unique in the whole database (every namespace): this module's own prefix
P = f"api{uuid.uuid4().hex[:6]}-"


async def _review(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"verdict": "looks fine", "change": payload["change"]}


@dataclass
class Api:
    http: httpx.AsyncClient
    orch: Any
    runs: Any
    ctx: ServerContext
    tokens: dict[str, str]  # role -> secret; the token of role R is named "R-token"

    async def call(self, method: str, path: str, role: str | None = None,
                   **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def audit(self, target: str) -> list[Any]:
        return await audit.entries(self.orch.runtime.db, self.orch.settings.namespace,
                                   target=target)

    async def interrupted(self, thread_id: str) -> Any:
        """An approval workflow run to its question by the facade."""
        result = await self.orch.run("approval", {"change": "v2"}, thread_id)
        assert result.status == "interrupted", result
        return result


@pytest.fixture
async def api(orchestrator_factory) -> AsyncIterator[Api]:
    from orchestrator.service.runs import RunService

    orch = await orchestrator_factory(stand_ins=[stand_in("reviewer", {"review": _review})],
                                      builtin=False, workflows={"approval": approval},
                                      run_max_attempts=1)
    state = {"ready": True}

    async def ready() -> bool:
        return state["ready"]

    runs = RunService(orch)
    ctx = ServerContext(orch, runs, None, ready)
    ctx.state = state  # type: ignore[attr-defined]  # the test flips readiness
    store = TokenStore(orch.runtime.db, orch.settings.namespace)
    tokens = {role: (await store.create(role, f"{role}-token"))[1] for role in ROLES}
    transport = httpx.ASGITransport(app=create_app(ctx), client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield Api(http, orch, runs, ctx, tokens)


def error(response: httpx.Response, status: int, code: str) -> str:
    """The error message of ``response``, after checking its status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def concrete(path: str) -> str:
    return re.sub(r"\{run_id:int\}", "999999", re.sub(r"\{(thread_id|name)\}", "nope", path))


# -- without a token -----------------------------------------------------------------------------


async def test_health_ready_metrics_and_openapi_need_no_token(api: Api) -> None:
    assert (await api.call("GET", "/healthz")).json() == {"status": "ok"}
    assert (await api.call("GET", "/readyz")).json() == {"ready": True}
    api.ctx.state["ready"] = False  # type: ignore[attr-defined]
    not_ready = await api.call("GET", "/readyz")
    assert not_ready.status_code == 503 and not_ready.json() == {"ready": False}
    metrics = await api.call("GET", "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "orchestrator_workflow_runs_total" in metrics.text
    assert (await api.call("GET", "/openapi.json")).status_code == 200


async def test_every_other_route_refuses_a_missing_unknown_or_revoked_token(api: Api) -> None:
    guarded = [ep for ep in ENDPOINTS if ep.role is not None]
    assert len(guarded) >= 18
    for ep in guarded:
        path = concrete(ep.path)
        assert "token create" in error(await api.http.request(ep.method, path), 401,
                                       "unauthorized")
        bad = await api.http.request(ep.method, path, headers={"Authorization": "Bearer orch_x"})
        error(bad, 401, "unauthorized")
    await TokenStore(api.orch.runtime.db, api.orch.settings.namespace).revoke("admin-token")
    error(await api.call("GET", "/runs", "admin"), 401, "unauthorized")


async def test_each_route_refuses_roles_below_its_own(api: Api) -> None:
    for ep in ENDPOINTS:
        if ep.role is None:
            continue
        for role in ROLES[:ROLES.index(ep.role)]:
            response = await api.call(ep.method, concrete(ep.path), role, json={})
            message = error(response, 403, "forbidden")
            assert f"role {role}; this needs {ep.role}" in message, (ep.path, message)


# -- runs ----------------------------------------------------------------------------------------


async def test_submit_list_get_and_cancel_a_run(api: Api) -> None:
    submitted = await api.call("POST", "/runs", "operator",
                               json={"workflow": "approval", "input": {"change": "v1"},
                                     "thread_id": f"{P}api-1", "priority": 5})
    assert submitted.status_code == 202, submitted.text
    run = submitted.json()
    assert run["thread_id"] == f"{P}api-1" and run["status"] == "queued" and run["run_id"] > 0
    assert run["requested_by"] == "operator-token" and run["priority"] == 5

    listed = (await api.call("GET", "/runs?status=queued&workflow=approval", "viewer")).json()
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    assert (await api.call("GET", "/runs?status=running", "viewer")).json() == []
    assert (await api.call("GET", "/runs?workflow=other", "viewer")).json() == []

    got = (await api.call("GET", f"/runs/{P}api-1", "viewer")).json()
    assert got["record"]["status"] == "queued" and got["record"]["input"] == {"change": "v1"}
    assert got["question"] is None and got["result"] is None
    assert [r["run_id"] for r in got["runs"]] == [run["run_id"]]

    cancelled = await api.call("POST", f"/runs/{P}api-1/cancel", "operator")
    assert cancelled.status_code == 202, cancelled.text
    got = (await api.call("GET", f"/runs/{P}api-1", "viewer")).json()
    assert got["record"]["status"] == "cancelled"
    # the queued start is cancelled; the cancel itself is a run done at once
    assert [(r["kind"], r["status"], r["outcome"]) for r in got["runs"]] == [
        ("cancel", "succeeded", "cancelled"), ("start", "cancelled", "cancelled")], got["runs"]
    assert cancelled.json()["kind"] == "cancel"

    trail = await api.audit(f"{P}api-1")
    assert [(e.action, e.actor, e.source) for e in trail] == [
        ("run.cancel", "operator-token", "127.0.0.1"),
        ("run.submit", "operator-token", "127.0.0.1")]
    assert trail[1].detail == {"workflow": "approval", "run_id": run["run_id"], "priority": 5}


async def test_a_bad_submission_is_refused_with_its_problem_and_nothing_stored(api: Api) -> None:
    post = "POST", "/runs", "operator"
    assert "not JSON" in error(await api.call(*post, content=b"{nope"), 400, "invalid_input")
    assert "JSON object" in error(await api.call(*post, json=[1]), 400, "invalid_input")
    assert "body.workflow" in error(await api.call(*post, json={}), 422, "invalid_input")
    assert "body.colour" in error(await api.call(*post, json={"workflow": "approval",
                                                                "colour": 1}), 422,
                                  "invalid_input")
    assert "unknown workflow 'nope'" in error(
        await api.call(*post, json={"workflow": "nope", "thread_id": f"{P}bad-1"}), 422,
        "invalid_input")
    assert "change" in error(
        await api.call(*post, json={"workflow": "approval", "input": {}, "thread_id": f"{P}bad-2"}),
        422, "invalid_input")
    assert (await api.call("GET", "/workflows", "viewer")).json() == []
    assert (await api.call("GET", "/runs", "viewer")).json() == []
    assert await api.audit(f"{P}bad-1") == [] and await api.audit(f"{P}bad-2") == []

    first = await api.call(*post, json={"workflow": "approval", "input": {"change": "a"},
                                        "thread_id": f"{P}dup"})
    assert first.status_code == 202
    again = await api.call(*post, json={"workflow": "approval", "input": {"change": "b"},
                                        "thread_id": f"{P}dup"})
    assert again.status_code in (409, 422) and f"{P}dup" in again.json()["error"]["message"]


async def test_the_pending_question_and_who_may_answer_it(api: Api) -> None:
    await api.interrupted(f"{P}ask-1")
    got = (await api.call("GET", f"/runs/{P}ask-1", "viewer")).json()
    assert got["record"]["status"] == "interrupted" and got["next"] == ["approve"]
    question = got["question"]
    assert question["kind"] == "approval" and question["question"] == "approve v2?"
    assert "approve" in question["schema"]["properties"]
    assert got["values"]["change"] == "v2"

    # a viewer cannot answer: 403 and nothing queued
    error(await api.call("POST", f"/runs/{P}ask-1/resume", "viewer", json={"value": {"approve": True}}),
          403, "forbidden")
    # an answer that does not fit the question: 422 with the problem, nothing queued
    message = error(await api.call("POST", f"/runs/{P}ask-1/resume", "operator",
                                   json={"value": {"approve": "maybe"}}), 422, "invalid_answer")
    assert "approve" in message
    assert (await api.call("GET", f"/runs/{P}ask-1", "viewer")).json()["runs"] == []
    assert await api.audit(f"{P}ask-1") == []

    answered = await api.call("POST", f"/runs/{P}ask-1/resume", "operator",
                              json={"value": {"approve": True}})
    assert answered.status_code == 202, answered.text
    run = answered.json()
    assert run["kind"] == "resume" and run["status"] == "queued"
    assert run["requested_by"] == "operator-token"
    assert run["payload"]["by"] == "operator-token"  # who answered, kept with the answer
    [entry] = await api.audit(f"{P}ask-1")
    assert (entry.action, entry.actor) == ("run.resume", "operator-token")
    assert entry.detail["value"] == {"approve": True}

    error(await api.call("POST", "/runs/nobody/resume", "operator", json={"value": 1}), 404,
          "workflow_not_found")
    assert "body.extra" in error(await api.call("POST", f"/runs/{P}ask-1/resume", "operator",
                                                json={"value": 1, "extra": 2}), 422,
                                 "invalid_input")


async def test_history_and_restoring_a_named_checkpoint(api: Api) -> None:
    await api.interrupted(f"{P}tt-1")
    checkpoint = await api.orch.name_checkpoint(f"{P}tt-1", "asked")
    history = (await api.call("GET", f"/runs/{P}tt-1/history", "viewer")).json()
    assert history and history[-1]["checkpoint_id"] == checkpoint
    assert history[-1]["names"] == ["asked"]
    assert [h["step"] for h in history] == sorted(h["step"] for h in history)

    message = error(await api.call("POST", f"/runs/{P}tt-1/restore", "operator",
                                   json={"name": "later"}), 404, "checkpoint_not_found")
    assert "asked" in message  # the names there are
    restored = await api.call("POST", f"/runs/{P}tt-1/restore", "operator", json={"name": "asked"})
    assert restored.status_code == 200, restored.text
    assert restored.json() == {"thread_id": f"{P}tt-1", "name": "asked", "checkpoint_id": checkpoint}
    [entry] = await api.audit(f"{P}tt-1")
    assert entry.action == "checkpoint.restore" and entry.detail["name"] == "asked"
    error(await api.call("GET", "/runs/nobody/history", "viewer"), 404, "workflow_not_found")
    error(await api.call("GET", "/runs/nobody", "viewer"), 404, "workflow_not_found")


async def test_restoring_a_workflow_with_a_queued_run_is_a_conflict(api: Api) -> None:
    await api.interrupted(f"{P}q-1")
    await api.orch.name_checkpoint(f"{P}q-1", "asked")
    queued = await api.call("POST", f"/runs/{P}q-1/resume", "operator",
                            json={"value": {"approve": False}})
    assert queued.status_code == 202
    error(await api.call("POST", f"/runs/{P}q-1/restore", "operator", json={"name": "asked"}), 409,
          "workflow_busy")
    # a second answer while one is queued: busy too, and not stored
    error(await api.call("POST", f"/runs/{P}q-1/resume", "operator",
                         json={"value": {"approve": True}}), 409, "workflow_busy")
    assert [e.action for e in await api.audit(f"{P}q-1")] == ["run.resume"]


# -- workflows, agents, locks --------------------------------------------------------------------


async def test_workflows_agents_and_locks(api: Api) -> None:
    await api.interrupted(f"{P}wf-1")
    await api.call("POST", "/runs", "operator",
                   json={"workflow": "approval", "input": {"change": "w"}, "thread_id": f"{P}wf-2"})
    everything = (await api.call("GET", "/workflows", "viewer")).json()
    assert {w["thread_id"] for w in everything} == {f"{P}wf-1", f"{P}wf-2"}
    interrupted = (await api.call("GET", "/workflows?status=interrupted&type=approval",
                                  "viewer")).json()
    assert [w["thread_id"] for w in interrupted] == [f"{P}wf-1"]
    assert len((await api.call("GET", "/workflows?limit=1", "viewer")).json()) == 1
    assert "not one of" in error(await api.call("GET", "/workflows?status=sleeping", "viewer"),
                                 422, "invalid_input")
    assert "between 1 and 1000" in error(await api.call("GET", "/workflows?limit=0", "viewer"),
                                         422, "invalid_input")
    assert "whole number" in error(await api.call("GET", "/runs?limit=x", "viewer"), 422,
                                   "invalid_input")

    agents = (await api.call("GET", "/agents", "viewer")).json()
    assert [a["agent_type"] for a in agents] == ["reviewer"]

    assert (await api.call("GET", "/locks", "viewer")).json() == []
    await api.orch.runtime.locks.hold("repo:demo", "test-holder", 60)
    locks = (await api.call("GET", "/locks", "viewer")).json()
    assert [(lock["resource"], lock["holder"]) for lock in locks] == [("repo:demo",
                                                                        "test-holder")]
    assert "true or false" in error(await api.call("GET", "/locks?all=maybe", "viewer"), 422,
                                    "invalid_input")


# -- dead letters --------------------------------------------------------------------------------


async def _dead_run(api: Api, thread_id: str) -> int:
    """A start run that failed its only attempt (run_max_attempts=1): a dead letter."""
    from orchestrator.service.queue import RunQueue

    await api.call("POST", "/runs", "operator", json={"workflow": "approval",
                                                      "input": {"change": thread_id},
                                                      "thread_id": thread_id})
    queue = RunQueue(api.orch.runtime.db, api.orch.settings)
    claimed = await queue.claim("test-runner")
    assert claimed is not None and claimed.thread_id == thread_id
    dead = await queue.fail(claimed, "test-runner", {"code": "internal_error", "message": "boom"})
    assert dead is not None and dead.status == "dead", dead
    return claimed.run_id


async def test_dead_letters_list_replay_and_purge(api: Api) -> None:
    first = await _dead_run(api, f"{P}dl-1")
    second = await _dead_run(api, "dl-2")
    letters = (await api.call("GET", "/dead-letters", "viewer")).json()
    assert {d["run_id"] for d in letters} == {first, second}
    assert all(d["status"] == "dead" for d in letters)

    replayed = await api.call("POST", f"/dead-letters/{first}/replay", "operator")
    assert replayed.status_code == 202, replayed.text
    new = replayed.json()
    assert new["run_id"] != first and new["status"] == "queued" and new["thread_id"] == f"{P}dl-1"
    error(await api.call("POST", "/dead-letters/999999/replay", "operator"), 404,
          "run_not_found")

    error(await api.call("DELETE", f"/dead-letters/{second}", "operator"), 403, "forbidden")
    purged = await api.call("DELETE", f"/dead-letters/{second}", "admin")
    assert purged.json() == {"purged": 1}
    remaining = {d["run_id"] for d in (await api.call("GET", "/dead-letters", "viewer")).json()}
    assert second not in remaining
    everything = (await api.call("DELETE", "/dead-letters", "admin")).json()
    assert everything["purged"] == len(remaining)
    assert (await api.call("GET", "/dead-letters", "viewer")).json() == []

    actions = [(e.action, e.actor) for e in await api.audit(str(second))]
    assert actions == [("dead_letter.purge", "admin-token")]
    assert [e.action for e in await api.audit(str(first))] == ["dead_letter.replay"]


# -- tokens and the trail over HTTP --------------------------------------------------------------


async def test_admin_manages_tokens_and_reads_the_trail(api: Api) -> None:
    created = await api.call("POST", "/tokens", "admin", json={"role": "viewer", "name": "dash"})
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.http.get("/runs", headers=headers)).status_code == 200
    listed = (await api.call("GET", "/tokens", "admin")).json()
    assert "dash" in {t["name"] for t in listed} and "token" not in listed[0]
    error(await api.call("POST", "/tokens", "admin", json={"role": "root"}), 422, "invalid_input")
    revoked = await api.call("DELETE", "/tokens/dash", "admin")
    assert revoked.json() == {"revoked": "dash"}
    error(await api.http.get("/runs", headers=headers), 401, "unauthorized")
    error(await api.call("DELETE", "/tokens/dash", "admin"), 422, "invalid_input")

    trail = (await api.call("GET", "/audit?target=dash", "admin")).json()
    assert [(e["action"], e["actor"]) for e in trail] == [("token.revoke", "admin-token"),
                                                          ("token.create", "admin-token")]


# -- routing and OpenAPI -------------------------------------------------------------------------


async def test_unknown_routes_and_methods_answer_in_the_error_shape(api: Api) -> None:
    assert "openapi.json" in error(await api.call("GET", "/nowhere"), 404, "not_found")
    error(await api.call("PUT", "/runs", "admin"), 405, "method_not_allowed")


async def test_openapi_is_valid_and_describes_every_route(api: Api) -> None:
    document = (await api.call("GET", "/openapi.json")).json()
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    app = create_app(api.ctx)
    for route in app.routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue  # the console's pages and its static files are not API
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods - {"HEAD"}:
            assert method.lower() in document["paths"][path], (method, path)
    submit = document["paths"]["/runs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SubmitRun"}
    assert {"202", "400", "401", "403", "422"} <= set(submit["responses"])
    assert document["paths"]["/healthz"]["get"]["security"] == []
    schema = document["components"]["schemas"]["SubmitRun"]
    assert schema["required"] == ["workflow"]
    assert document["paths"]["/dead-letters/{run_id}"]["delete"]["parameters"][0]["schema"] == {
        "type": "integer"}
    # the event streams are served like the table's routes: a viewer token, their query
    events = document["paths"]["/events"]["get"]
    assert "security" not in events and {"401", "403"} <= set(events["responses"])
    assert {p["name"] for p in events["parameters"]} == {"types", "workflow", "thread",
                                                         "last_event_id"}
    assert "viewer" in document["paths"]["/runs/{thread_id}/stream"]["get"]["description"]


def test_openapi_describes_routes_mounted_beside_the_table() -> None:
    """The webhooks (mounted from hooks.routes) are in the document, by their docstring."""
    from orchestrator.service.app import openapi

    async def github(request: Any) -> None:
        """Receive a GitHub event."""

    async def generic(request: Any) -> None:
        """Start a workflow from a signed request."""

    document = openapi([Route("/hooks/github", github, methods=["POST"]),
                        Route("/hooks/generic/{workflow}", generic, methods=["POST"])])
    validate(document)
    assert document["paths"]["/hooks/github"]["post"]["summary"] == "Receive a GitHub event."
    generic_op = document["paths"]["/hooks/generic/{workflow}"]["post"]
    assert generic_op["parameters"][0]["name"] == "workflow" and generic_op["security"] == []

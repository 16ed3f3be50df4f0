"""The HTTP API of ``orchestrator serve`` (Starlette, served by uvicorn in ``server.py``).

``create_app(ctx)`` builds the application from a :class:`ServerContext` that the server
opens once (the facade, the run service, the hooks config, the readiness check).

Every route is one :class:`Endpoint` in :data:`ENDPOINTS`: its method and path, the role it
needs, its request body model and its handler. The routes and ``/openapi.json`` are both made
from that table, so the document describes every route there is. Changes are queued runs
(``RunService``); reading a workflow goes through the facade, agents and locks through the
runtime's registry and lock manager, as the CLI reads them.

Errors are JSON ``{"error": {"code", "message"}}`` with the error tree's codes: 400 a body
that is not a JSON object, 401 no or bad token, 403 role too low, 404 no such workflow, run
or checkpoint, 409 busy or conflicting, 422 invalid input or answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.contracts.base import problems
from orchestrator.errors import InvalidInput, OrchestratorError
from orchestrator.service import audit
from orchestrator.service.auth import Identity, TokenStore, check_role
from orchestrator.service.console import session as console_session
from orchestrator.service.openapi import document, http_status, operation_id

if TYPE_CHECKING:
    from orchestrator.facade import Orchestrator

__all__ = ["ServerContext", "create_app", "openapi", "ENDPOINTS", "RUN_STATUSES",
           "WORKFLOW_STATUSES"]

log = logging.getLogger(__name__)

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
WORKFLOW_STATUSES = ("queued", "running", "interrupted", "completed", "failed", "cancelled")

@dataclass
class ServerContext:
    """What every request handler needs, opened once by the server."""

    orch: Orchestrator
    runs: Any  # orchestrator.service.runs.RunService
    hooks: Any | None  # orchestrator.service.hooks.HooksConfig
    ready: Callable[[], Awaitable[bool]]
    hub: Any = None  # orchestrator.service.stream.EventHub: /events (started by the server)


# -- request bodies ------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitRun(_Body):
    """Start a workflow: queued now, run by a runner."""

    workflow: str = Field(description="the workflow's name (GET /workflows/types lists them)")
    input: dict[str, Any] = Field(default_factory=dict, description="the workflow's input")
    thread_id: str | None = Field(None, min_length=1, max_length=200,
                                  description="the new workflow's id (default: a new UUID)")
    priority: int = Field(0, description="higher runs first")


class ResumeRun(_Body):
    """Answer the pending question (or carry on after a failure when there is none)."""

    value: Any = Field(None, description="the answer; must fit the question's schema")


class RestoreCheckpoint(_Body):
    """Go back to a named checkpoint (time travel)."""

    name: str = Field(min_length=1, description="the checkpoint's name")


class CreateToken(_Body):
    """A new bearer token; its secret is in the answer, once."""

    role: Literal["viewer", "operator", "admin"]
    name: str | None = Field(None, description="default: <role>-<6 hex digits>")


# -- the endpoint table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A query parameter (OpenAPI and parsing)."""

    name: str
    kind: Literal["string", "integer", "boolean"] = "string"
    enum: tuple[str, ...] = ()
    default: Any = None
    description: str = ""


@dataclass
class Call:
    """One request as a handler sees it: validated body and query, and who sent it."""

    ctx: ServerContext
    request: Request
    identity: Identity | None
    body: Any
    query: dict[str, Any]

    @property
    def actor(self) -> str:
        return self.identity.name if self.identity else "anonymous"

    def param(self, name: str) -> Any:
        return self.request.path_params[name]

    async def audit(self, action: str, target: str, detail: dict[str, Any]) -> None:
        """Record the change this request made, by the token's name, from the client's
        address."""
        client = self.request.client
        await audit.record(self.ctx.orch.runtime.db, actor=self.actor, action=action,
                           target=target, detail=detail,
                           source=client.host if client else "unknown",
                           namespace=self.ctx.orch.settings.namespace)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # Starlette syntax: {thread_id}, {run_id:int}
    handler: Callable[[Call], Awaitable[Any]]
    role: str | None  # None: no token needed
    summary: str
    body: type[BaseModel] | None = None
    status: int = 200
    query: tuple[Query, ...] = ()
    answer: str = "object"  # "object" | "array" | "text": the 2xx body, for OpenAPI
    tags: tuple[str, ...] = field(default=())


def _limit(default: int = 100) -> Query:
    return Query("limit", "integer", default=default, description="at most this many (1-1000)")


# -- handlers ------------------------------------------------------------------------------------


async def _healthz(call: Call) -> Any:
    return {"status": "ok"}


async def _readyz(call: Call) -> Any:
    ok = await call.ctx.ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def _metrics(call: Call) -> Any:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _openapi(call: Call) -> Any:
    return openapi(call.request.app.routes)


async def _submit(call: Call) -> Any:
    body: SubmitRun = call.body
    run = await call.ctx.runs.submit(body.workflow, body.input, body.thread_id,
                                     priority=body.priority, by=call.actor)
    await call.audit("run.submit", run.thread_id, {"workflow": body.workflow,
                                                    "run_id": run.run_id,
                                                    "priority": body.priority})
    return run.to_dict()


async def _list_runs(call: Call) -> Any:
    q = call.query
    return [r.to_dict() for r in await call.ctx.runs.runs(
        status=q["status"], workflow=q["workflow"], limit=q["limit"])]


async def _get_run(call: Call) -> Any:
    thread_id = call.param("thread_id")
    details = await call.ctx.orch.get(thread_id)
    runs = await call.ctx.runs.runs(thread_id=thread_id)
    return {
        "record": details.record.to_dict(),
        "values": details.values,
        "next": details.next,
        "interrupts": details.interrupts,
        # the pending question: {"kind", "question", "schema", "context"}
        "question": details.interrupts[0]["value"] if details.interrupts else None,
        "result": details.record.result,
        "runs": [r.to_dict() for r in runs],
    }


async def _resume(call: Call) -> Any:
    thread_id, value = call.param("thread_id"), call.body.value
    run = await call.ctx.runs.resume(thread_id, value, by=call.actor)
    await call.audit("run.resume", thread_id, {"value": value, "run_id": run.run_id})
    return run.to_dict()


async def _cancel(call: Call) -> Any:
    thread_id = call.param("thread_id")
    run = await call.ctx.runs.cancel(thread_id, by=call.actor)
    await call.audit("run.cancel", thread_id, {"run_id": run.run_id})
    return run.to_dict()


async def _restore(call: Call) -> Any:
    thread_id, name = call.param("thread_id"), call.body.name
    checkpoint_id = await call.ctx.orch.restore_checkpoint(thread_id, name)
    await call.audit("checkpoint.restore", thread_id,
                     {"name": name, "checkpoint_id": checkpoint_id})
    return {"thread_id": thread_id, "name": name, "checkpoint_id": checkpoint_id}


async def _history(call: Call) -> Any:
    return [h.to_dict() for h in await call.ctx.orch.history(call.param("thread_id"))]


async def _workflows(call: Call) -> Any:
    q = call.query
    records = await call.ctx.orch.list_workflows(q["status"], q["type"], limit=q["limit"])
    return [r.to_dict() for r in records]


async def _agents(call: Call) -> Any:
    registry = call.ctx.orch.runtime.registry
    return [a.to_dict() for a in await registry.discover(include_offline=call.query["all"])]


async def _locks(call: Call) -> Any:
    locks = call.ctx.orch.runtime.locks
    return [lock.to_dict() for lock in await locks.list_locks(include_free=call.query["all"])]


async def _dead_letters(call: Call) -> Any:
    return [r.to_dict() for r in await call.ctx.runs.dead_letters(call.query["limit"])]


async def _replay(call: Call) -> Any:
    run_id = call.param("run_id")
    run = await call.ctx.runs.replay(run_id, by=call.actor)
    await call.audit("dead_letter.replay", str(run_id), {"run_id": run.run_id,
                                                         "thread_id": run.thread_id})
    return run.to_dict()


async def _purge_all(call: Call) -> Any:
    n = await call.ctx.runs.purge(None, by=call.actor)
    await call.audit("dead_letter.purge", "*", {"purged": n})
    return {"purged": n}


async def _purge_one(call: Call) -> Any:
    run_id = call.param("run_id")
    n = await call.ctx.runs.purge(run_id, by=call.actor)
    await call.audit("dead_letter.purge", str(run_id), {"purged": n})
    return {"purged": n}


def _tokens(call: Call) -> TokenStore:
    return TokenStore(call.ctx.orch.runtime.db, call.ctx.orch.settings.namespace)


async def _list_tokens(call: Call) -> Any:
    return [t.to_dict() for t in await _tokens(call).list(include_revoked=call.query["all"])]


async def _create_token(call: Call) -> Any:
    info, secret = await _tokens(call).create(call.body.role, call.body.name, by=call.actor)
    await call.audit("token.create", info.name, {"role": info.role})
    return {**info.to_dict(), "token": secret}


async def _revoke_token(call: Call) -> Any:
    name = call.param("name")
    if not await _tokens(call).revoke(name):
        raise InvalidInput(f"no active token named {name!r}; GET /tokens lists them")
    await call.audit("token.revoke", name, {})
    return {"revoked": name}


async def _audit(call: Call) -> Any:
    ctx = call.ctx
    found = await audit.entries(ctx.orch.runtime.db, ctx.orch.settings.namespace,
                                limit=call.query["limit"], target=call.query["target"])
    return [e.to_dict() for e in found]


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", _healthz, None, "The process is up"),
    Endpoint("GET", "/readyz", _readyz, None,
             "Ready to serve: the database and Redis answer (503 otherwise)"),
    Endpoint("GET", "/metrics", _metrics, None, "Prometheus metrics", answer="text"),
    Endpoint("GET", "/openapi.json", _openapi, None, "This document"),
    Endpoint("POST", "/runs", _submit, "operator", "Submit a run of a workflow",
             body=SubmitRun, status=202),
    Endpoint("GET", "/runs", _list_runs, "viewer", "List runs, newest first",
             query=(Query("status", enum=RUN_STATUSES), Query("workflow"), _limit()),
             answer="array"),
    Endpoint("GET", "/runs/{thread_id}", _get_run, "viewer",
             "One workflow: its record, state values, pending question (with its schema), "
             "result and runs"),
    Endpoint("POST", "/runs/{thread_id}/resume", _resume, "operator",
             "Answer the pending question (checked now: 422 and nothing stored when it does "
             "not fit) and queue the resume", body=ResumeRun, status=202),
    Endpoint("POST", "/runs/{thread_id}/cancel", _cancel, "operator",
             "Cancel the workflow: its queued runs, and its running one through its runner",
             status=202),
    Endpoint("POST", "/runs/{thread_id}/restore", _restore, "operator",
             "Restore a named checkpoint (time travel)", body=RestoreCheckpoint),
    Endpoint("GET", "/runs/{thread_id}/history", _history, "viewer",
             "The workflow's checkpoints, oldest first, with their names", answer="array"),
    Endpoint("GET", "/workflows", _workflows, "viewer",
             "List workflows, most recently updated first",
             query=(Query("status", enum=WORKFLOW_STATUSES), Query("type"), _limit()),
             answer="array"),
    Endpoint("GET", "/agents", _agents, "viewer", "Registered agent instances",
             query=(Query("all", "boolean", default=False,
                          description="include offline instances"),), answer="array"),
    Endpoint("GET", "/locks", _locks, "viewer", "Held resource locks",
             query=(Query("all", "boolean", default=False,
                          description="include free locks (their last token)"),),
             answer="array"),
    Endpoint("GET", "/dead-letters", _dead_letters, "viewer",
             "Dead runs: failed past their maximum attempts", query=(_limit(),),
             answer="array"),
    Endpoint("POST", "/dead-letters/{run_id:int}/replay", _replay, "operator",
             "Queue a dead run again (a new run, same kind and payload)", status=202),
    Endpoint("DELETE", "/dead-letters", _purge_all, "admin", "Delete every dead run"),
    Endpoint("DELETE", "/dead-letters/{run_id:int}", _purge_one, "admin",
             "Delete one dead run"),
    Endpoint("GET", "/tokens", _list_tokens, "admin", "The API tokens (never their secrets)",
             query=(Query("all", "boolean", default=False, description="include revoked"),),
             answer="array"),
    Endpoint("POST", "/tokens", _create_token, "admin",
             "Create a token; the answer holds its secret, shown this once",
             body=CreateToken, status=201),
    Endpoint("DELETE", "/tokens/{name}", _revoke_token, "admin", "Revoke a token at once"),
    Endpoint("GET", "/audit", _audit, "admin", "The audit trail, newest first",
             query=(_limit(), Query("target", description="only entries about this target")),
             answer="array"),
)


# -- the application -----------------------------------------------------------------------------


def create_app(ctx: ServerContext) -> Starlette:
    """The Starlette application serving the API for ``ctx``."""
    routes: list[BaseRoute] = [Route(ep.path, _serve(ctx, ep), methods=[ep.method],
                                     name=operation_id(ep)) for ep in ENDPOINTS]
    if ctx.hooks is not None:
        from orchestrator.service import hooks

        routes.extend(hooks.routes(ctx))
    from orchestrator.service import console

    routes.append(Route("/", _to_console, methods=["GET"], include_in_schema=False))
    routes.extend(console.routes(ctx))
    from orchestrator.service import stream

    routes.extend(stream.routes(ctx))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.ctx = ctx
    return app


def _serve(ctx: ServerContext, ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            identity = None
            if ep.role is not None:
                # a bearer token, else the console's session cookie (+ CSRF header on changes)
                identity = await console_session.authenticate(ctx, request)
                check_role(identity, ep.role)
            query = _query(request, ep.query)
            body = await _body(request, ep.body) if ep.body is not None else None
            result = await ep.handler(Call(ctx, request, identity, body, query))
        except _BadRequest as exc:
            return _error(400, str(InvalidInput.code), str(exc))
        except OrchestratorError as exc:
            status = http_status(exc)
            if status == 500:
                log.warning("%s %s failed: %s", ep.method, request.url.path, exc)
            return _error(status, str(exc.code), str(exc))
        except Exception as exc:
            log.exception("%s %s failed", ep.method, request.url.path)
            return _error(500, "internal_error", f"{type(exc).__name__}: {exc}; the server's "
                          "log has the details")
        if isinstance(result, Response):
            return result
        return JSONResponse(to_jsonable_python(result, fallback=str), status_code=ep.status)

    endpoint.__name__ = ep.handler.__name__.lstrip("_")
    endpoint.__doc__ = ep.summary
    endpoint.spec = ep  # type: ignore[attr-defined]  # openapi() describes it as a table entry
    return endpoint


async def _to_console(request: Request) -> Response:
    return RedirectResponse("/console/", 307)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed) in our error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = (f"no route {request.method} {request.url.path}; GET /openapi.json lists them"
               if exc.status_code in (404, 405) else str(exc.detail))
    return _error(exc.status_code, code, message)


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as ``model``.

    Raises:
        _BadRequest: not JSON, or not an object (400).
        InvalidInput: a field missing, unknown or of the wrong type, each named (422).
    """
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest(f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(problems(exc, "body")) from None


class _BadRequest(Exception):
    """A body that is not a JSON object: answered 400 with ``invalid_input`` (kept out of the
    error tree: it never leaves this module)."""


def _query(request: Request, params: tuple[Query, ...]) -> dict[str, Any]:
    """The declared query parameters, converted and checked (InvalidInput naming the bad
    one)."""
    values: dict[str, Any] = {}
    for p in params:
        raw = request.query_params.get(p.name)
        if raw is None or raw == "":
            values[p.name] = p.default
            continue
        if p.enum and raw not in p.enum:
            raise InvalidInput(f"query {p.name}={raw!r} is not one of {', '.join(p.enum)}")
        if p.kind == "integer":
            try:
                number = int(raw)
            except ValueError:
                raise InvalidInput(f"query {p.name}={raw!r} is not a whole number") from None
            if not 1 <= number <= 1000:
                raise InvalidInput(f"query {p.name}={number} is not between 1 and 1000")
            values[p.name] = number
        elif p.kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise InvalidInput(f"query {p.name}={raw!r} is not true or false")
            values[p.name] = raw.lower() in ("true", "1")
        else:
            values[p.name] = raw
    return values


# -- OpenAPI -------------------------------------------------------------------------------------


def openapi(routes: list[BaseRoute] | None = None) -> dict[str, Any]:
    """The OpenAPI document of :data:`ENDPOINTS` and the routes beside them
    (:func:`orchestrator.service.openapi.document`)."""
    return document(ENDPOINTS, routes)

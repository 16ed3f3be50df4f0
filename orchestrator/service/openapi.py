"""The OpenAPI 3.1 document of ``orchestrator serve``, made from its endpoint table.

:func:`document` describes each :class:`~orchestrator.service.app.Endpoint` (method, path,
role, body model, query parameters, answer) and the routes mounted beside the table (the
webhooks, by their docstring); ``/openapi.json`` serves it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from orchestrator.errors import InvalidInput, OrchestratorError
from orchestrator.service.auth import ROLES

if TYPE_CHECKING:
    from orchestrator.service.app import Endpoint, Query

__all__ = ["ErrorBody", "HTTP_STATUS", "document", "http_status", "operation_id"]

#: the HTTP status of an error code, for the API and the console's pages alike
HTTP_STATUS = {
    "unauthorized": 401, "forbidden": 403,
    "workflow_not_found": 404, "run_not_found": 404, "checkpoint_not_found": 404,
    "dead_letter_not_found": 404,
    "workflow_busy": 409, "workflow_exists": 409, "stale_workflow_version": 409,
    "lease_lost": 409, "resource_locked": 409,
}


def http_status(exc: OrchestratorError) -> int:
    """The HTTP status answering ``exc``: :data:`HTTP_STATUS`, else 422 for invalid input and
    500 for anything else."""
    return HTTP_STATUS.get(str(exc.code), 422 if isinstance(exc, InvalidInput) else 500)


class ErrorBody(BaseModel):
    """``{"error": {"code", "message"}}``: ``code`` is stable (README "Errors")."""

    error: dict[str, str]


def document(endpoints: Sequence[Endpoint], routes: list[BaseRoute] | None = None
             ) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``endpoints`` (the API's table), of the endpoints other modules serve
    the same way (the event streams), and of any other route mounted beside them (the webhooks,
    described by their docstring)."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"description": "an error", "content": {"application/json": {"schema": ref(ErrorBody)}}}
    paths: dict[str, dict[str, Any]] = {}
    # the table, and the table entries other modules serve through _serve (the event streams)
    served = [spec for route in routes or [] if isinstance(route, Route)
              and (spec := getattr(route.endpoint, "spec", None)) is not None]
    endpoints = [*endpoints, *(ep for ep in served if ep not in endpoints)]
    for ep in endpoints:
        path, params = _openapi_path(ep.path)
        op: dict[str, Any] = {"summary": ep.summary, "operationId": operation_id(ep),
                              "responses": {str(ep.status): _answer(ep)}}
        parameters = [*params, *({"name": q.name, "in": "query", "required": False,
                                  "description": q.description, "schema": _query_schema(q)}
                                 for q in ep.query)]
        if parameters:
            op["parameters"] = parameters
        if ep.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": ref(ep.body)}}}
            op["responses"]["400"] = {**error, "description": "the body is not a JSON object"}
        if ep.role is None:
            op["security"] = []
        else:
            op["description"] = f"Needs a token of role {ep.role} or above ({' < '.join(ROLES)})."
            op["responses"]["401"] = {**error, "description": "no token, or an unknown one"}
            op["responses"]["403"] = {**error, "description": f"the token's role is below {ep.role}"}
        if ep.body is not None or ep.query:
            op["responses"]["422"] = {**error, "description": "invalid input or answer"}
        if params:
            op["responses"]["404"] = {**error, "description": "no such workflow, run or name"}
        if ep.method != "GET":
            op["responses"]["409"] = {**error, "description": "busy or conflicting"}
        paths.setdefault(path, {})[ep.method.lower()] = op
    known = {(ep.method, ep.path) for ep in endpoints}
    for route in routes or []:  # routes mounted beside the table (webhooks)
        if not isinstance(route, Route) or not route.include_in_schema:  # the console's pages
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if (method, route.path) in known:
                continue
            path, params = _openapi_path(route.path)
            doc = (route.endpoint.__doc__ or route.name or "").strip().splitlines()
            op = {"summary": doc[0] if doc else path,
                  "operationId": method.lower() + re.sub(r"\W+", "_", path).rstrip("_"),
                  "security": [], "responses": {"200": {"description": "accepted"},
                                                "401": {**error, "description": "bad signature"}}}
            if params:
                op["parameters"] = params
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "orchestrator serve", "version": _version(),
                 "description": "Submit, watch, answer and cancel workflow runs. Errors are "
                                "`{\"error\": {\"code\", \"message\"}}`."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


def _openapi_path(path: str) -> tuple[str, list[dict[str, Any]]]:
    """``/x/{run_id:int}`` as ``/x/{run_id}`` and its path parameters."""
    params, parts = [], []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name, _, conv = part[1:-1].partition(":")
            params.append({"name": name, "in": "path", "required": True,
                           "schema": {"type": "integer" if conv == "int" else "string"}})
            part = "{" + name + "}"
        parts.append(part)
    return "/".join(parts), params


def operation_id(ep: Endpoint) -> str:
    return f"{ep.method.lower()}{ep.handler.__name__}"


def _query_schema(q: Query) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": q.kind}
    if q.enum:
        schema["enum"] = list(q.enum)
    if q.default is not None:
        schema["default"] = q.default
    return schema


def _answer(ep: Endpoint) -> dict[str, Any]:
    if ep.answer == "text":
        return {"description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}
    schema = {"type": "array", "items": {"type": "object"}} if ep.answer == "array" else {
        "type": "object"}
    return {"description": ep.summary, "content": {"application/json": {"schema": schema}}}


def _version() -> str:
    from orchestrator.cli.parser import _version as version

    return version()

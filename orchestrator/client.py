"""A small synchronous client of ``orchestrator serve``'s HTTP API.

Example::

    from orchestrator.client import Client

    with Client("http://127.0.0.1:8420", token="orch_...") as client:
        run = client.submit("parallel_docs", {"package": "json", "output": "docs"})
        done = client.wait(run["thread_id"], run_id=run["run_id"])
        print(done["record"]["status"], done["result"])

Errors are the facade's: an answer that does not fit its question raises
:class:`~orchestrator.errors.InvalidAnswer`, an unknown thread
:class:`~orchestrator.errors.WorkflowNotFound`, a bad token
:class:`~orchestrator.errors.Unauthorized`, a server that cannot be reached
:class:`~orchestrator.errors.ServerUnreachable` (naming the URL and what to check).
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.errors import InvalidAnswer, OrchestratorError, ServerUnreachable

__all__ = ["Client", "FINAL_RUN_STATUSES"]

#: a run in one of these is over (``queued`` after a failure is a retry, not an end)
FINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "dead", "cancelled"})
_BUSY_WORKFLOW_STATUSES = frozenset({"queued", "running"})


class Client:
    """The API at ``url`` (default ``ORCHESTRATOR_SERVER``) with bearer ``token`` (default
    ``ORCHESTRATOR_TOKEN``). Usable as a context manager; :meth:`close` ends its connections."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = 30.0) -> None:
        url = url or os.environ.get("ORCHESTRATOR_SERVER")
        if not url:
            raise ServerUnreachable("no server URL: pass one (--server URL) or set "
                                    "ORCHESTRATOR_SERVER, e.g. http://127.0.0.1:8420")
        self.url = url.rstrip("/")
        token = token or os.environ.get("ORCHESTRATOR_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API -------------------------------------------------------------------------------

    def submit(self, workflow: str, input: dict[str, Any] | None = None,
               thread_id: str | None = None, *, priority: int = 0) -> dict[str, Any]:
        """Queue a start of ``workflow``; returns the run (``thread_id``, ``run_id``,
        ``status``)."""
        body: dict[str, Any] = {"workflow": workflow, "input": input or {}, "priority": priority}
        if thread_id is not None:
            body["thread_id"] = thread_id
        return self._call("POST", "/runs", json=body)

    def get(self, thread_id: str) -> dict[str, Any]:
        """The workflow: ``record``, ``values``, ``question`` (pending, with its schema),
        ``result``, ``runs``."""
        return self._call("GET", f"/runs/{_quote(thread_id)}")

    def list(self, *, status: str | None = None, workflow: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """Runs, newest first."""
        return self._call("GET", "/runs", params=_params(status=status, workflow=workflow,
                                                          limit=limit))

    def workflows(self, *, status: str | None = None, type: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
        """Workflow records, most recently updated first."""
        return self._call("GET", "/workflows", params=_params(status=status, type=type,
                                                               limit=limit))

    def history(self, thread_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/runs/{_quote(thread_id)}/history")

    def resume(self, thread_id: str, value: Any = None) -> dict[str, Any]:
        """Answer the pending question with ``value`` (checked by the server at once) and
        queue the resume; returns the run."""
        return self._call("POST", f"/runs/{_quote(thread_id)}/resume", json={"value": value})

    def cancel(self, thread_id: str) -> dict[str, Any]:
        return self._call("POST", f"/runs/{_quote(thread_id)}/cancel")

    def wait(self, thread_id: str, *, run_id: int | None = None, timeout: float | None = 600.0,
             interval: float = 0.1) -> dict[str, Any]:
        """Poll :meth:`get` until the run ``run_id`` (default: every run of the thread) is
        over and the workflow is no longer queued or running; returns that last
        :meth:`get`. ``timeout=None`` waits as long as it takes.

        Raises:
            TimeoutError: still going after ``timeout`` seconds (it goes on on the server).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            details = self.get(thread_id)
            if _over(details, run_id):
                return details
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"workflow {thread_id} is still {details['record']['status']} after "
                    f"{timeout:g}s; it goes on on the server (`orchestrator show {thread_id}`)")
            time.sleep(interval)
            interval = min(interval * 1.5, 1.0)

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"cannot reach the orchestrator server at {self.url} ({type(exc).__name__}: "
                f"{exc}); check the URL (--server, ORCHESTRATOR_SERVER), that `orchestrator "
                "serve` runs there, and that its port is reachable from this machine") from None
        try:
            data = response.json()
        except ValueError:
            raise ServerUnreachable(
                f"{self.url} answered {method} {path} with HTTP {response.status_code} and no "
                "JSON: is it an orchestrator server (`orchestrator serve`)? check the URL and "
                "any proxy in front of it") from None
        if response.status_code >= 400:
            raise _remote_error(self.url, response.status_code, data)
        return data


def _over(details: dict[str, Any], run_id: int | None) -> bool:
    runs = details.get("runs") or []
    if run_id is not None:
        mine = [r for r in runs if r.get("run_id") == run_id]
        if not mine or mine[0].get("status") not in FINAL_RUN_STATUSES:
            return False
    elif any(r.get("status") not in FINAL_RUN_STATUSES for r in runs):
        return False
    return details["record"]["status"] not in _BUSY_WORKFLOW_STATUSES


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _quote(thread_id: str) -> str:
    return quote(thread_id, safe="")


def _error_classes() -> dict[str, type[OrchestratorError]]:
    found: dict[str, type[OrchestratorError]] = {}
    todo: list[type[OrchestratorError]] = [OrchestratorError]
    while todo:
        cls = todo.pop()
        found.setdefault(str(cls.code), cls)
        todo.extend(cls.__subclasses__())
    return found


def _remote_error(url: str, status: int, data: Any) -> OrchestratorError:
    """The server's ``{"error": {"code", "message"}}`` as the error tree's class of that code
    (so ``except InvalidAnswer`` works the same against a server as against the facade),
    with ``http_status`` set."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ServerUnreachable(
            f"{url} answered HTTP {status} with {str(data)[:200]!r}, not an orchestrator "
            "error: is it an orchestrator server (`orchestrator serve`)? check the URL and any "
            "proxy in front of it")
    code = str(error.get("code", ""))
    message = str(error.get("message", data))
    cls = _error_classes().get(code)
    if cls is None:
        exc = OrchestratorError(f"the server answered HTTP {status} ({code or 'no code'}): "
                                f"{message}")
    else:
        # built with the message only: the server's text already says what to do
        exc = cls.__new__(cls)
        OrchestratorError.__init__(exc, message)
        if isinstance(exc, InvalidAnswer):
            exc.problem = message
    exc.http_status = status  # type: ignore[attr-defined]
    return exc

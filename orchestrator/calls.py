"""``call_agent``: how graph nodes reach agents.

A call checks the registry (no live agent of the type: :class:`AgentUnavailable` at once),
acquires the requested locks in sorted order, sends the request with the locks' fencing
tokens, waits for the response, releases the locks, and returns the result with the state
updates that record it.

Inside a graph node the request id is deterministic — derived from the thread id, the task's
checkpoint namespace (which carries LangGraph's task id), the call's index within the task and
the agent type and request type it calls — so a node re-run after a crash gets the stored
answer instead of redoing the work. The request also carries the workflow's attempt (one per
run, resume or recovery): a stored *success* answers every attempt, a stored *error* only its
own, so a resume after fixing the cause of a failure runs the failed call again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from langgraph.types import RetryPolicy
from pydantic import BaseModel

from orchestrator.state.schema import now_iso

from .errors import (
    AgentError,
    AgentErrorCode,
    AgentTimeout,
    AgentUnavailable,
    BudgetExceeded,
    DeadLettered,
    OrchestratorError,
)
from .learning.store import record_call
from .messages import AgentRequest, AgentResponse, Priority
from .metrics import BUS_LATENCY, BUS_REQUESTS
from .runtime import Runtime, current_attempt, current_runtime

__all__ = ["AgentCall", "call_agent", "failure_updates", "is_transient", "AGENT_RETRY",
           "request_id_for"]

log = logging.getLogger(__name__)

_REQUEST_NS = uuid.UUID("6f1c3f5e-2b7a-4f43-9d55-0c1e0b7a9d11")


@dataclass
class AgentCall:
    """The outcome of a successful call: the result and the state updates recording it."""

    request_id: str
    target: str
    agent_id: str
    result: Any
    response: AgentResponse
    updates: dict[str, Any] = field(default_factory=dict)


def failure_updates(exc: BaseException) -> dict[str, Any]:
    """The state updates recording a failed call (``error_log``, ``agent_status``...), or {}.

    :func:`call_agent` attaches them to the exception it raises; a node that catches the
    failure returns them with its own outcome (``merge_updates(failure_updates(exc), ...)``).
    When the failure ends the run instead, the facade writes them into the run's checkpoint.
    """
    updates = getattr(exc, "updates", None)
    return dict(updates) if isinstance(updates, dict) else {}


def request_id_for(thread_id: str, task_key: str, index: int, target: str = "",
                   request_type: str = "") -> str:
    """The deterministic request id of call number ``index`` of a graph task, to
    ``target``'s ``request_type`` (so a stored answer only ever answers that operation)."""
    return str(uuid.uuid5(_REQUEST_NS,
                          f"{thread_id}|{task_key}|{index}|{target}|{request_type}"))


def _configurable() -> dict[str, Any] | None:
    try:
        from langgraph.config import get_config

        config = get_config()
    except RuntimeError:
        return None
    return config.get("configurable", {})


def _thread_and_task(configurable: dict[str, Any]) -> tuple[str | None, str | None]:
    thread_id = configurable.get("thread_id")
    task_key = configurable.get("checkpoint_ns") or configurable.get("__pregel_task_id")
    return (str(thread_id) if thread_id else None), (str(task_key) if task_key else None)


def _graph_context() -> tuple[str | None, str | None]:
    """(thread id, task key) when called inside a LangGraph node, else (None, None)."""
    return _thread_and_task(_configurable() or {})


def _call_context(rt: Runtime) -> tuple[str | None, str | None, int]:
    """(thread id, task key, workflow attempt): the attempt is the graph run's (see
    :func:`orchestrator.runtime.current_attempt`), or the runtime's own outside a node."""
    configurable = _configurable() or {}
    return (*_thread_and_task(configurable), current_attempt(configurable, rt))


async def call_agent(
    target: str,
    request_type: str,
    payload: Mapping[str, Any] | BaseModel | None = None,
    *,
    locks: Sequence[str] = (),
    fencing: Mapping[str, int] | None = None,
    timeout: float | None = None,
    priority: Priority = "normal",
    subtask: str | None = None,
    lock_ttl: float = 60.0,
    lock_wait: float = 60.0,
    runtime: Runtime | None = None,
) -> AgentCall:
    """Ask an agent of type ``target`` to do ``request_type`` with ``payload`` (a dict, or
    the pydantic model of the agent's contract; :meth:`orchestrator.contracts.Operation.call`
    also reads the answer with the contract's result model).

    Args:
        locks: resources to hold for the duration of the call (``repo:<path>``...).
        fencing: fencing tokens of locks the workflow already holds beyond this call (see
            :func:`orchestrator.locks.held.hold_lock`), passed to the agent with the others.
        timeout: seconds to wait for the answer (default: settings.request_timeout); it is
            also the request's deadline, so an agent never starts it late.
        subtask: the key under which ``agent_assignments`` records who did the work.

    Raises:
        AgentUnavailable: no live agent of that type is registered.
        ResourceLocked: a lock could not be acquired in ``lock_wait`` seconds.
        AgentTimeout: no answer in time.
        AgentError: the agent answered with an error (``retryable`` says if trying again helps).
        DeadLettered: the request was dead-lettered.
    """
    rt = runtime or await current_runtime()
    timeout = timeout if timeout is not None else rt.settings.request_timeout
    thread_id, task_key, attempt = _call_context(rt)
    counter_key = index = None
    if thread_id and task_key:
        # each attempt counts from 0: its calls meet the earlier attempts' stored successes
        counter_key = f"{thread_id}|{task_key}|{attempt}"
        index = rt.next_call_index(counter_key)
        request_id = request_id_for(thread_id, task_key, index, target, request_type)
    else:
        request_id = str(uuid.uuid4())
    request = AgentRequest(
        request_id=request_id,
        source=rt.process_id,
        target=target,
        request_type=request_type,
        payload=(payload.model_dump(mode="json") if isinstance(payload, BaseModel)
                 else dict(payload or {})),
        priority=priority,
        deadline=datetime.now(UTC) + timedelta(seconds=timeout),
        correlation_id=thread_id,
        attempt=attempt,
        reply_to=rt.bus.reply_stream,
        fencing=dict(fencing or {}),
    )
    try:
        return await _call(rt, request, locks, timeout, subtask or request_type,
                           lock_ttl, lock_wait, task_key)
    except Exception as exc:
        if counter_key is not None and index is not None and _no_response(exc):
            rt.reuse_call_index(counter_key, index)
        if isinstance(exc, OrchestratorError) and not hasattr(exc, "updates"):
            # no answer to record (no live agent, circuit open, lock not acquired, timeout):
            # the failure records itself all the same
            code = getattr(exc.code, "value", exc.code)
            exc.updates = {  # type: ignore[attr-defined]
                "updated_at": now_iso(),
                "error_log": [{"at": now_iso(), "node": task_key or "", "code": str(code),
                               "message": str(exc), "subtask": subtask or request_type}],
            }
        raise


def _no_response(exc: BaseException) -> bool:
    """The call may or may not have reached an agent, and no answer came back."""
    if hasattr(exc, "updates"):  # built from an agent's response (perhaps a stored one)
        return False
    if isinstance(exc, AgentTimeout):
        return True
    if isinstance(exc, OrchestratorError):
        return False
    return is_transient(exc)


async def _call(
    rt: Runtime,
    request: AgentRequest,
    locks: Sequence[str],
    timeout: float,
    subtask: str,
    lock_ttl: float,
    lock_wait: float,
    task_key: str | None,
) -> AgentCall:
    target, request_type = request.target, request.request_type
    if not await rt.registry.has_live(target):
        BUS_REQUESTS.labels(target, "unavailable").inc()
        raise AgentUnavailable(target)

    holder = f"{rt.process_id}:{request.correlation_id or '-'}:{task_key or request.request_id}"
    started = time.perf_counter()
    if locks:
        async with rt.locks.acquire_many(locks, holder, ttl=lock_ttl, wait_timeout=lock_wait,
                                         thread_id=request.correlation_id) as leases:
            request.fencing.update({lease.resource: lease.token for lease in leases})
            response = await _guarded_send(rt, request, timeout)
    else:
        response = await _guarded_send(rt, request, timeout)
    BUS_LATENCY.labels(target, response.status).observe(time.perf_counter() - started)
    BUS_REQUESTS.labels(target, response.status).inc()
    updates: dict[str, Any] = {
        "agent_assignments": {subtask: response.source},
        "agent_status": {response.source: response.status},
        "updated_at": now_iso(),
    }
    if response.status == "success":
        return AgentCall(request.request_id, target, response.source, response.result,
                         response, updates)
    error = response.error
    code = error.code if error else response.status
    message = error.message if error else f"request ended with status {response.status}"
    exc: OrchestratorError
    if response.status == "dead_lettered":
        exc = DeadLettered(f"{target}.{request_type} was dead-lettered: {message}")
    elif response.status == "timeout":
        exc = AgentTimeout(target, request_type, timeout, request.request_id)
    elif code == AgentErrorCode.BUDGET_EXCEEDED:
        exc = BudgetExceeded(f"{target}.{request_type}: {message}",
                             details=error.details if error else None)
    else:
        exc = AgentError(target, code, message, retryable=bool(error and error.retryable))
    exc.updates = {  # type: ignore[attr-defined]
        **updates,
        "error_log": [
            {"at": now_iso(), "node": task_key or "", "code": code, "message": message,
             "subtask": subtask}
        ],
    }
    raise exc


async def _guarded_send(rt: Runtime, request: AgentRequest, timeout: float) -> AgentResponse:
    """Send through the target's circuit breaker, recording whether the agent was healthy,
    and publish the call and its answer (``agent.call``, ``agent.answered``)."""
    await rt.breaker.before_call(request.target)  # CircuitOpen: fail fast, holding only locks
    event = {"thread_id": request.correlation_id, "target": request.target,
             "request_type": request.request_type, "request_id": request.request_id,
             "attempt": request.attempt}
    rt.bus.emit("agent.call", event)
    started = time.perf_counter()
    healthy, status = False, "error"
    try:
        response = await rt.bus.request(request, timeout)
        healthy, status = _healthy(response), response.status
        return response
    except TimeoutError:
        status = "timeout"
        BUS_REQUESTS.labels(request.target, "timeout").inc()
        raise AgentTimeout(request.target, request.request_type, timeout,
                           request.request_id) from None
    except asyncio.CancelledError:
        healthy, status = True, "cancelled"  # says nothing about the agent
        raise
    finally:
        rt.bus.emit("agent.answered", {**event, "status": status,
                                       "ms": round((time.perf_counter() - started) * 1000, 3)})
        record_call(rt, request, status, time.perf_counter() - started)  # queued, no I/O
        # a success seen closed is queued (it cannot change the circuit); anything else is
        # written before the call returns, so the next call sees the circuit it opened
        if not rt.breaker.record_soon(request.target, healthy):
            await rt.breaker.record(request.target, healthy)


def _healthy(response: AgentResponse) -> bool:
    """Whether a response shows a working agent: success, or a refusal of bad input."""
    if response.status == "success":
        return True
    if response.status == "rejected":
        return True  # an unknown request type is the caller's mistake
    error = response.error
    if response.status == "error" and error is not None:
        if error.blames_input:  # the agent says so where it raised it (HandlerError)
            return True
        return not error.retryable and error.code in _INPUT_ERRORS
    return False


#: Error codes that blame the request, not the agent, whoever raised them (agents mark their
#: own with ``HandlerError(..., blames_input=True)``): they do not trip the breaker.
_INPUT_ERRORS = frozenset({"invalid_input", "unsafe_path", "missing_fencing_token",
                           "stale_fencing_token", "unknown_request_type", "budget_exceeded"})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: timeouts, lost connections, agent errors marked retryable."""
    if isinstance(exc, AgentError):
        return exc.retryable
    if isinstance(exc, AgentTimeout):
        return True
    if isinstance(exc, OrchestratorError):
        return False
    try:
        from psycopg import OperationalError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover
        return isinstance(exc, TimeoutError | ConnectionError)
    return isinstance(
        exc, TimeoutError | ConnectionError | OperationalError | RedisConnectionError | RedisTimeoutError
    )


#: Retry policy for nodes that call agents: transient failures only, exponential backoff
#: with jitter (LangGraph's own mechanism, not a home-made loop).
AGENT_RETRY = RetryPolicy(
    initial_interval=0.5, backoff_factor=2.0, max_interval=30.0, max_attempts=3, jitter=True,
    retry_on=is_transient,
)

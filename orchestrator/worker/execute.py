"""Executing one claimed request: its handler under the request's deadline, and whatever
happens mapped to a response (a handler's exception becomes an ``error`` response)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from ..agent import Agent, HandlerError, RequestContext
from ..childenv import withholding
from ..errors import AgentErrorCode, OrchestratorError
from ..executions import EarlierStart
from ..llm.ledger import batched
from ..messages import AgentRequest, AgentResponse, ErrorInfo
from ..metrics import BUS_HANDLED
from .state import _WorkerState

_TRANSIENT = (TimeoutError, ConnectionError, OSError)


class _Executing(_WorkerState):
    async def _execute(
        self, agent: Agent, agent_id: str, request: AgentRequest
    ) -> AgentResponse:
        started = time.perf_counter()
        logger = self._loggers.get(agent.agent_type)
        if logger is None:
            logger = self._loggers[agent.agent_type] = logging.getLogger(
                f"agents.{agent.agent_type}")
        ctx = RequestContext(
            request=request,
            agent_id=agent_id,
            agent_type=agent.agent_type,
            log=logging.LoggerAdapter(
                logger, {"request_id": request.request_id, "thread_id": request.correlation_id},
            ),
            bus=self.bus,
            chat_model_spec=self.chat_model,
            models=self.models,
        )
        handler = agent.handlers.get(request.request_type) or agent.handlers.get("*")
        if handler is None:
            BUS_HANDLED.labels(agent.agent_type, "rejected").inc()
            return self._response(
                request, agent_id, "rejected", 0.0,
                error=ErrorInfo(
                    code=AgentErrorCode.UNKNOWN_REQUEST_TYPE,
                    message=f"{agent.agent_type} handles {sorted(agent.handlers)}, "
                    f"not {request.request_type!r}",
                ),
            )
        timeout = None
        try:
            if request.deadline is not None:
                timeout = max((request.deadline - datetime.now(UTC)).total_seconds(), 0.001)
            # run in this task (asyncio.wait_for would start one more per request); its model
            # calls' ledger rows are written before its answer is (orchestrator.llm.ledger)
            async with (asyncio.timeout(timeout), withholding(self.child_env_withhold),
                        batched()):
                result = await handler(request.payload, ctx)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.bus.redis.delete(self.bus.keys.inflight(request.request_id))
            raise
        except Exception as exc:
            elapsed = (time.perf_counter() - started) * 1000
            info = _error_info(exc)
            status = "timeout" if isinstance(exc, TimeoutError) and timeout else "error"
            BUS_HANDLED.labels(agent.agent_type, status).inc()
            if info.code == AgentErrorCode.INTERNAL_ERROR:
                ctx.log.exception("%s.%s failed", agent.agent_type, request.request_type)
            else:
                ctx.log.info("%s.%s: %s", agent.agent_type, request.request_type, info.message)
            return self._response(request, agent_id, status, elapsed, error=info)
        BUS_HANDLED.labels(agent.agent_type, "success").inc()
        elapsed = (time.perf_counter() - started) * 1000
        return self._response(request, agent_id, "success", elapsed, result=result)

    def _already_executed(self, request: AgentRequest, agent_id: str,
                          earlier: EarlierStart) -> AgentResponse:
        when = f" at {earlier.started_at.isoformat()}" if earlier.started_at else ""
        return self._response(request, agent_id, "error", 0.0, error=ErrorInfo(
            code=AgentErrorCode.ALREADY_EXECUTED, retryable=True,
            message=f"this signed request message (request {request.request_id}, attempt "
            f"{request.attempt}) was already started by {earlier.owner or 'a consumer'}{when}, "
            "and its answer is gone (deleted, expired, or that worker died before answering); "
            "a signed message never runs twice: send a new request (a retry or a workflow "
            "resume does)"))

    @staticmethod
    def _response(
        request: AgentRequest,
        agent_id: str,
        status: Any,
        elapsed_ms: float,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
    ) -> AgentResponse:
        return AgentResponse(
            request_id=request.request_id,
            source=agent_id,
            status=status,
            result=result,
            error=error,
            processing_ms=round(elapsed_ms, 3),
        )


def _error_info(exc: Exception) -> ErrorInfo:
    if isinstance(exc, HandlerError):
        return ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable,
                         blames_input=exc.blames_input, details=exc.details)
    if isinstance(exc, OrchestratorError):
        return ErrorInfo(code=exc.code, message=exc.message, retryable=False)
    if isinstance(exc, TimeoutError):
        return ErrorInfo(code=AgentErrorCode.HANDLER_TIMEOUT, message="the handler ran past the request's "
                         "deadline", retryable=True)
    if isinstance(exc, _TRANSIENT):
        return ErrorInfo(code=AgentErrorCode.TRANSIENT_ERROR, message=f"{type(exc).__name__}: {exc}",
                         retryable=True)
    return ErrorInfo(code=AgentErrorCode.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}")

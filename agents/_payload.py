"""Validating a request payload against a pydantic model, as a handler error that names the
bad fields."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.agent import HandlerError
from orchestrator.errors import AgentErrorCode

__all__ = ["parse_payload"]

M = TypeVar("M", bound=BaseModel)


def parse_payload(model: type[M], data: Any, what: str) -> M:
    """``model`` validated from ``data``.

    Raises:
        HandlerError: ``invalid_input`` naming each bad field as ``what.field: problem``.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{what}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"]
            else f"{what}: {e['msg']}"
            for e in exc.errors()
        )
        raise HandlerError(AgentErrorCode.INVALID_INPUT, problems) from None

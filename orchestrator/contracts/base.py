"""The pieces every contract is made of: :class:`Contract` (a payload or result model) and
:class:`Operation` (one request type of one agent type, with its two models)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import AgentError, AgentErrorCode

if TYPE_CHECKING:
    from ..calls import AgentCall

__all__ = ["Contract", "Operation", "problems"]

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class Contract(BaseModel):
    """A payload or result crossing the bus: unknown fields are refused, so a field renamed
    on one side fails loudly instead of being dropped."""

    model_config = ConfigDict(extra="forbid")


def problems(exc: ValidationError, what: str) -> str:
    """Each error of ``exc`` as ``what.field: problem``, joined by ``; ``."""
    return "; ".join(
        f"{what}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"]
        else f"{what}: {e['msg']}"
        for e in exc.errors()
    )


@dataclass(frozen=True)
class Operation(Generic[P, R]):
    """One request type of one agent type: ``target``'s ``request_type``, whose payload is a
    ``payload`` and whose answer is a ``result``."""

    target: str
    request_type: str
    payload: type[P]
    result: type[R]

    def parse_payload(self, data: Any) -> P:
        """``data`` (a dict off the wire, or already the model) as the payload model.

        Raises:
            HandlerError: ``invalid_input`` naming each bad field as ``payload.field: problem``.
        """
        if isinstance(data, self.payload):
            return data
        try:
            return self.payload.model_validate(data)
        except ValidationError as exc:
            from ..agent import HandlerError

            raise HandlerError(AgentErrorCode.INVALID_INPUT, problems(exc, "payload"),
                               blames_input=True) from None

    def dump_result(self, value: R | Mapping[str, Any]) -> dict[str, Any]:
        """A handler's answer, checked against the result model, as JSON-ready data.

        Raises:
            HandlerError: ``internal_error``: the agent broke its own contract.
        """
        try:
            model = value if isinstance(value, self.result) else self.result.model_validate(value)
        except ValidationError as exc:
            from ..agent import HandlerError

            raise HandlerError(
                AgentErrorCode.INTERNAL_ERROR,
                f"{self.target}.{self.request_type} answered outside its contract: "
                f"{problems(exc, 'result')}",
            ) from None
        return model.model_dump(mode="json")

    def parse_result(self, data: Any) -> R:
        """An answer off the wire as the result model.

        Raises:
            AgentError: ``internal_error``: the answer does not fit the contract (an agent of
                another version answered).
        """
        if isinstance(data, self.result):
            return data
        try:
            return self.result.model_validate(data)
        except ValidationError as exc:
            raise AgentError(
                self.target, AgentErrorCode.INTERNAL_ERROR,
                f"{self.request_type} answered outside its contract ({problems(exc, 'result')}); "
                "is the agent of another version?",
            ) from None

    async def call(self, payload: P, **kwargs: Any) -> AgentCall:
        """:func:`orchestrator.calls.call_agent` for this operation; the call's ``result`` is
        the result model. Keyword arguments are ``call_agent``'s (``locks``, ``timeout``...)."""
        from ..calls import call_agent

        if not isinstance(payload, self.payload):
            raise TypeError(f"{self.target}.{self.request_type} takes a {self.payload.__name__}, "
                            f"not a {type(payload).__name__}")
        call = await call_agent(self.target, self.request_type, payload, **kwargs)
        return replace(call, result=self.parse_result(call.result))

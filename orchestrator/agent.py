"""Defining agents: an agent type, its capabilities and async handlers by request type.

Example::

    from orchestrator.agent import Agent, RequestContext

    agent = Agent("docs", capabilities=["python", "markdown"], version="1")

    @agent.handler("render_module")
    async def render(payload: dict, ctx: RequestContext) -> dict:
        ...

Built-in agents are found by name through the ``orchestrator.agents`` entry-point group, so
the runtime never imports a particular agent.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .errors import AgentErrorCode, ErrorCode, InvalidConfiguration, InvalidInput, OrchestratorError
from .messages import AgentRequest

if TYPE_CHECKING:
    from .bus import EventBus
    from .contracts import Operation
    from .llm.services import ModelServices

__all__ = [
    "Agent",
    "Handler",
    "RequestContext",
    "HandlerError",
    "builtin_agents",
    "load_agents",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "orchestrator.agents"


@dataclass(frozen=True)
class RequestContext:
    """What a handler knows about the request it serves."""

    request: AgentRequest
    agent_id: str
    agent_type: str
    log: logging.LoggerAdapter[logging.Logger]
    bus: EventBus | None = None
    chat_model_spec: str | None = None
    #: the models, ledger and budgets of ``orchestrator.llm.calls.model_call`` (None: the
    #: default model only, nothing recorded)
    models: ModelServices | None = None
    #: this execution of the request: a re-execution after a crash is a new one, and its model
    #: calls are new ledger rows (``model_sequence`` numbers them within the execution)
    execution: str = field(default_factory=lambda: uuid.uuid4().hex)
    model_sequence: Iterator[int] = field(default_factory=itertools.count, repr=False,
                                          compare=False)

    def chat_model(self) -> Any | None:
        """The configured LangChain chat model (``ORCHESTRATOR_CHAT_MODEL``), or None."""
        return load_chat_model(self.chat_model_spec) if self.chat_model_spec else None

    @property
    def fencing(self) -> dict[str, int]:
        """Fencing token of each lock the requester holds, by resource."""
        return self.request.fencing

    async def check_fencing(self, resource: str) -> int:
        """Call before changing ``resource``: returns the request's fencing token for it
        (see :func:`orchestrator.locks.fencing.check_fencing`).

        Raises:
            HandlerError: ``missing_fencing_token`` when the requester did not hold the lock,
                ``stale_fencing_token`` when a newer holder has already been seen.
        """
        # imported here: fencing raises HandlerError, defined in this module
        from .locks.fencing import check_fencing

        return await check_fencing(self.request, resource, self.bus)


Handler = Callable[[dict[str, Any], RequestContext], Awaitable[Any]]


@functools.cache
def load_chat_model(spec: str) -> Any:
    """Build the chat model named by ``spec`` (``module:factory``), once per process.

    Raises:
        InvalidInput: the factory cannot be imported or does not return a chat model.
    """
    module_name, _, attr = spec.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
        model = factory()
    except (ImportError, AttributeError, TypeError) as exc:
        raise InvalidInput(f"ORCHESTRATOR_CHAT_MODEL={spec}: {exc}") from None
    if not hasattr(model, "ainvoke"):
        raise InvalidInput(f"ORCHESTRATOR_CHAT_MODEL={spec} did not return a LangChain chat model")
    return model


class HandlerError(OrchestratorError):
    """Raise from a handler to answer with a specific error code.

    ``retryable`` tells the requester whether trying again may succeed. ``blames_input``
    says the request is at fault, not the agent (a patch that does not apply, the user's
    command failing, a dirty repository): the answer still shows a working agent, so it
    never counts towards opening the agent type's circuit breaker. Mark every such error
    where it is raised.
    """

    code = ErrorCode.HANDLER_ERROR

    def __init__(self, code: AgentErrorCode | str, message: str, *, retryable: bool = False,
                 blames_input: bool = False, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.blames_input = blames_input
        self.details = details


@dataclass
class Agent:
    """An agent type with its handlers."""

    agent_type: str
    capabilities: list[str] = field(default_factory=list)
    version: str = "1"
    description: str = ""
    handlers: dict[str, Handler] = field(default_factory=dict)

    def handler(self, request_type: str | Operation[Any, Any]) -> Callable[[Handler], Handler]:
        """Register a handler for ``request_type``: a name, or an :class:`Operation` of this
        agent type's contract. With an operation the handler gets the payload as the
        operation's model (a malformed one is answered ``invalid_input`` naming the fields) and
        its answer is checked against the result model; the registered function (returned)
        takes a dict or the model, and returns the answer as it goes on the wire."""
        operation = None if isinstance(request_type, str) else request_type
        name = request_type if operation is None else operation.request_type
        if operation is not None and operation.target != self.agent_type:
            raise InvalidConfiguration(
                f"{operation.target}.{name} is not an operation of {self.agent_type}")

        def register(fn: Handler) -> Handler:
            if name in self.handlers:
                raise InvalidConfiguration(f"{self.agent_type} already handles {name!r}")
            if operation is not None:
                fn = _keeping_contract(operation, fn)
            self.handlers[name] = fn
            return fn

        return register

    async def call_locally(self, request_type: str, payload: dict[str, Any], *,
                           models: ModelServices | None = None) -> Any:
        """Run one handler in this process, without the bus (command-line tools use it;
        ``models``: what its model calls use, see :mod:`orchestrator.llm.services`).

        Raises:
            InvalidInput: the agent has no such request type.
            HandlerError: what the handler raised.
        """
        handler = self.handlers.get(request_type) or self.handlers.get("*")
        if handler is None:
            raise InvalidInput(f"{self.agent_type} has no request type {request_type!r}")
        request = AgentRequest(request_id=str(uuid.uuid4()), source="local", target=self.agent_type,
                               request_type=request_type, payload=payload, reply_to="local")
        ctx = RequestContext(request=request, agent_id=f"{self.agent_type}@local",
                             agent_type=self.agent_type,
                             log=logging.LoggerAdapter(log, {"request_id": request.request_id}),
                             models=models)
        return await handler(payload, ctx)

    def with_handlers(self, handlers: dict[str, Handler]) -> Agent:
        """A copy of this agent whose handlers are replaced by ``handlers`` (tests use it)."""
        return Agent(self.agent_type, list(self.capabilities), self.version, self.description,
                     dict(handlers))


def _keeping_contract(operation: Operation[Any, Any], fn: Callable[..., Awaitable[Any]]) -> Handler:
    @functools.wraps(fn)
    async def handle(payload: Any, ctx: RequestContext) -> Any:
        return operation.dump_result(await fn(operation.parse_payload(payload), ctx))

    return handle


def builtin_agents() -> dict[str, Agent]:
    """The built-in agents registered under the ``orchestrator.agents`` entry points."""
    found: dict[str, Agent] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            agent = ep.load()
        except Exception as exc:  # one broken plug-in must not hide the others
            log.error("could not load agent %s from %s: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(agent, Agent):
            log.error("entry point %s does not point at an Agent", ep.value)
            continue
        found[agent.agent_type] = agent
    return found


def load_agents(names: list[str]) -> list[Agent]:
    """The built-in agents with these type names (only their modules are imported).

    Raises:
        InvalidInput: a name is not a known agent type; the message lists the known ones.
    """
    points = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    unknown = [n for n in names if n not in points]
    if unknown:
        raise InvalidInput(
            f"unknown agent type(s) {', '.join(unknown)}; known: {', '.join(sorted(points))}"
        )
    agents = []
    for name in names:
        agent = points[name].load()
        if not isinstance(agent, Agent):
            raise InvalidInput(f"entry point {points[name].value} does not point at an Agent")
        agents.append(agent)
    return agents

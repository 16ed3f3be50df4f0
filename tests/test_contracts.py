"""The contract machinery: an :class:`Operation` validates the payload on the agent's side with
the model the graph sent, checks the agent's answer against the result model, and reads the
answer as that model on the graph's side."""

from __future__ import annotations

import pytest

from orchestrator.agent import Agent, HandlerError
from orchestrator.contracts import Contract, Operation
from orchestrator.errors import AgentError, AgentErrorCode, InvalidConfiguration
from orchestrator.testing import stand_in


class Greet(Contract):
    name: str
    times: int = 1


class Greeting(Contract):
    text: str


GREET = Operation("greeter", "greet", Greet, Greeting)


def greeter(answer=None) -> Agent:
    agent = Agent("greeter")

    @agent.handler(GREET)
    async def greet(payload: Greet, ctx) -> Greeting:
        assert isinstance(payload, Greet)
        return answer if answer is not None else Greeting(text=" ".join([payload.name] * payload.times))

    return agent


async def test_a_handler_gets_the_model_and_answers_plain_data() -> None:
    assert await greeter().call_locally("greet", {"name": "ana", "times": 2}) == {"text": "ana ana"}


@pytest.mark.parametrize("payload, named", [
    ({}, "payload.name: Field required"),
    ({"name": "ana", "times": "often"}, "payload.times"),
    ({"name": "ana", "colour": "red"}, "payload.colour: Extra inputs are not permitted"),
])
async def test_a_malformed_payload_is_invalid_input_naming_the_field(payload, named) -> None:
    with pytest.raises(HandlerError) as caught:
        await greeter().call_locally("greet", payload)
    assert caught.value.code == AgentErrorCode.INVALID_INPUT
    assert named in str(caught.value)


async def test_an_answer_outside_the_contract_never_leaves_the_agent() -> None:
    with pytest.raises(HandlerError) as caught:
        await greeter(answer={"txt": "hi"}).call_locally("greet", {"name": "ana"})
    assert caught.value.code == AgentErrorCode.INTERNAL_ERROR
    assert "greeter.greet answered outside its contract" in str(caught.value)


def test_an_operation_registers_only_on_its_own_agent_type() -> None:
    with pytest.raises(InvalidConfiguration, match="greeter.greet is not an operation of docs"):
        Agent("docs").handler(GREET)


async def test_the_graph_side_sends_the_model_and_reads_a_typed_result(orchestrator_factory) -> None:
    orch = await orchestrator_factory(stand_ins=[greeter()], builtin=False, workflows={})
    call = await GREET.call(Greet(name="bo", times=3), runtime=orch.runtime)
    assert call.result == Greeting(text="bo bo bo")
    assert call.response.result == {"text": "bo bo bo"}  # plain data on the wire
    with pytest.raises(TypeError, match="takes a Greet, not a dict"):
        await GREET.call({"name": "bo"}, runtime=orch.runtime)  # type: ignore[arg-type]


async def test_an_answer_of_another_shape_is_an_agent_error_on_the_graph_side(
    orchestrator_factory,
) -> None:
    old = stand_in("greeter", {"greet": lambda payload, ctx: _answer({"words": ["hi"]})})
    orch = await orchestrator_factory(stand_ins=[old], builtin=False, workflows={})
    with pytest.raises(AgentError, match="greet answered outside its contract"):
        await GREET.call(Greet(name="bo"), runtime=orch.runtime)


async def _answer(value):
    return value

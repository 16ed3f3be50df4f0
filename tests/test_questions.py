"""Typed human questions (orchestrator.questions): the interrupt carries the answer's schema, a
malformed answer is refused before resuming and asked again inside the graph."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from orchestrator.workflows.canary import GateAnswer
from orchestrator.workflows.plan_execution import DeadLetterAnswer
from orchestrator.workflows.pr_deployment import ApprovalAnswer
from orchestrator.workflows.self_healing import EscalationAnswer
from pydantic import ValidationError

from orchestrator.errors import InvalidAnswer, InvalidInput
from orchestrator.questions import Answer, ask, check_answer, describe_question, question_value


class Choice(Answer):
    pick: Literal["a", "b"]


class S(TypedDict, total=False):
    picked: dict[str, Any]


def _graph():
    def node(state: S) -> dict[str, Any]:
        answer = ask(Choice, kind="choice", question="a or b?", context={"why": "testing"})
        return {"picked": answer.model_dump()}

    builder = StateGraph(S)
    builder.add_node("node", node)
    builder.add_edge(START, "node")
    builder.add_edge("node", END)
    return builder.compile(checkpointer=InMemorySaver())


def test_the_interrupt_value_carries_the_question_and_the_answers_schema() -> None:
    graph, config = _graph(), {"configurable": {"thread_id": "t"}}
    graph.invoke({}, config)
    value = graph.get_state(config).interrupts[0].value
    assert value["kind"] == "choice" and value["question"] == "a or b?"
    assert value["context"] == {"why": "testing"}
    schema = value["schema"]
    assert schema["required"] == ["by", "pick"] and schema["additionalProperties"] is False
    assert schema["properties"]["pick"]["enum"] == ["a", "b"]


def test_a_malformed_answer_inside_the_graph_is_asked_again_never_decides() -> None:
    graph, config = _graph(), {"configurable": {"thread_id": "t"}}
    graph.invoke({}, config)
    for bad, problem in [("a", "the answer: should be a JSON object"),
                         ({"pick": "c", "by": "x"}, "pick: Input should be 'a' or 'b'"),
                         ({"pick": "a"}, "by: Field required"),
                         ({"pick": "a", "by": "x", "pik": "b"}, "pik: Extra inputs")]:
        graph.invoke(Command(resume=bad), config)
        state = graph.get_state(config)
        assert "picked" not in state.values and state.next == ("node",)
        assert problem in state.interrupts[0].value["context"]["problem_with_last_answer"]
        assert state.interrupts[0].value["context"]["why"] == "testing"
    graph.invoke(Command(resume={"pick": "b", "by": "ana"}), config)
    assert graph.get_state(config).values["picked"] == {"by": "ana", "pick": "b"}


@pytest.mark.parametrize(("model", "answer", "field"), [
    (ApprovalAnswer, {"approve": "false", "by": "x"}, "approve"),
    (ApprovalAnswer, {"approve": 1, "by": "x"}, "approve"),
    (ApprovalAnswer, {"approved": True, "by": "x"}, "approved"),
    (ApprovalAnswer, {"approve": True}, "by"),
    (ApprovalAnswer, {"approve": True, "by": "  "}, "by"),
    (GateAnswer, {"action": "roll back", "by": "x"}, "action"),
    (GateAnswer, "rollback", "the answer"),
    (DeadLetterAnswer, {"action": "later", "by": "x"}, "action"),
    (EscalationAnswer, "restart", "the answer"),
    (EscalationAnswer, {"actoin": {"type": "restart"}, "by": "me"}, "actoin"),
    (EscalationAnswer, {"action": {"type": "reboot"}, "by": "me"}, "action.type"),
    (EscalationAnswer, {"action": {"type": "wait"}, "by": "me"}, "seconds"),
    (EscalationAnswer, {"action": {"type": "restart"}, "give_up": True, "by": "me"},
     "exactly one"),
])
def test_the_facade_check_refuses_what_the_model_refuses(model, answer, field) -> None:
    value = question_value(model, kind="k", question="q?")
    with pytest.raises(InvalidAnswer, match=field) as info:
        check_answer("T", [value], answer)
    assert isinstance(info.value, InvalidInput)  # exit 2 on the CLI
    assert "orchestrator resume T --value" in str(info.value)
    with pytest.raises(ValidationError):  # and the model (the node's check) agrees
        model.model_validate(answer)


@pytest.mark.parametrize("model", [ApprovalAnswer, GateAnswer, DeadLetterAnswer,
                                   EscalationAnswer])
def test_every_example_in_a_schema_is_an_answer_both_checks_accept(model) -> None:
    value = question_value(model, kind="k", question="q?")
    examples = value["schema"]["examples"]
    assert examples
    for example in examples:
        check_answer("T", [value], example)
        assert model.model_validate(example).by


def test_no_answer_is_refused_with_the_question_and_its_schema() -> None:
    value = question_value(ApprovalAnswer, kind="approval", question="merge?",
                           context={"summary": {"tests": "4 passed"}})
    with pytest.raises(InvalidAnswer) as info:
        check_answer("T", [value], None)
    message = str(info.value)
    assert "waits for an answer" in message and "question (approval): merge?" in message
    assert '"approve": {"description"' in message  # the schema
    lines = describe_question(value, "T")
    assert lines[0] == "question (approval): merge?"
    assert "answer: {approve: boolean, comment?: string, by: string}" in lines
    assert lines[-1].startswith("resume with: orchestrator resume T --value '{\"approve\": false")

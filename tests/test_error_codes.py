"""The error codes are one enum, every error is in the tree, and the README documents each code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from orchestrator.workflows.plans import PlanError

import orchestrator.errors as errors
from orchestrator.agent import HandlerError
from orchestrator.bus import DecodeFailure
from orchestrator.embedded import EmbeddedServiceError
from orchestrator.errors import AgentErrorCode, ErrorCode, OrchestratorError

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_codes(header: str) -> list[str]:
    """The first-column codes of the README table whose header row starts with ``header``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    codes = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        match = re.match(r"\|\s*`([a-z_]+)`\s*\|", line)
        assert match, f"README row without a `code` in its first column: {line}"
        codes.append(match.group(1))
    return codes


@pytest.mark.parametrize(("header", "enum"), [("Code", ErrorCode), ("Agent code", AgentErrorCode)])
def test_the_readme_documents_every_code_and_no_stale_one(header: str, enum: type) -> None:
    documented = _readme_codes(header)
    assert len(documented) == len(set(documented)), "a code documented twice"
    assert set(documented) == {member.value for member in enum}


def _tree(cls: type) -> list[type]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _tree(child))]


def test_every_exception_class_declares_a_code_from_the_enum() -> None:
    classes = _tree(OrchestratorError)
    # the classes that used to be plain builtins are in the tree now
    for cls in (EmbeddedServiceError, PlanError, DecodeFailure, errors.WorkflowExists,
                errors.CheckpointNotFound, errors.DeadLetterNotFound, errors.WrongContext,
                errors.InvalidConfiguration):
        assert cls in classes
    for cls in classes:
        assert "code" in vars(cls), f"{cls.__name__} does not declare its own code"
        assert isinstance(cls.code, ErrorCode), cls
    # one class per code: a code names one kind of error
    assert len({cls.code for cls in classes}) == len(classes)
    # the codes are the strings they always were
    assert ErrorCode.INVALID_INPUT == "invalid_input" and errors.WorkflowBusy.code == "workflow_busy"
    assert errors.InvalidAnswer("x").to_dict() == {"code": "invalid_answer", "message": "x"}


def test_builtin_bases_are_kept_for_existing_except_clauses() -> None:
    assert issubclass(PlanError, ValueError) and issubclass(errors.WorkflowExists, ValueError)
    assert issubclass(errors.InvalidConfiguration, ValueError)
    assert issubclass(EmbeddedServiceError, RuntimeError) and issubclass(errors.WrongContext, RuntimeError)
    assert issubclass(errors.DeadLetterNotFound, KeyError)
    # a KeyError's str() would quote the message; ours reads like any other error
    assert str(errors.DeadLetterNotFound("no dead letter 1-0")) == "no dead letter 1-0"


def test_handler_errors_carry_agent_codes() -> None:
    exc = HandlerError(AgentErrorCode.PATCH_FAILED, "does not apply")
    assert exc.code == "patch_failed" and exc.to_dict()["code"] == "patch_failed"

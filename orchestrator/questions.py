"""Typed questions to humans: every ``interrupt`` declares the model of its answer.

A graph asks with :func:`ask`::

    class Approval(Answer):
        approve: bool
        comment: str | None = None

    answer = ask(Approval, kind="approval", question="merge feat into main?",
                 context={"summary": ...})
    if answer.approve: ...

The interrupt's value is ``{"kind", "question", "schema", "context"}``: ``schema`` is the
answer model's JSON Schema (with ``examples``), so the CLI, an HTTP API or a form can show
what is expected, and :func:`check_answer` refuses a malformed answer before the workflow is
touched (``InvalidAnswer``, a subclass of ``InvalidInput``: exit 2 on the CLI). The node checks
again with the model (Studio and direct LangGraph calls do not go through the facade): a
malformed answer there never decides, the same question is asked again with
``problem_with_last_answer`` in its context.

Answers are strict and closed (``extra="forbid"``; a JSON boolean, not ``"false"``; enums for
actions) and every answer says who gave it (``by``).
"""

from __future__ import annotations

import functools
import inspect
import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from .errors import InvalidAnswer

__all__ = ["Answer", "ask", "question_value", "answer_schema", "parse_answer", "check_answer",
           "is_question", "describe_question", "InvalidAnswer"]

A = TypeVar("A", bound=BaseModel)

_QUESTION_KEYS = frozenset({"kind", "question", "schema", "context"})


class Answer(BaseModel):
    """Base of answer models: strict types, no unknown keys, and who answers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    by: str = Field(min_length=1, max_length=200, pattern=r"\S",
                    description="who gives this answer (recorded with the decision)")


class _ExamplesAsWritten(GenerateJsonSchema):
    """Pydantic's schema, but examples keep their keys in the order they were written."""

    def sort(self, value: Any, parent_key: str | None = None) -> Any:
        if parent_key == "examples":
            return value
        return super().sort(value, parent_key)

    def _sort_recursive(self, value: Any, parent_key: str | None = None) -> Any:
        if parent_key == "examples":
            return value
        return super()._sort_recursive(value, parent_key)


@functools.cache
def answer_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of ``model`` (computed once per model)."""
    return model.model_json_schema(schema_generator=_ExamplesAsWritten)


def question_value(
    model: type[BaseModel], *, kind: str, question: str, context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The interrupt value of a question whose answer is a ``model``."""
    return {"kind": kind, "question": question, "schema": answer_schema(model),
            "context": dict(context or {})}


def is_question(value: Any) -> bool:
    """Whether an interrupt value is a typed question (it carries a schema)."""
    return (isinstance(value, dict) and _QUESTION_KEYS <= value.keys()
            and isinstance(value["schema"], dict))


def _problems(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # an optional field's "or None" branch only repeats the real complaint
    real = [e for e in errors if e["type"] != "none_required"] or errors
    parts = []
    for error in real[:8]:
        # union branch labels (``tagged-union[...]``, ``literal[True]``) are pydantic's, not ours
        where = ".".join(str(p) for p in error["loc"] if "[" not in str(p)) or "the answer"
        shown = "" if error["type"] == "missing" else f" (got {_short(error.get('input'))})"
        message = ("should be a JSON object" if error["type"] in ("model_type", "dict_type")
                   else error["msg"].removeprefix("Value error, "))
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(dict.fromkeys(parts))


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_answer(model: type[A], answer: Any) -> A:
    """``answer`` validated by ``model``.

    Raises:
        InvalidAnswer: it does not fit; the message names the fields.
    """
    try:
        return model.model_validate(answer)
    except ValidationError as exc:
        raise InvalidAnswer(_problems(exc), problem=_problems(exc)) from None


@functools.cache
def _supports_response_schema() -> bool:
    from langgraph.types import interrupt

    return "response_schema" in inspect.signature(interrupt).parameters


def ask(
    model: type[A], *, kind: str, question: str, context: Mapping[str, Any] | None = None
) -> A:
    """Ask a human from inside a graph node and return the validated answer.

    A LangGraph ``interrupt`` whose value is :func:`question_value`. An answer the model
    refuses never decides: the same question is asked again, with what was wrong in
    ``context["problem_with_last_answer"]``.
    """
    from langgraph.types import interrupt

    problem: str | None = None
    while True:
        shown = dict(context or {})
        if problem is not None:
            shown["problem_with_last_answer"] = problem
        value = question_value(model, kind=kind, question=question, context=shown)
        # newer LangGraph also surfaces the schema to clients (Studio renders a form); a dict
        # schema is only shown, never used to validate, so the loop below stays in charge
        raw = (interrupt(value, response_schema=value["schema"])
               if _supports_response_schema() else interrupt(value))
        try:
            return parse_answer(model, raw)
        except InvalidAnswer as exc:
            problem = exc.problem


# -- before resuming: the facade's check ----------------------------------------------------------


def _schema_problems(schema: dict[str, Any], answer: Any) -> str | None:
    from jsonschema import exceptions, validators

    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError:
        return None  # not ours to judge: the node validates with its model
    found = list(cls(schema).iter_errors(answer))
    # a value of the wrong type makes every other complaint about it noise
    wrong_type = {tuple(e.absolute_path) for e in found if e.validator == "type"}
    found = [e for e in found if e.validator == "type" or tuple(e.absolute_path) not in wrong_type]
    found.sort(key=lambda e: [str(p) for p in e.absolute_path])
    parts = [f"{where}: {message}" for error in found[:8] for where, message in _explain(error)]
    return "; ".join(dict.fromkeys(parts)) or None


def _explain(error: Any) -> list[tuple[str, str]]:
    """(field, problem) pairs for a JSON Schema error; for a union, those of the branch the
    answer meant (its discriminator) rather than "not valid under any of the given schemas"."""
    from jsonschema import exceptions

    where = ".".join(str(p) for p in error.absolute_path) or "the answer"
    alternatives = error.validator_value if error.validator in ("oneOf", "anyOf") else None
    if not alternatives or not isinstance(alternatives, list):
        return [(where, error.message)]
    if all(isinstance(s, dict) and set(s) == {"required"} for s in alternatives):
        names = ", ".join(repr(n) for s in alternatives for n in s["required"])
        return [(where, f"give exactly one of {names}")]
    discriminator = error.schema.get("discriminator") if isinstance(error.schema, dict) else None
    if isinstance(discriminator, dict) and isinstance(error.instance, dict):
        key, mapping = discriminator.get("propertyName"), discriminator.get("mapping") or {}
        tag = error.instance.get(key)
        target = mapping.get(tag) if isinstance(tag, str) else None
        if target is None:
            return [(f"{where}.{key}" if where != "the answer" else str(key),
                     f"{tag!r} is not one of {', '.join(repr(m) for m in mapping)}")]
        branch = {i for i, s in enumerate(alternatives) if s.get("$ref") == target}
        chosen = [c for c in error.context or ()
                  if c.relative_schema_path and c.relative_schema_path[0] in branch]
        if chosen:
            return [pair for c in chosen for pair in _explain(c)]
    best = exceptions.best_match(error.context or ())
    if best is not None and best is not error:
        return _explain(best)
    return [(where, error.message)]


def check_answer(thread_id: str, pending: Iterable[Any], answer: Any) -> None:
    """Refuse, before anything changes, an answer that cannot answer the pending questions.

    Args:
        pending: the values of the workflow's pending interrupts.

    Raises:
        InvalidAnswer: no answer was given, or it does not fit a question's schema.
    """
    values = list(pending)
    if answer is None:
        lines = [line for v in values for line in describe_question(v, thread_id, schema=True)]
        raise InvalidAnswer(
            f"workflow {thread_id} waits for an answer; give it with --value (nothing was "
            "changed):\n  " + "\n  ".join(lines), problem="no answer given")
    for value in values:
        if not is_question(value):
            continue
        problem = _schema_problems(value["schema"], answer)
        if problem:
            lines = describe_question(value, thread_id, context=False)
            raise InvalidAnswer(
                f"answer refused, the question stays pending and nothing was changed: "
                f"{problem}\n  " + "\n  ".join(lines), problem=problem)


# -- showing a question -----------------------------------------------------------------------------


def _type_of(prop: Any, defs: Mapping[str, Any]) -> str:
    if not isinstance(prop, dict):
        return "any"
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "$ref" in prop:
        target = defs.get(str(prop["$ref"]).rsplit("/", 1)[-1], {})
        return _type_of(target, defs) if "properties" not in target else _object_of(target, defs)
    if "properties" in prop:
        return _object_of(prop, defs)
    for key in ("anyOf", "oneOf"):
        if key in prop:
            kinds = [_type_of(p, defs) for p in prop[key] if p.get("type") != "null"]
            return " | ".join(kinds)
    if prop.get("type") == "array":
        return f"list of {_type_of(prop.get('items'), defs)}"
    return str(prop.get("type", "any"))


def _object_of(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    required = set(schema.get("required") or ())
    props = dict(schema.get("properties") or {})
    if "by" in props:  # who answers reads best last
        props["by"] = props.pop("by")
    fields = [f"{name}{'' if name in required else '?'}: {_type_of(p, defs)}"
              for name, p in props.items()]
    return "{" + ", ".join(fields) + "}"


def describe_question(
    value: Any, thread_id: str, *, schema: bool = False, context: bool = True
) -> list[str]:
    """Lines that show a pending question: what is asked, what answer is expected (fields and
    examples from the schema) and the ``orchestrator resume`` command lines."""
    if not is_question(value):  # a graph of someone else's that asks free-form
        return [f"waiting for input: {_short(value, 2000)}",
                f"resume with: orchestrator resume {thread_id} --value '<JSON>'"]
    shape = value["schema"]
    lines = [f"question ({value['kind']}): {value['question']}"]
    ctx = dict(value.get("context") or {})
    problem = ctx.pop("problem_with_last_answer", None)
    if problem:
        lines.append(f"problem with the last answer: {problem}")
    if context and ctx:
        lines.append(f"context: {json.dumps(ctx, default=str, sort_keys=True)}")
    lines.append(f"answer: {_type_of(shape, shape.get('$defs') or {})}")
    if schema:
        lines.append(f"schema: {json.dumps(shape, sort_keys=True)}")
    examples = shape.get("examples") or []
    for example in examples:
        lines.append(f"resume with: orchestrator resume {thread_id} "
                     f"--value {shlex.quote(json.dumps(example))}")
    if not examples:
        lines.append(f"resume with: orchestrator resume {thread_id} --value '<JSON>'")
    return lines

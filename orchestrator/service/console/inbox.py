"""The inbox: every pending question as a form built from its answer's JSON Schema, answered
through ``RunService.resume`` (checked now, queued for a runner) by the session's token.

The question's decision (its first required boolean or enum field) is a row of buttons:
Approve / Reject for an approval, one button per choice for an enum (the canary gate's
continue / roll back); the other fields are inputs by type (text, number, select, checkbox, a
JSON box for lists and objects). ``by`` is not asked: the answer is given by the session's
token name, which the run records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.errors import InvalidAnswer, InvalidInput
from orchestrator.questions import is_question
from orchestrator.service.console.web import View, page

if TYPE_CHECKING:
    from orchestrator.service.app import ServerContext

__all__ = ["Field", "Question", "routes", "pending_questions", "question_of", "form_fields",
           "answer_from_form"]

#: how many waiting workflows the inbox shows
LIMIT = 200


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str  # buttons | checkbox | select | text | textarea | number | integer | json
    required: bool
    description: str = ""
    options: tuple[Any, ...] = ()
    default: Any = None


@dataclass(frozen=True)
class Question:
    thread_id: str
    workflow_type: str
    kind: str
    text: str
    context: dict[str, Any]
    fields: list[Field]
    waiting_since: Any
    schema: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def decision(self) -> Field | None:
        return next((f for f in self.fields if f.kind == "buttons"), None)

    @property
    def problem(self) -> str | None:
        return self.context.get("problem_with_last_answer")


def form_fields(schema: dict[str, Any]) -> list[Field]:
    """The form of an answer schema (``by`` left out: the session answers)."""
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    found: list[Field] = []
    decided = False
    for name, prop in (schema.get("properties") or {}).items():
        if name == "by":
            continue
        prop = _resolve(prop, defs)
        label = str(prop.get("title") or name.replace("_", " ").capitalize())
        kind, options = _kind(prop)
        if not decided and name in required and kind in ("checkbox", "select"):
            kind, decided = "buttons", True
            options = options or (True, False)
        found.append(Field(name, label, kind, name in required, str(prop.get("description", "")),
                           options, prop.get("default")))
    return found


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A property with its ``$ref`` followed and an optional's ``null`` branch dropped."""
    if "$ref" in prop:
        prop = {**defs.get(str(prop["$ref"]).rsplit("/", 1)[-1], {}),
                **{k: v for k, v in prop.items() if k != "$ref"}}
    branches = prop.get("anyOf")
    if isinstance(branches, list):
        real = [b for b in branches if b.get("type") != "null"]
        if len(real) == 1:
            merged = {**prop, **_resolve(real[0], defs)}
            merged.pop("anyOf", None)
            return merged
    return prop


def _kind(prop: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    if "enum" in prop:
        return "select", tuple(prop["enum"])
    if "const" in prop:
        return "select", (prop["const"],)
    kind = prop.get("type")
    if kind == "boolean":
        return "checkbox", ()
    if kind in ("integer", "number"):
        return kind, ()
    if kind == "string":
        return ("textarea" if int(prop.get("maxLength", 0)) > 200 else "text"), ()
    return "json", ()


def answer_from_form(fields: list[Field], form: dict[str, str], by: str) -> dict[str, Any]:
    """The answer a submitted form gives, by ``by``.

    Raises:
        InvalidAnswer: a number or JSON field that does not parse (the schema check after
            this names everything else).
    """
    answer: dict[str, Any] = {"by": by}
    for f in fields:
        raw = form.get(f.name)
        if f.kind == "checkbox":
            answer[f.name] = raw in ("true", "on")
            continue
        if raw is None or (raw.strip() == "" and f.kind != "buttons"):
            if f.required and f.kind in ("text", "textarea"):
                answer[f.name] = ""
            continue
        answer[f.name] = _value(f, raw)
    return answer


def _value(f: Field, raw: str) -> Any:
    try:
        if f.kind in ("buttons", "select"):
            # the choice's JSON value: the options are rendered with json.dumps
            return json.loads(raw)
        if f.kind == "integer":
            return int(raw)
        if f.kind == "number":
            return float(raw)
        if f.kind == "json":
            return json.loads(raw)
    except ValueError:
        raise InvalidAnswer(f"{f.name}: {raw[:60]!r} is not a valid {f.kind}",
                            problem=f"{f.name} does not parse") from None
    return raw


async def question_of(ctx: ServerContext, thread_id: str) -> Question | None:
    """The pending question of a workflow, or None when it waits for none."""
    details = await ctx.orch.get(thread_id)
    if details.record.status != "interrupted":
        return None
    value = next((i["value"] for i in details.interrupts if is_question(i["value"])), None)
    if value is None:
        return None
    return Question(thread_id, details.record.workflow_type, str(value["kind"]),
                    str(value["question"]), dict(value.get("context") or {}),
                    form_fields(value["schema"]), details.record.updated_at, value["schema"])


async def pending_questions(ctx: ServerContext) -> list[Question]:
    """Every workflow's pending question, the longest waiting first."""
    waiting = await ctx.orch.list_workflows("interrupted", limit=LIMIT)
    found = [q for r in waiting if (q := await question_of(ctx, r.thread_id)) is not None]
    return sorted(found, key=lambda q: q.waiting_since)


def routes(ctx: ServerContext) -> list[BaseRoute]:
    async def inbox(view: View) -> Response:
        """The inbox: every pending question"""
        return view.render("inbox.html", questions=await pending_questions(ctx), errors={})

    async def questions(view: View) -> Response:
        """The inbox's questions alone (a new question re-fetches them)"""
        return view.render("fragments/questions.html", questions=await pending_questions(ctx),
                           errors={})

    async def answer(view: View) -> Response:
        """Answer a workflow's pending question (operator)"""
        thread_id = view.param("thread_id")
        question = await question_of(ctx, thread_id)
        if question is None:
            return await _answered(view, thread_id, None,
                                   "this workflow waits for no answer (any more)", 409)
        by = view.session.identity.name
        try:
            value = answer_from_form(question.fields, view.form, by)
            run = await ctx.runs.resume(thread_id, value, by=by)
        except InvalidInput as exc:
            return await _answered(view, thread_id, question, str(exc), 422)
        await view.audit("run.resume", thread_id, {"value": value, "run_id": run.run_id,
                                                   "via": "console"})
        return await _answered(view, thread_id, None, "", 202, value=value)

    async def _answered(view: View, thread_id: str, question: Question | None, error: str,
                        status: int, value: Any = None) -> Response:
        if view.is_htmx:
            if question is not None:
                return view.render("fragments/question.html", status, q=question, error=error)
            return view.render("fragments/answered.html", status, thread_id=thread_id,
                               value=value, error=error)
        if status == 202:
            return RedirectResponse("/console/inbox", 303)
        questions = await pending_questions(ctx)
        return view.render("inbox.html", status, questions=questions, errors={thread_id: error})

    return [
        Route("/console/inbox", page(ctx, inbox), methods=["GET"]),
        Route("/console/inbox/fragment", page(ctx, questions), methods=["GET"]),
        Route("/console/inbox/{thread_id}/answer", page(ctx, answer, role="operator"),
              methods=["POST"]),
    ]

"""In-process chat models that report usage, for tests of the ledger and budgets that need no
HTTP server (test doubles; they live in tests/ only).

``UsageFakeChatModel`` answers from ``messages`` (an iterator, as ``GenericFakeChatModel``) or
from ``respond`` (a function of the prompt's messages), and puts ``usage_metadata`` on every
answer: input tokens counted from the prompt and output tokens from the answer with
:func:`tests.support.openai_server.count_tokens`, unless the answer carries its own or
``report_usage`` is off (a provider that reports none). ``StreamingUsageFakeChatModel`` streams
the answer in chunks that each carry part of the usage (input tokens on the first, one output
token per chunk, the rest on the last), as providers do: only their sum is the call's usage.

Structured output: ``bind_tools`` keeps the tools' names, so ``with_structured_output(Schema)``
works when the answer is a dict (sent as a call of the first bound tool) or an ``AIMessage``
with ``tool_calls``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from .openai_server import count_tokens

Answer = str | dict | AIMessage


def messages_text(messages: Sequence[BaseMessage]) -> str:
    return "\n".join(m.content if isinstance(m.content, str) else json.dumps(m.content)
                     for m in messages)


def usage_of(prompt: str, answer: str, cached: int = 0) -> UsageMetadata:
    """The usage the fakes report for ``prompt`` answered with ``answer``."""
    inp, out = count_tokens(prompt), count_tokens(answer)
    usage = UsageMetadata(input_tokens=inp, output_tokens=out, total_tokens=inp + out)
    if cached:
        usage["input_token_details"] = {"cache_read": cached}
    return usage


class UsageFakeChatModel(GenericFakeChatModel):
    """A fake chat model whose answers carry ``usage_metadata``; every prompt is kept in
    ``prompts``."""

    messages: Iterator[Answer] = Field(default_factory=lambda: iter(()))
    respond: Callable[[list[BaseMessage]], Answer] | None = None
    report_usage: bool = True
    cached_tokens: int = 0
    model_name: str = "fake-usage"
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    tool_names: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "usage-fake-chat-model"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> UsageFakeChatModel:
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return self.model_copy(update={"tool_names": names})

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        self.prompts.append(list(messages))
        answer = self.respond(messages) if self.respond is not None else next(self.messages)
        if isinstance(answer, dict):
            name = self.tool_names[0] if self.tool_names else "answer"
            answer = AIMessage(content="", tool_calls=[
                {"name": name, "args": answer, "id": f"call_{uuid.uuid4().hex[:8]}"}])
        elif isinstance(answer, str):
            answer = AIMessage(content=answer)
        if self.report_usage and answer.usage_metadata is None:
            text = answer.content if isinstance(answer.content, str) else ""
            text += "".join(json.dumps(c["args"]) for c in answer.tool_calls)
            answer = answer.model_copy(update={"usage_metadata": usage_of(
                messages_text(messages), text, self.cached_tokens)})
        return answer.model_copy(update={
            "response_metadata": {**answer.response_metadata, "model_name": self.model_name}})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])


class StreamingUsageFakeChatModel(UsageFakeChatModel):
    """Streams its answers; the usage is spread over the chunks and only their sum is right."""

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        answer = self._answer(messages)
        text = answer.content if isinstance(answer.content, str) else ""
        pieces = [text[i:i + 8] for i in range(0, len(text), 8)] or [""]
        usage = answer.usage_metadata
        each = 1 if usage is not None and usage["output_tokens"] >= len(pieces) else 0
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            chunk_usage = None
            if usage is not None:
                inp = usage["input_tokens"] if i == 0 else 0
                out = usage["output_tokens"] - each * (len(pieces) - 1) if last else each
                chunk_usage = UsageMetadata(input_tokens=inp, output_tokens=out,
                                            total_tokens=inp + out)
                if i == 0 and usage.get("input_token_details"):
                    chunk_usage["input_token_details"] = usage["input_token_details"]
            message = AIMessageChunk(
                content=piece, usage_metadata=chunk_usage,
                response_metadata={"model_name": self.model_name} if last else {},
                tool_call_chunks=[
                    {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"],
                     "index": j} for j, c in enumerate(answer.tool_calls)] if last else [])
            chunk = ChatGenerationChunk(message=message)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

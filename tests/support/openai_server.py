"""An OpenAI-compatible chat completions server for tests, on a free loopback port.

The real ``langchain-openai`` client talks to it (``ORCHESTRATOR_CHAT_MODEL=openai:<name>``,
``OPENAI_BASE_URL``, ``OPENAI_API_KEY=test``: see :meth:`OpenAIServer.env`), so the whole
provider path runs with no network: request payloads, structured output, streamed chunks and the
usage the provider reports. The test scripts it with a function from the request's JSON to the
reply; every request and the usage answered to it are recorded.

It runs uvicorn in a thread of its own, so it answers while the test blocks on a subprocess
(a CLI run, a worker) as well as while an async test awaits.

Replies a script may return:

* ``str``: the assistant's text.
* ``dict`` / ``list``: structured output, sent the way the request asked for it: the JSON text
  as content when ``response_format`` is ``json_schema`` / ``json_object``, or one call of the
  forced (or only) tool when the request carries ``tools`` (``with_structured_output``'s
  ``function_calling`` method).
* :class:`Reply`: full control (tool calls, token counts, no usage, an HTTP error).

Token counts default to :func:`count_tokens` of the request's messages and of the reply, so a
test can predict them; a ``Reply`` may set them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .processes import free_port, wait_until


def count_tokens(text: str) -> int:
    """The server's token count: one per four characters, at least one. Deterministic, so a
    test can compute what the ledger must hold."""
    return max(1, len(text) // 4)


def prompt_text(body: dict[str, Any]) -> str:
    """The request's messages' text, joined: what prompt tokens are counted from."""
    parts: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the request's last user message (what most scripts branch on)."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""
    return ""


@dataclass
class Reply:
    """One scripted answer. ``prompt_tokens`` / ``completion_tokens`` default to the counted
    ones; ``report_usage=False`` answers with no ``usage`` at all (a provider that reports
    none); ``status`` other than 200 answers an OpenAI-style error with that status."""

    content: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    report_usage: bool = True
    status: int = 200
    finish_reason: str | None = None


Script = Callable[[dict[str, Any]], "str | dict | list | Reply | Awaitable[Any]"]


@dataclass
class Exchange:
    """A request the server received and what it answered."""

    body: dict[str, Any]
    reply: Reply
    usage: dict[str, Any] | None
    stream: bool
    at: float

    @property
    def model(self) -> str:
        return self.body.get("model", "")


def _structured(body: dict[str, Any], value: Any) -> Reply:
    """Structured output the way the request asked for it."""
    tools = body.get("tools") or []
    response_format = body.get("response_format") or {}
    if tools and response_format.get("type") not in ("json_schema", "json_object"):
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            name = choice.get("function", {}).get("name")
        else:
            name = tools[0].get("function", {}).get("name")
        return Reply(tool_calls=[(name, value)])
    return Reply(content=json.dumps(value))


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, Any] | None:
    if not reply.report_usage:
        return None
    completion_text = (reply.content or "") + "".join(
        json.dumps(args) for _, args in reply.tool_calls)
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else count_tokens(
        prompt_text(body))
    completion = (reply.completion_tokens if reply.completion_tokens is not None
                  else count_tokens(completion_text))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens,
                                      "audio_tokens": 0},
    }


def _tool_calls_json(reply: Reply) -> list[dict[str, Any]]:
    return [{"id": f"call_{i}_{uuid.uuid4().hex[:8]}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(reply.tool_calls)]


class OpenAIServer:
    """``POST /v1/chat/completions`` (non-streamed and streamed) on ``127.0.0.1:<port>``.

    ``script`` may be replaced at any time (``server.script = ...``); it may be sync (run in a
    thread, so it may block, e.g. on a ``threading.Event`` to hold a call) or async."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda body: "ok")
        self.exchanges: list[Exchange] = []
        self.port = free_port()
        self._lock = threading.Lock()
        app = Starlette(routes=[
            Route("/v1/chat/completions", self._completions, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ])
        self._server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def spec(self, name: str = "model") -> str:
        """A ``provider:model`` spec served here, unique to this server: a process builds each
        spec's chat model once, with the ``OPENAI_BASE_URL`` of that moment."""
        return f"openai:{name}-{self.port}"

    def env(self, model: str | None = None) -> dict[str, str]:
        """What a process needs to use this server as its default chat model (``model``: a
        spec, default :meth:`spec`)."""
        return {"ORCHESTRATOR_CHAT_MODEL": model or self.spec(),
                "OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": "test"}

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._server.run, name="openai-test-server",
                                        daemon=True)
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "test model server start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- records -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request body received, in order."""
        with self._lock:
            return [e.body for e in self.exchanges]

    def usage_totals(self, model: str | None = None) -> dict[str, int]:
        """Prompt / completion / cached tokens answered so far (to ``model``, a name or a
        ``provider:name`` spec, only if given)."""
        name = model.partition(":")[2] or model if model is not None else None
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
        with self._lock:
            for e in self.exchanges:
                if e.usage is None or (name is not None and e.model != name):
                    continue
                totals["prompt_tokens"] += e.usage["prompt_tokens"]
                totals["completion_tokens"] += e.usage["completion_tokens"]
                totals["cached_tokens"] += e.usage["prompt_tokens_details"]["cached_tokens"]
        return totals

    # -- handlers ----------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": []})

    async def _reply(self, body: dict[str, Any]) -> Reply:
        if inspect.iscoroutinefunction(self.script):
            value = await self.script(body)
        else:
            value = await asyncio.to_thread(self.script, body)
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, Reply):
            return value
        if isinstance(value, str):
            return Reply(content=value)
        return _structured(body, value)

    async def _completions(self, request: Request) -> Response:
        body = await request.json()
        reply = await self._reply(body)
        stream = bool(body.get("stream"))
        usage = _usage(body, reply) if reply.status == 200 else None
        with self._lock:
            self.exchanges.append(Exchange(body, reply, usage, stream, time.time()))
        if reply.status != 200:
            return JSONResponse({"error": {"message": reply.content or "scripted error",
                                           "type": "server_error", "code": None}},
                                status_code=reply.status)
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        if stream:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = self._chunks(ident, body["model"], reply, finish,
                                  usage if include_usage else None)
            return StreamingResponse(chunks, media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = _tool_calls_json(reply)
        answer: dict[str, Any] = {
            "id": ident, "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
        }
        if usage is not None:
            answer["usage"] = usage
        return JSONResponse(answer)

    @staticmethod
    def _chunks(ident: str, model: str, reply: Reply, finish: str,
                usage: dict[str, Any] | None) -> Iterator[str]:
        """SSE chunks as OpenAI sends them: the role, the content a few characters at a time,
        the tool calls, the finish reason, then (with ``include_usage``) a last chunk with no
        choices and the usage, then ``[DONE]``."""

        def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None,
                  chunk_usage: dict[str, Any] | None = None) -> str:
            data: dict[str, Any] = {
                "id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model,
                "choices": [] if delta is None else [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason,
                     "logprobs": None}],
            }
            if delta is None:
                data["usage"] = chunk_usage
            return f"data: {json.dumps(data)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        content = reply.content or ""
        for start in range(0, len(content), 8):
            yield chunk({"content": content[start:start + 8]})
        for i, call in enumerate(_tool_calls_json(reply)):
            yield chunk({"tool_calls": [{"index": i, **call}]})
        yield chunk({}, finish)
        if usage is not None:
            yield chunk(None, chunk_usage=usage)
        yield "data: [DONE]\n\n"

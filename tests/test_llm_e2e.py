"""End to end with language models and no network: the test model server through the real
``langchain-openai`` client, the in-process fakes, the socket guard, and the orchestrator's
model calls, ledger and budgets against them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from langchain.chat_models import init_chat_model
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from tests.support import socket_guard
from tests.support.fake_models import StreamingUsageFakeChatModel, UsageFakeChatModel
from tests.support.openai_server import OpenAIServer, Reply, count_tokens, last_user_text


class Comment(BaseModel):
    file: str
    line: int
    comment: str


def _client(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, **kwargs):
    for key, value in server.env("test-small").items():
        monkeypatch.setenv(key, value)
    return init_chat_model(os.environ["ORCHESTRATOR_CHAT_MODEL"], **kwargs)


# -- the test model server through langchain-openai -----------------------------------------

async def test_the_server_answers_langchain_openai_with_the_usage_it_counted(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    model_server.script = lambda body: f"echo {last_user_text(body)}"
    model = _client(model_server, monkeypatch)
    answer = await model.ainvoke([HumanMessage("hello there")])
    assert answer.content == "echo hello there"
    assert answer.usage_metadata["input_tokens"] == count_tokens("hello there")
    assert answer.usage_metadata["output_tokens"] == count_tokens("echo hello there")
    assert model_server.requests[0]["model"] == "test-small"
    assert model_server.requests[0].get("stream") in (None, False)


async def test_a_streamed_answer_sums_its_chunks_and_reports_usage_only_when_asked(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a fairly long answer streamed eight characters at a time"
    model_server.script = lambda body: Reply(content=text, prompt_tokens=120,
                                             completion_tokens=33, cached_tokens=100)
    model = _client(model_server, monkeypatch, stream_usage=True)
    total = None
    chunks = 0
    async for chunk in model.astream([HumanMessage("go")]):
        total = chunk if total is None else total + chunk
        chunks += 1
    assert chunks > 5 and total.content == text
    assert total.usage_metadata["input_tokens"] == 120
    assert total.usage_metadata["output_tokens"] == 33
    assert total.usage_metadata["input_token_details"]["cache_read"] == 100
    assert model_server.requests[-1]["stream_options"] == {"include_usage": True}

    # a client that does not ask for usage gets none: the ledger must say unknown, not zero
    plain = _client(model_server, monkeypatch, stream_usage=False)
    total = None
    async for chunk in plain.astream([HumanMessage("go")]):
        total = chunk if total is None else total + chunk
    assert total.content == text and not total.usage_metadata


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_structured_output_comes_back_in_the_form_the_client_asked_for(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    model_server.script = lambda body: {"file": "a.py", "line": 3, "comment": "unused"}
    model = _client(model_server, monkeypatch).with_structured_output(
        Comment, method=method, include_raw=True)
    out = await model.ainvoke([HumanMessage("review")])
    assert out["parsed"] == Comment(file="a.py", line=3, comment="unused")
    assert out["raw"].usage_metadata["output_tokens"] > 0
    body = model_server.requests[-1]
    if method == "json_schema":
        assert body["response_format"]["type"] == "json_schema"
    else:
        assert body["tools"][0]["function"]["name"] == "Comment"


async def test_no_usage_and_errors_are_answered_as_scripted(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    model_server.script = lambda body: Reply(content="quiet", report_usage=False)
    model = _client(model_server, monkeypatch, max_retries=0)
    answer = await model.ainvoke([HumanMessage("x")])
    assert answer.content == "quiet" and answer.usage_metadata is None
    model_server.script = lambda body: Reply(status=400, content="bad request")
    with pytest.raises(Exception, match="bad request"):
        await model.ainvoke([HumanMessage("x")])
    assert len(model_server.exchanges) == 2 and model_server.exchanges[1].usage is None


# -- the fakes ----------------------------------------------------------------------------

async def test_the_fakes_report_usage_streamed_or_not_and_structured_output() -> None:
    model = UsageFakeChatModel(respond=lambda msgs: "x" * 40)
    answer = await model.ainvoke([HumanMessage("y" * 80)])
    assert answer.usage_metadata == {"input_tokens": 20, "output_tokens": 10,
                                     "total_tokens": 30}

    streamed = StreamingUsageFakeChatModel(respond=lambda msgs: "x" * 40)
    total = None
    chunks = []
    async for chunk in streamed.astream([HumanMessage("y" * 80)]):
        chunks.append(chunk)
        total = chunk if total is None else total + chunk
    pieces = [c for c in chunks if c.content]
    assert len(pieces) == 5 and all(c.usage_metadata for c in pieces)
    assert total.usage_metadata["input_tokens"] == 20
    assert total.usage_metadata["output_tokens"] == 10
    assert pieces[-1].usage_metadata["output_tokens"] < 10  # only the sum is the usage

    quiet = UsageFakeChatModel(messages=iter(["a"]), report_usage=False)
    assert (await quiet.ainvoke("q")).usage_metadata is None

    structured = StreamingUsageFakeChatModel(
        respond=lambda msgs: {"file": "b.py", "line": 1, "comment": "c"}
    ).with_structured_output(Comment, include_raw=True)
    out = await structured.ainvoke("review")
    assert out["parsed"] == Comment(file="b.py", line=1, comment="c")
    assert out["raw"].usage_metadata["output_tokens"] > 0


# -- the socket guard -----------------------------------------------------------------------

def test_the_guard_refuses_connections_off_loopback_here_and_in_subprocesses() -> None:
    with socket.socket() as sock, pytest.raises(socket_guard.OffLoopback):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: nothing leaves before the refusal
    # recorded, so a caller that swallowed it still fails: forget it for this test only
    assert socket_guard.refused.pop() == ("192.0.2.1", 443)
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as sock:
        sock.connect(listener.getsockname())  # loopback passes

    code = ("import socket\ns = socket.socket()\n"
            "try:\n    s.connect(('192.0.2.1', 443))\nexcept ConnectionRefusedError as e:\n"
            "    print(type(e).__name__)\n")
    env = socket_guard.subprocess_env(dict(os.environ))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "OffLoopback", out.stderr

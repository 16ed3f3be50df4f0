"""``orchestrator.client.Client`` and the CLI's ``--server`` forms over real HTTP: against the
app served by uvicorn in the test's process, and against a real ``orchestrator serve``
process; ``cancel`` without a server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from orchestrator.cli import main
from orchestrator.client import Client
from orchestrator.errors import (
    Forbidden,
    InvalidAnswer,
    InvalidInput,
    ServerUnreachable,
    Unauthorized,
    WorkflowNotFound,
)
from orchestrator.service import audit
from orchestrator.service.app import ServerContext, create_app
from orchestrator.service.auth import TokenStore
from orchestrator.testing import stand_in
from tests.support.graphs_for_tests import approval
from tests.support.processes import ORCHESTRATOR_CMD, free_port
from tests.support.serve_process import start_serve

#: thread ids are unique in the whole database (every namespace): this module's own prefix
P = f"cli{uuid.uuid4().hex[:6]}-"


async def _review(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"verdict": "fine"}


@dataclass
class Served:
    url: str
    orch: Any
    tokens: dict[str, str]

    def client(self, role: str | None = "operator") -> Client:
        return Client(self.url, self.tokens[role] if role else None, timeout=10)


async def in_thread(fn: Callable[[], Any]) -> Any:
    """A blocking client call, off the loop that serves it."""
    return await asyncio.to_thread(fn)


@pytest.fixture
async def served(orchestrator_factory) -> AsyncIterator[Served]:
    """The app for an orchestrator with the ``approval`` workflow, served by uvicorn on a free
    loopback port in this event loop (no runner: runs stay queued)."""
    from orchestrator.service.runs import RunService

    orch = await orchestrator_factory(stand_ins=[stand_in("reviewer", {"review": _review})],
                                      builtin=False, workflows={"approval": approval})

    async def ready() -> bool:
        return True

    app = create_app(ServerContext(orch, RunService(orch), None, ready))
    store = TokenStore(orch.runtime.db, orch.settings.namespace)
    tokens = {role: (await store.create(role, f"{role}-token"))[1]
              for role in ("viewer", "operator", "admin")}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", orch, tokens)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def run_cli(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                  *argv: str) -> tuple[int, str, str]:
    """``orchestrator ARGV`` in a thread of this process with ``env``'s ORCHESTRATOR_*."""
    for key in ("ORCHESTRATOR_SERVER", "ORCHESTRATOR_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if key.startswith("ORCHESTRATOR_"):
            monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# -- the client ----------------------------------------------------------------------------------


async def test_client_submit_get_list_cancel_and_wait(served: Served) -> None:
    with served.client() as client:
        run = await in_thread(lambda: client.submit("approval", {"change": "c"}, f"{P}c-1",
                                                    priority=3))
        assert (run["thread_id"], run["status"], run["priority"]) == (f"{P}c-1", "queued", 3)
        got = await in_thread(lambda: client.get(f"{P}c-1"))
        assert got["record"]["status"] == "queued" and got["runs"][0]["run_id"] == run["run_id"]
        listed = await in_thread(lambda: client.list(status="queued", workflow="approval"))
        assert [r["run_id"] for r in listed] == [run["run_id"]]
        assert [w["thread_id"] for w in await in_thread(client.workflows)] == [f"{P}c-1"]

        # nothing runs it here: waiting is bounded, and says where it stands
        with pytest.raises(TimeoutError, match=f"{P}c-1 is still queued after 0.3s"):
            await in_thread(lambda: client.wait(f"{P}c-1", run_id=run["run_id"], timeout=0.3))
        cancel = await in_thread(lambda: client.cancel(f"{P}c-1"))
        assert cancel["kind"] == "cancel"
        done = await in_thread(lambda: client.wait(f"{P}c-1", timeout=5))
        assert done["record"]["status"] == "cancelled"


async def test_client_raises_the_error_tree(served: Served) -> None:
    await served.orch.run("approval", {"change": "q"}, f"{P}q-1")
    with served.client() as operator, served.client("viewer") as viewer, \
            served.client(None) as anonymous:
        with pytest.raises(InvalidInput, match="change") as bad:
            await in_thread(lambda: operator.submit("approval", {}))
        assert bad.value.http_status == 422  # type: ignore[attr-defined]
        with pytest.raises(InvalidAnswer, match="approve") as answer:
            await in_thread(lambda: operator.resume(f"{P}q-1", {"approve": "perhaps"}))
        assert answer.value.code == "invalid_answer"
        with pytest.raises(Forbidden, match="needs operator"):
            await in_thread(lambda: viewer.resume(f"{P}q-1", {"approve": True}))
        with pytest.raises(WorkflowNotFound, match="nobody"):
            await in_thread(lambda: viewer.get("nobody"))
        with pytest.raises(Unauthorized, match="token"):
            await in_thread(lambda: anonymous.list())
        resumed = await in_thread(lambda: operator.resume(f"{P}q-1", {"approve": True}))
        assert resumed["payload"]["by"] == "operator-token"
        history = await in_thread(lambda: viewer.history(f"{P}q-1"))
        assert history and history[-1]["next"] == ["approve"]


def test_an_unreachable_server_is_named_with_what_to_check() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "t", timeout=2) as client, \
            pytest.raises(ServerUnreachable) as caught:
        client.get("x")
    message = str(caught.value)
    assert url in message and "ORCHESTRATOR_SERVER" in message and "orchestrator serve" in message


async def test_a_server_that_is_not_an_orchestrator_is_said_so(start_service) -> None:
    other = await start_service()  # a small JSON service of the tests (tests/support)
    url = f"http://127.0.0.1:{other.port}"
    with Client(url, "t", timeout=5) as client, \
            pytest.raises(ServerUnreachable, match="is it an orchestrator server") as caught:
        await in_thread(lambda: client.get("x"))
    assert url in str(caught.value)


# -- the CLI with --server -----------------------------------------------------------------------


async def test_cli_run_detach_ls_show_resume_cancel_against_a_server(
        served: Served, service_env, monkeypatch) -> None:
    server = ["--server", served.url, "--token", served.tokens["operator"]]
    code, out, err = await run_cli(monkeypatch, service_env, "run", "approval", "--set",
                                   "change=x", "--thread-id", f"{P}cli-1", "--detach", *server)
    assert code == 0, err
    assert out == f"{P}cli-1\n" and "queued run" in err and served.url in err

    # the server and token from the environment
    env = {**service_env, "ORCHESTRATOR_SERVER": served.url,
           "ORCHESTRATOR_TOKEN": served.tokens["viewer"]}
    code, out, err = await run_cli(monkeypatch, env, "ls", "--json")
    assert code == 0, err
    assert [(w["thread_id"], w["status"]) for w in json.loads(out)] == [(f"{P}cli-1", "queued")]
    code, out, err = await run_cli(monkeypatch, env, "ls", "--status", "completed")
    assert (code, out) == (0, "no workflows\n"), err
    code, out, err = await run_cli(monkeypatch, env, "show", f"{P}cli-1")
    assert code == 0, err
    assert "status:    queued" in out and "start    queued" in out and "by operator-token" in out

    # a viewer cannot cancel; an operator can
    code, out, err = await run_cli(monkeypatch, env, "cancel", f"{P}cli-1")
    assert code == 1 and "forbidden" in err and "needs operator" in err
    code, out, err = await run_cli(monkeypatch, service_env, "cancel", f"{P}cli-1", *server)
    assert code == 0 and f"cancel of {P}cli-1 requested" in out, err

    # an answer that does not fit: exit 2 with the problem; nothing queued
    await served.orch.run("approval", {"change": "y"}, f"{P}cli-2")
    code, out, err = await run_cli(monkeypatch, service_env, "resume", f"{P}cli-2", "--value",
                                   '{"approve": 3}', "--detach", *server)
    assert code == 2 and "approve" in err, err
    code, out, err = await run_cli(monkeypatch, service_env, "resume", f"{P}cli-2", "--value",
                                   '{"approve": true}', "--detach", "--json", *server)
    assert code == 0, err
    assert json.loads(out)["kind"] == "resume"
    code, out, err = await run_cli(monkeypatch, env, "show", f"{P}cli-2", "--json", "--history")
    assert code == 0 and json.loads(out)["history"], err


async def test_cli_server_errors(service_env, monkeypatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(monkeypatch, service_env, "ls", "--server", url)
    assert code == 1 and url in err and "server_unreachable" in err
    code, out, err = await run_cli(monkeypatch, service_env, "run", "approval", "--detach")
    assert code == 2 and "--detach submits to a server" in err


# -- cancel without a server ---------------------------------------------------------------------


async def test_cli_cancel_without_a_server(orchestrator, service_env, monkeypatch,
                                           tmp_path) -> None:
    from orchestrator.service.runs import RunService

    runs = RunService(orchestrator)
    await runs.submit("parallel_docs", {"package": "json", "output": str(tmp_path / "docs")},
                      f"{P}loc-1")
    code, out, err = await run_cli(monkeypatch, service_env, "cancel", f"{P}loc-1")
    assert code == 0 and f"cancel of {P}loc-1 requested" in out, err
    assert (await orchestrator.runtime.workflows.get(f"{P}loc-1")).status == "cancelled"
    [entry] = await audit.entries(orchestrator.runtime.db, orchestrator.settings.namespace,
                                  target=f"{P}loc-1")
    assert entry.action == "run.cancel" and entry.source == f"cli@{socket.gethostname()}"

    # a workflow a live process runs outside the service: refused, saying how
    await orchestrator.runtime.workflows.create(f"{P}loc-2", "parallel_docs", {},
                                                owner=orchestrator.owner)
    code, out, err = await run_cli(monkeypatch, service_env, "cancel", f"{P}loc-2")
    assert code == 1 and "workflow_busy" in err and "not under `orchestrator serve`" in err
    assert (await orchestrator.runtime.workflows.get(f"{P}loc-2")).status == "running"
    code, out, err = await run_cli(monkeypatch, service_env, "cancel", f"{P}loc-1")
    assert code == 2 and "cancelled: it cannot be cancelled" in err


# -- a real `orchestrator serve` -----------------------------------------------------------------


@pytest.mark.slow
async def test_client_and_cli_against_orchestrator_serve(orchestrator, service_env,
                                                         tmp_path) -> None:
    store = TokenStore(orchestrator.runtime.db, orchestrator.settings.namespace)
    _, token = await store.create("operator", "ci")
    events = tmp_path / "events"
    serve = await asyncio.to_thread(start_serve, service_env, tmp_path, events,
                                    local_agents=True)
    try:
        with Client(serve.url, token) as client:
            run = await in_thread(lambda: client.submit("svcflow", {"steps": 2}))
            done = await in_thread(lambda: client.wait(run["thread_id"], run_id=run["run_id"],
                                                       timeout=60))
        assert done["record"]["status"] == "completed", done
        assert done["result"] == {"status": "completed", "steps": 2}
        assert [r["status"] for r in done["runs"]] == ["succeeded"]

        cli = await asyncio.to_thread(
            subprocess.run, [*ORCHESTRATOR_CMD, "run", "svcflow", "--set", "steps=1",
                             "--server", serve.url, "--token", token, "--json"],
            env=service_env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        result = json.loads(cli.stdout)
        assert result["status"] == "completed" and result["final_result"]["steps"] == 1
        trail = await audit.entries(orchestrator.runtime.db, orchestrator.settings.namespace)
        assert {(e.action, e.actor, e.source) for e in trail} == {
            ("run.submit", "ci", "127.0.0.1")}
        assert len(trail) == 2
    finally:
        await asyncio.to_thread(serve.stop)

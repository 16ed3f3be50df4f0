"""LangGraph Studio: `langgraph dev` loads langgraph.json, and the SDK lists the assistants
and runs parallel_docs on the test's PostgreSQL and Redis (agents hosted by the server)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dev_server(service_env, tmp_path):
    """`langgraph dev` in a scratch working directory (it writes .langgraph_api/ there)."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT)]
    workdir = tmp_path / "server"
    workdir.mkdir()
    (workdir / "langgraph.json").write_text(json.dumps(config))
    env = {k: v for k, v in service_env.items()
           if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "OTEL_"))}
    env.update(LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false",
               LANGGRAPH_CLI_NO_ANALYTICS="1", LANGGRAPH_NO_VERSION_CHECK="true")
    log_path = workdir / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "langgraph_cli", "dev", "--host", "127.0.0.1",
         "--port", str(_free_port()), "--no-browser", "--no-reload",
         "--config", str(workdir / "langgraph.json"), "--server-log-level", "WARNING"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None:
            assert proc.poll() is None, f"langgraph dev exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"not ready:\n{log_path.read_text()}"
            found = re.search(r"API: (?:\x1b\[\d+m)?(http://[^\s\x1b]+)", log_path.read_text())
            if found:
                try:
                    if httpx.get(f"{found.group(1)}/ok", timeout=1).status_code == 200:
                        url = found.group(1)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_sdk_lists_assistants_and_runs_parallel_docs(
    dev_server, fixture_package, tmp_path
) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=dev_server, api_key=None)
    assistants = await client.assistants.search(limit=100)
    graphs = {a["graph_id"] for a in assistants}
    assert graphs == set(json.loads((ROOT / "langgraph.json").read_text())["graphs"])

    out = tmp_path / "studio-docs"
    thread = await client.threads.create()
    final = await client.runs.wait(
        thread["thread_id"], "parallel_docs",
        input={"package": str(fixture_package), "output": str(out)},
    )
    assert final["final_result"]["status"] == "completed", final
    assert final["final_result"]["modules"] == 12
    assert (out / "index.md").exists() and (out / "fixturepkg.sub.mod9.md").exists()
    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == []


async def test_pr_deployment_pauses_for_approval_and_self_healing_runs_in_studio(
    dev_server, fixture_repo, start_service
) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=dev_server, api_key=None)
    thread = await client.threads.create()
    paused = await client.runs.wait(thread["thread_id"], "pr_deployment",
                                    input={"repo": str(fixture_repo), "source": "feature-pass"})
    state = await client.threads.get_state(thread["thread_id"])
    assert state["next"] == ["approve"], paused
    assert state["tasks"][0]["interrupts"][0]["value"]["kind"] == "approval"

    service = await start_service()
    thread = await client.threads.create()
    final = await client.runs.wait(thread["thread_id"], "self_healing", input={
        "service": "studio-web", "health_url": service.url + "/health", "restart": None,
        "runbook": {"down": [{"type": "wait", "seconds": 0}]}})
    assert final["final_result"]["outcome"] == "healthy", final

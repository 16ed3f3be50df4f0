"""LangGraph Studio: `langgraph dev` loads langgraph.json, and the SDK lists the assistants
and runs parallel_docs on the test's PostgreSQL and Redis (agents hosted by the server)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .support.processes import ORCHESTRATOR_CMD, free_port
from .support.projects import make_shadowing_project

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _start_dev_server(env: dict[str, str], workdir: Path,
                      dependencies: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`langgraph dev` on a free port in ``workdir`` (it writes .langgraph_api/ there), with
    ``dependencies`` (folders of ``workdir``'s project) ahead of this repository; returns the
    process and the API's URL once it answers."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [*dependencies, str(ROOT)]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "langgraph.json").write_text(json.dumps(config))
    env = {k: v for k, v in env.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "OTEL_"))}
    env.update(LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false",
               LANGGRAPH_CLI_NO_ANALYTICS="1", LANGGRAPH_NO_VERSION_CHECK="true")
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "langgraph_cli", "dev", "--host", "127.0.0.1",
             "--port", str(free_port()), "--no-browser", "--no-reload",
             "--config", str(workdir / "langgraph.json"), "--server-log-level", "WARNING"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"langgraph dev exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"not ready:\n{log_path.read_text()}"
            found = re.search(r"API: (?:\x1b\[\d+m)?(http://[^\s\x1b]+)", log_path.read_text())
            if found:
                try:
                    if httpx.get(f"{found.group(1)}/ok", timeout=1).status_code == 200:
                        return proc, found.group(1)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
    except BaseException:
        _stop_dev_server(proc)
        raise


def _stop_dev_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def dev_server(service_env, tmp_path):
    """`langgraph dev` on the test's PostgreSQL and Redis."""
    workdir = tmp_path / "server"
    proc, url = _start_dev_server(service_env, workdir)
    try:
        yield url
    finally:
        _stop_dev_server(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def embedded_dev_server(service_env, tmp_path):
    """`langgraph dev` as a new user starts it: no database or Redis URL and no data dir
    configured, so the graphs run on the embedded default in ``./.orchestrator``; from a project
    with its own ``agents``, ``workflows`` and ``state`` packages, first on the server's path."""
    env = {k: v for k, v in service_env.items()
           if k not in ("ORCHESTRATOR_DATABASE_URL", "ORCHESTRATOR_REDIS_URL",
                        "ORCHESTRATOR_DATA_DIR")}
    workdir = make_shadowing_project(tmp_path / "project")
    proc, url = _start_dev_server(env, workdir, dependencies=(".",))
    try:
        yield url, workdir
    finally:
        _stop_dev_server(proc)  # the last user of the embedded services stops them...
        # ...unless it had to be killed: then nothing may outlive the test
        subprocess.run([*ORCHESTRATOR_CMD, "services", "stop", "--force"], cwd=workdir,
                       env={**env, "ORCHESTRATOR_DATA_DIR": str(workdir / ".orchestrator")},
                       capture_output=True, timeout=120, check=False)


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


async def test_every_graph_runs_on_the_embedded_default(
    embedded_dev_server, fixture_package, fixture_repo, start_service, tmp_path
) -> None:
    """Found by use: with no URL configured, every run failed with `BlockingError` (the data
    dir was resolved on the server's event loop)."""
    from langgraph_sdk import get_client

    url, workdir = embedded_dev_server
    client = get_client(url=url, api_key=None)

    async def run(graph: str, payload: dict) -> tuple[dict, dict]:
        thread = await client.threads.create()
        final = await client.runs.wait(thread["thread_id"], graph, input=payload)
        return final, await client.threads.get_state(thread["thread_id"])

    out = tmp_path / "docs"
    final, _ = await run("parallel_docs", {"package": str(fixture_package), "output": str(out)})
    assert final["final_result"]["status"] == "completed", final
    assert (out / "index.md").exists()
    assert (workdir / ".orchestrator" / "postgres").is_dir()  # the embedded default, here

    final, state = await run("pr_deployment", {"repo": str(fixture_repo),
                                                "source": "feature-pass"})
    assert state["next"] == ["approve"], final

    service = await start_service()
    final, _ = await run("self_healing", {
        "service": "studio-web", "health_url": service.url + "/health", "restart": None,
        "runbook": {"down": [{"type": "wait", "seconds": 0}]}})
    assert final["final_result"]["outcome"] == "healthy", final

    repo = tmp_path / "plan-repo"
    repo.mkdir()
    await asyncio.to_thread(subprocess.run, ["git", "init", "-q", "-b", "main", str(repo)],
                            check=True)
    final, _ = await run("plan_execution", {"plan": {
        "repo": str(repo),
        "tasks": [
            {"id": "a", "kind": "new", "file": "a.py", "content": "A = 1\n"},
            {"id": "b", "kind": "new", "file": "b.py", "content": "from a import A\n\nB = A + 1\n"},
        ],
        "integration_command": ["python", "-c", "import b"],
    }})
    assert final.get("final_result", {}).get("status") == "completed", {
        k: final.get(k) for k in ("error_log", "dead_letters", "tasks", "subtask_status")}
    assert (repo / "b.py").read_text().startswith("from a import A")

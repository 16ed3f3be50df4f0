"""Shared fixtures. The orchestrator's own pytest plugin (``orchestrator.testing``) provides
the isolated database, Redis and Orchestrator fixtures; these add the project's own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.agent import RequestContext
from tests.support import socket_guard
from tests.support.cli import CLI
from tests.support.fixture_repo import make_fixture_repo
from tests.support.openai_server import OpenAIServer
from tests.support.processes import read_pid
from tests.support.service_app import ServiceProcess

StartService = Callable[..., Awaitable[ServiceProcess]]



@pytest.fixture(scope="session", autouse=True)
def _no_plugin_autoload_in_test_commands() -> Iterator[None]:
    """The fixture repositories' tests need no pytest plugins, and autoloading the ones
    installed here (langsmith, hypothesis, langgraph-cli...) costs ~4 s per test run in a
    worktree. Set for the processes tests start, once the session runs (set at import, it would
    also reach pytest-xdist's workers, which then load no plugin at all)."""
    before = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    os.environ.setdefault("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    yield
    if before is None:
        os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)


@pytest.fixture(autouse=True)
def _socket_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """No network for the language-model tests (``tests/test_llm*``) and any test marked
    ``no_network``: a connection off loopback raises, and fails the test even if the code under
    test swallowed the error (tests/support/socket_guard.py)."""
    if not (request.path.name.startswith("test_llm")
            or request.node.get_closest_marker("no_network")):
        yield
        return
    socket_guard.install()
    before = len(socket_guard.refused)
    try:
        yield
    finally:
        socket_guard.uninstall()
    refused = socket_guard.refused[before:]
    assert not refused, f"connections off loopback: {refused}"


@pytest.fixture
def model_server() -> Iterator[OpenAIServer]:
    """An OpenAI-compatible chat completions server on loopback (tests/support/openai_server.py);
    set its ``script`` to answer."""
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def fixture_package(tmp_path: Path) -> Path:
    """A small package of 12 public modules (plus private ones that must not be documented)."""
    root = tmp_path / "fixturepkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text('"""Fixture package for docs tests."""\n')
    (root / "sub" / "__init__.py").write_text('"""A sub-package."""\n')
    (root / "_private.py").write_text("def hidden():\n    pass\n")
    for i in range(10):
        folder = root if i < 6 else root / "sub"
        (folder / f"mod{i}.py").write_text(textwrap.dedent(f'''
            """Module number {i}."""

            class Thing{i}:
                """A thing."""

                def __init__(self, size: int = {i}) -> None:
                    self.size = size

                def grow(self, by: int) -> int:
                    """Grow by ``by``."""
                    return self.size + by

                def _secret(self):
                    pass

            def make_{i}(name: str, *, fast: bool = False) -> Thing{i}:
                """Make a thing."""
                return Thing{i}()

            def _helper():
                pass
            '''))
    return root


@pytest.fixture
def service_env(orchestrator_settings) -> dict[str, str]:
    """Environment for CLI/worker subprocesses that share the test's database, Redis and
    namespace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        ORCHESTRATOR_DATABASE_URL=orchestrator_settings.database_url,
        ORCHESTRATOR_REDIS_URL=orchestrator_settings.redis_url,
        ORCHESTRATOR_NAMESPACE=orchestrator_settings.namespace,
        ORCHESTRATOR_HEARTBEAT_INTERVAL="0.5",
        ORCHESTRATOR_AGENT_OFFLINE_AFTER="3",
        ORCHESTRATOR_WORKFLOW_LEASE="5",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def cli(service_env, tmp_path) -> Iterator[CLI]:
    """Runs ``orchestrator run`` / ``resume`` subprocesses in the test's database, Redis and
    namespace (tests/support/cli.py); kills whatever is still running afterwards."""
    runner = CLI(service_env, tmp_path)
    yield runner
    runner.close()


@pytest.fixture
def reap() -> Iterator[Callable[..., None]]:
    """``reap(pid_file)`` / ``reap(pid=pid)``: kill, after the test, the services the agents
    started: the pids named by these pid files (read at teardown), and any pid given directly
    (a service a second restart replaced)."""
    pid_files: list[Path] = []
    pids: set[int] = set()

    def add(pid_file: Path | None = None, pid: int | None = None) -> None:
        if pid_file is not None:
            pid_files.append(pid_file)
        if pid is not None:
            pids.add(pid)

    yield add
    for path in pid_files:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids.add(read_pid(path))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def start_service(tmp_path: Path) -> AsyncIterator[StartService]:
    """Start service_app subprocesses; every one started here is killed afterwards."""
    started: list[ServiceProcess] = []

    async def start(**kwargs: Any) -> ServiceProcess:
        service = await asyncio.to_thread(ServiceProcess.start, tmp_path, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        await asyncio.to_thread(service.kill)


@pytest.fixture
def fixture_repo(tmp_path: Path) -> Path:
    """A git repository with passing, failing and conflicting branches (tests/support/fixture_repo.py)."""
    return make_fixture_repo(tmp_path / "repo")


@pytest.fixture
def fencing_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Each ``check_fencing`` an agent makes: (resource, the resources the request holds)."""
    checked: list[tuple[str, list[str]]] = []
    original = RequestContext.check_fencing

    async def spy(self: RequestContext, resource: str) -> int:
        checked.append((resource, sorted(self.fencing)))
        return await original(self, resource)

    monkeypatch.setattr(RequestContext, "check_fencing", spy)
    return checked

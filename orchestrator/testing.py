"""pytest plugin for testing graphs against real PostgreSQL and Redis.

Installed as a ``pytest11`` entry point, so its fixtures are available in any project that
installs the orchestrator:

* ``orchestrator_database_url`` (session): a fresh database created for the test run on
  ``ORCHESTRATOR_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
  and dropped at the end.
* ``orchestrator_redis_url`` (session): ``ORCHESTRATOR_TEST_REDIS_URL``
  (default ``redis://127.0.0.1:6379/0``).
* ``orchestrator_settings``: settings with a namespace of the test's own, so tests sharing the
  database and Redis never see each other's agents, locks, workflows or keys (deleted after).
* ``orchestrator_factory``: ``await orchestrator_factory(stand_ins=[...])`` opens an
  :class:`~orchestrator.Orchestrator` on those settings (closed after the test).
* ``orchestrator``: one opened with the built-in agents.

Helpers: :func:`stand_in` replaces an agent type with handlers of the test's own;
:func:`run_until_interrupt` and :func:`resume` drive a graph to its next pause (a question:
``{"kind", "question", "schema", "context"}``) and on.

Example::

    from orchestrator.testing import stand_in

    async def test_docs_with_a_fake_renderer(orchestrator_factory, tmp_path):
        async def render(payload, ctx):
            return {"module": payload["module"], "markdown": "# fake\\n", "summary": ""}

        fake_docs = stand_in("docs", {"render_module": render}, keep_builtin=True)
        orch = await orchestrator_factory(stand_ins=[fake_docs])
        result = await orch.run("parallel_docs", {"package": "json", "output": str(tmp_path)})
        assert result.status == "completed"
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    from .agent import Agent, Handler
    from .facade import Orchestrator, RunResult
    from .graphs import WorkflowSpec
    from .settings import Settings

__all__ = ["stand_in", "run_until_interrupt", "resume", "DEFAULT_DATABASE_URL", "DEFAULT_REDIS_URL"]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def stand_in(
    agent_type: str,
    handlers: dict[str, Handler] | Handler,
    *,
    capabilities: Sequence[str] = (),
    keep_builtin: bool = False,
) -> Agent:
    """An agent of type ``agent_type`` served by the test's own handlers.

    Args:
        handlers: request type -> async ``handler(payload, ctx)``; or one handler for every
            request type (it can look at ``ctx.request.request_type``).
        keep_builtin: also serve the built-in agent's other request types, replacing only
            those given.
    """
    from .agent import Agent, builtin_agents

    table: dict[str, Any] = dict(handlers) if isinstance(handlers, dict) else {"*": handlers}
    base = builtin_agents().get(agent_type) if keep_builtin else None
    if base is not None:
        table = {**base.handlers, **table}
    return Agent(agent_type, list(capabilities or (base.capabilities if base else [])),
                 version="test", description=f"test stand-in for {agent_type}", handlers=table)


async def run_until_interrupt(
    orch: Orchestrator, workflow: str, input: dict[str, Any], thread_id: str | None = None
) -> tuple[RunResult, Any]:
    """Run ``workflow`` to its next interrupt; returns the result and the interrupt's value.

    For a question asked with :func:`orchestrator.questions.ask` the value is
    ``{"kind", "question", "schema", "context"}``: what the graph shows a person is in
    ``question["context"]``, the expected answer's JSON Schema in ``question["schema"]``.
    Fails the test if the workflow ends without pausing.
    """
    result = await orch.run(workflow, input, thread_id)
    if result.status != "interrupted":
        pytest.fail(f"{workflow} ended {result.status} without an interrupt: {result.error}")
    return result, result.interrupts[0]["value"]


async def resume(orch: Orchestrator, thread_id: str, value: Any = None) -> RunResult:
    """Answer the pending interrupt of ``thread_id`` with ``value`` and run on.

    Raises:
        orchestrator.errors.InvalidAnswer: ``value`` does not fit the question's schema (or is
            missing); nothing changed and the question is still pending.
    """
    return await orch.resume(thread_id, value)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def orchestrator_database_url() -> Iterator[str]:
    """A database of this test run's own, dropped when the run ends."""
    import psycopg

    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.exit(
            f"cannot reach the test PostgreSQL at {admin_url}: {exc}\n"
            "start it, or point ORCHESTRATOR_TEST_DATABASE_URL at one", returncode=4)
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def orchestrator_redis_url() -> str:
    import redis

    url = os.environ.get("ORCHESTRATOR_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.exit(f"cannot reach the test Redis at {url}: {exc}\n"
                    "start it, or point ORCHESTRATOR_TEST_REDIS_URL at one", returncode=4)
    return url


@pytest.fixture
def orchestrator_settings(
    orchestrator_database_url: str, orchestrator_redis_url: str
) -> Iterator[Settings]:
    """Settings isolated to this test by a namespace; its Redis keys are deleted after."""

    from .settings import Settings

    namespace = f"t{uuid.uuid4().hex[:10]}"
    yield Settings(
        database_url=orchestrator_database_url,
        redis_url=orchestrator_redis_url,
        namespace=namespace,
        heartbeat_interval=0.5,
        agent_offline_after=3.0,
        request_timeout=60.0,
        workflow_lease=5.0,
    )
    delete_keys(orchestrator_redis_url, f"{namespace}:*")


def delete_keys(redis_url: str, match: str) -> None:
    """Delete the Redis keys matching ``match`` (a SCAN pattern), in batches."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=match, count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


@pytest.fixture
async def orchestrator_factory(
    orchestrator_settings: Settings,
) -> AsyncIterator[Callable[..., Any]]:
    """``await orchestrator_factory(stand_ins=[...], builtin=True, workflows=None, **settings)``
    opens an Orchestrator on the test's settings; all are closed after the test."""
    import contextlib

    from .agent import builtin_agents
    from .facade import Orchestrator

    stack = contextlib.AsyncExitStack()

    async def factory(
        *,
        stand_ins: Sequence[Agent] = (),
        builtin: bool = True,
        workflows: dict[str, WorkflowSpec] | None = None,
        **overrides: Any,
    ) -> Orchestrator:
        agents: dict[str, Agent] = dict(builtin_agents()) if builtin else {}
        agents.update({a.agent_type: a for a in stand_ins})
        # validated (model_copy would not convert e.g. a str bus_secret to SecretStr)
        settings = type(orchestrator_settings).model_validate(
            {**orchestrator_settings.model_dump(), **overrides})
        orch = Orchestrator(settings, agents=list(agents.values()), workflows=workflows)
        return await stack.enter_async_context(orch)

    try:
        yield factory
    finally:
        await stack.aclose()


@pytest.fixture
async def orchestrator(orchestrator_factory: Callable[..., Any]) -> Orchestrator:
    """An opened Orchestrator hosting the built-in agents, isolated to this test."""
    return await orchestrator_factory()

"""The per-process runtime: database pool, Redis, bus, registry, locks and hosted agents.

Graph nodes find the runtime of the run they belong to through :func:`current_runtime`
(a context variable the :class:`~orchestrator.facade.Orchestrator` sets around each
invocation), so state never carries live objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.state.db import Database
from orchestrator.state.migrations import migrate
from orchestrator.state.store import WorkflowStateManager

from .agent import Agent, builtin_agents
from .breaker import BreakerPolicy, CircuitBreaker
from .bus import EventBus
from .errors import WrongContext
from .llm.services import ModelServices
from .locks import ResourceLockManager
from .processes import died_on_this_host, new_process_id
from .registry import AgentRegistry
from .settings import Settings
from .worker import Worker

__all__ = ["ATTEMPT_KEY", "Runtime", "current_attempt", "current_runtime", "emit_event",
           "fresh_attempt", "use_runtime"]

log = logging.getLogger(__name__)

_current: ContextVar[Runtime | None] = ContextVar("orchestrator_runtime", default=None)

#: The ``configurable`` key of a graph run's config that carries its workflow attempt (the
#: :class:`~orchestrator.facade.Orchestrator` sets it from the ``workflows`` row).
ATTEMPT_KEY = "orchestrator_attempt"
#: The attempt of graph runs made inside :func:`use_runtime` without a facade (``langgraph
#: dev`` sets the runtime once per run).
_attempt: ContextVar[int | None] = ContextVar("orchestrator_attempt", default=None)


def fresh_attempt() -> int:
    """An attempt number for a graph run the facade does not count (``langgraph dev``, a graph
    invoked directly): random, so unique per run (one chance in 2**30 of meeting another),
    far above any count the facade reaches, and within a PostgreSQL ``integer``."""
    return (1 << 30) + secrets.randbits(30)


class Runtime:
    """Everything a process needs to run graphs and host agents. Build it with :meth:`open`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        redis: Redis,
        *,
        database_url: str,
        process_id: str,
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.database_url = database_url
        self.process_id = process_id
        self.bus = EventBus(
            redis,
            namespace=settings.namespace,
            process_id=process_id,
            response_retention=settings.response_retention,
            events_maxlen=settings.events_maxlen,
            secret=(settings.bus_secret.get_secret_value().encode()
                    if settings.bus_secret else None),
        )
        self.registry = AgentRegistry(db, settings.namespace, offline_after=settings.agent_offline_after)
        self.locks = ResourceLockManager(
            db, settings.namespace, listen_url=database_url,
            # call holders are "<process id>:<thread>:<task>"
            holder_dead=lambda holder: died_on_this_host(holder.partition(":")[0]),
            emit=self.bus.emit,
        )
        self.workflows = WorkflowStateManager(db, settings.namespace)
        self.breaker = CircuitBreaker(redis, settings.namespace, BreakerPolicy(
            window=settings.breaker_window, min_calls=settings.breaker_min_calls,
            cooldown=settings.breaker_cooldown,
        ), emit=self.bus.emit)
        self.worker: Worker | None = None
        self._call_counters: OrderedDict[str, int] = OrderedDict()
        #: the attempt of graph runs that name none (neither the facade nor use_runtime)
        self.attempt = fresh_attempt()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, settings: Settings, *, agents: Sequence[Agent] | None = None
    ) -> AsyncIterator[Runtime]:
        """Connect everything (starting embedded services for unset URLs), migrate, and host
        ``agents`` (default: the built-in agents when ``settings.local_agents``)."""
        embedded = None
        database_url, redis_url = settings.database_url, settings.redis_url
        if database_url is None or redis_url is None:
            from .embedded import EmbeddedServices

            def start_embedded() -> EmbeddedServices:
                # resolving the data dir and starting servers touch the file system: off the
                # event loop (`langgraph dev` refuses blocking calls on it)
                services = EmbeddedServices(
                    settings.data_dir, postgres=database_url is None, redis=redis_url is None
                )
                services.start()
                return services

            embedded = await asyncio.to_thread(start_embedded)
            database_url = database_url or embedded.database_url
            redis_url = redis_url or embedded.redis_url
        try:
            async with contextlib.AsyncExitStack() as stack:
                db = await stack.enter_async_context(
                    # a session stuck in a transaction past a run's lease is ended: a stopped
                    # runner must not keep its run's fence row locked from the sweeper
                    Database.connect(database_url, max_size=settings.pool_max_size,
                                     timeout=settings.pool_timeout,
                                     idle_in_transaction_timeout=settings.run_lease)
                )
                await migrate(db)
                # redis-py's default pool raises once its connections are all busy; many
                # in-flight agent calls must wait for a connection instead.
                # A pooled connection that predates a Redis restart fails its next command;
                # retrying on a fresh connection hides that from every caller.
                pool = BlockingConnectionPool.from_url(
                    redis_url, max_connections=settings.redis_max_connections, timeout=30,
                    health_check_interval=30,
                    retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
                    retry_on_error=[RedisConnectionError, RedisTimeoutError],
                )
                redis = Redis(connection_pool=pool)
                stack.push_async_callback(redis.aclose, close_connection_pool=True)
                await redis.ping()
                process_id = new_process_id()
                runtime = cls(settings, db, redis, database_url=database_url,
                              process_id=process_id)
                stack.push_async_callback(runtime.breaker.close)  # its queued records
                stack.push_async_callback(_flush_learning, runtime)  # queued call records
                await stack.enter_async_context(runtime.bus)
                await runtime.locks.start()
                stack.push_async_callback(runtime.locks.close)
                if agents is None and settings.local_agents:
                    # entry-point discovery reads files: keep it off the event loop
                    agents = list((await asyncio.to_thread(builtin_agents)).values())
                if agents:
                    runtime.worker = Worker(
                        runtime.bus,
                        runtime.registry,
                        agents,
                        min_concurrency=settings.worker_min_concurrency,
                        max_concurrency=settings.worker_max_concurrency,
                        visibility_timeout=settings.visibility_timeout,
                        max_deliveries=settings.max_deliveries,
                        heartbeat_interval=settings.heartbeat_interval,
                        name=f"local-{process_id}",
                        chat_model=settings.chat_model,
                        models=ModelServices.from_settings(settings, runtime.db),
                        child_env_withhold=settings.child_env_withhold,
                    )
                    await runtime.worker.start()
                    stack.push_async_callback(runtime.worker.stop)
                yield runtime
        finally:
            if embedded is not None:
                await asyncio.to_thread(embedded.close)

    def next_call_index(self, task_key: str) -> int:
        """0, 1, 2... for successive agent calls of one graph task (``task_key`` names the
        workflow attempt too: see :func:`orchestrator.calls.call_agent`) in this process.

        Each attempt of a workflow (a run, a resume, a recovery after a crash) starts again at
        0, so its calls get the request ids of the earlier attempts: their stored successes
        answer them, and calls that failed run again (an error answers only its own attempt).
        A retry within one attempt (LangGraph's RetryPolicy) continues counting, and so really
        re-executes.
        """
        index = self._call_counters.get(task_key, -1) + 1
        self._call_counters[task_key] = index
        self._call_counters.move_to_end(task_key)
        while len(self._call_counters) > 100_000:
            self._call_counters.popitem(last=False)
        return index

    def reuse_call_index(self, task_key: str, index: int) -> None:
        """Give ``index`` back: the call got no response (lost connection, timeout), so its
        retry must send the same request id; the response store answers it if it ran."""
        if self._call_counters.get(task_key) == index:
            self._call_counters[task_key] = index - 1


@contextlib.contextmanager
def use_runtime(runtime: Runtime, *, attempt: int | None = None) -> Iterator[Runtime]:
    """Make ``runtime`` the one graph nodes see in this context.

    Graph runs inside it that carry no attempt in their config (the facade sets one) count as
    ``attempt`` (default: a fresh one per use; ``langgraph dev`` enters this once per run).
    """
    token = _current.set(runtime)
    attempt_token = _attempt.set(attempt if attempt is not None else fresh_attempt())
    try:
        yield runtime
    finally:
        _attempt.reset(attempt_token)
        _current.reset(token)


def current_attempt(configurable: dict[str, object], runtime: Runtime) -> int:
    """The workflow attempt of the graph run whose config has ``configurable``."""
    attempt = configurable.get(ATTEMPT_KEY)
    if isinstance(attempt, int) and attempt >= 1:
        return attempt
    return _attempt.get() or runtime.attempt


async def current_runtime() -> Runtime:
    """The runtime of the graph run in progress.

    Raises:
        WrongContext: called outside an orchestrator run (a RuntimeError).
    """
    runtime = _current.get()
    if runtime is None:
        raise WrongContext(
            "no orchestrator runtime in this context: run graphs through "
            "orchestrator.Orchestrator (or the CLI), or under `langgraph dev`"
        )
    return runtime


def emit_event(event_type: str, data: dict[str, Any]) -> None:
    """Publish an event about the graph run in progress, with its ``thread_id``, off the
    node's path (see :mod:`orchestrator.bus.events`); nothing outside an orchestrator run."""
    runtime = _current.get()
    if runtime is None:
        return
    try:
        from langgraph.config import get_config

        thread_id = get_config().get("configurable", {}).get("thread_id")
    except RuntimeError:  # not inside a graph node
        thread_id = None
    runtime.bus.emit(event_type, {"thread_id": thread_id, **data})


async def _flush_learning(runtime: Runtime) -> None:
    """Write the agent-call records still queued (before the pool they are written with
    closes)."""
    from .learning.store import flush_calls

    await flush_calls(runtime)

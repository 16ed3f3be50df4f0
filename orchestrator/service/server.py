"""The ``orchestrator serve`` process: the facade, the runner, the sweeper and the HTTP API in
one event loop, and the SIGTERM drain that hands unfinished runs back.

Start-up opens the :class:`~orchestrator.facade.Orchestrator` (migrating the database), binds
the listening socket (a port in use fails here, before any run is claimed), starts the runner
and the sweeper, then serves :func:`~orchestrator.service.app.create_app` with uvicorn. Signals
are ours, not uvicorn's: SIGTERM or SIGINT stops claiming at once, gives the runs in flight
``settings.drain_grace`` seconds, hands the rest back to the queue, then stops the HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import uvicorn

from orchestrator.errors import InvalidConfiguration
from orchestrator.facade import Orchestrator
from orchestrator.service.runner import PeriodicPass, Runner, Sweeper
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.service.queue import RunQueue

__all__ = ["serve", "periodic_passes"]

log = logging.getLogger(__name__)

#: how long /readyz waits for the database and Redis before it answers "not ready"
_READY_TIMEOUT = 2.0


def periodic_passes(orch: Orchestrator, queue: RunQueue) -> list[PeriodicPass]:
    """The cluster sweeper's jobs, run by whichever serve process holds the sweeper lock.

    Add a pass here (with its own interval) for work that must happen once per cluster."""
    from orchestrator.service.retention import RetentionPass

    retention = RetentionPass(orch.runtime.db, orch.settings)
    return [
        PeriodicPass("runs", queue.sweep, orch.settings.sweep_interval),
        PeriodicPass("retention", retention, orch.settings.retention_interval,
                     close=retention.aclose),
    ]


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the drain decides when the server stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts so that a port in use is
    reported at once (uvicorn would exit the process from inside the event loop)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidConfiguration(f"cannot listen on {host}:{port}: {exc}; give --host an "
                                   "address of this machine") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise InvalidConfiguration(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                                   "choose another --port or --host") from exc
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    concurrency: int,
    hooks_file: Path | None,
    err: TextIO,
) -> None:
    """Run the service until SIGTERM or SIGINT, then drain and return.

    Raises:
        InvalidConfiguration: the address cannot be bound (in use, not an address of this
            machine), or the hooks file is wrong.
    """
    from orchestrator.service.app import ServerContext, create_app
    from orchestrator.service.runs import RunService
    from orchestrator.service.stream import EventHub

    hooks = _load_hooks(hooks_file) if hooks_file is not None else None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Orchestrator(settings) as orch:
            sock = _bind(host, port)
            runs = RunService(orch)
            runner = Runner(runs, runs.queue, concurrency=concurrency,
                            run_lease=settings.run_lease)
            sweeper = Sweeper(orch.runtime.database_url, settings.namespace,
                              periodic_passes(orch, runs.queue),
                              retry_interval=settings.sweep_interval)

            async def ready() -> bool:
                try:
                    async with asyncio.timeout(_READY_TIMEOUT):
                        await orch.runtime.db.fetchone("SELECT 1")
                        await orch.runtime.redis.ping()
                except Exception:  # any failure (or silence) means "not ready"
                    return False
                return runner.claiming

            hub = EventHub.for_runtime(orch.runtime)
            app = create_app(ServerContext(orch=orch, runs=runs, hooks=hooks, ready=ready,
                                           hub=hub))
            http = _Uvicorn(uvicorn.Config(app, host=host, port=port, log_level=_uvicorn_level(),
                                           lifespan="off", access_log=False))
            await hub.start()
            await runner.start()
            await sweeper.start()
            http_task = asyncio.create_task(http.serve(sockets=[sock]), name="http")
            try:
                await _started(http, http_task)
                agents = "agents hosted here" if settings.local_agents else "agents on the bus"
                err.write(f"orchestrator serve: listening on {_url(sock)}; runner {runner.id} "
                          f"with {concurrency} slot(s); {agents}; stop with SIGTERM\n")
                err.flush()
                stopped_by = asyncio.create_task(stop.wait())
                await asyncio.wait({stopped_by, http_task}, return_when=asyncio.FIRST_COMPLETED)
                stopped_by.cancel()
                err.write(f"stopping: {len(runner.held)} run(s) in flight go back to the "
                          f"queue as their step ends (at most {settings.drain_grace:g} s)\n")
                err.flush()
            finally:
                http.should_exit = True
                await hub.stop()  # ends the event streams, which would hold uvicorn open
                await runner.drain(settings.drain_grace)
                await sweeper.stop()
                await _stopped(http, http_task)
                sock.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _started(http: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Wait until uvicorn serves (bounded); its failure to start is raised here."""
    for _ in range(500):
        if http.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
        raise RuntimeError("the HTTP server stopped while starting")
    if not http.started:
        raise RuntimeError("the HTTP server did not start within 5 s")


async def _stopped(http: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Let uvicorn close its connections (bounded), then raise what made it stop, if it
    failed."""
    await asyncio.wait({task}, timeout=5)
    if not task.done():
        http.force_exit = True
        await asyncio.wait({task}, timeout=2)
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    elif not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def _uvicorn_level() -> str:
    """uvicorn's own log lines only when ours are verbose (``-vv``)."""
    return "info" if logging.getLogger().isEnabledFor(logging.DEBUG) else "warning"


def _load_hooks(path: Path) -> Any:
    from orchestrator.service.hooks import load_hooks

    return load_hooks(path)

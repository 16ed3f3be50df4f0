"""SSE fan-out (issue 14, item 5): 500 concurrent ``GET /events`` subscribers on one
``orchestrator serve`` process.

One real ``orchestrator serve`` (a subprocess on a loopback port, its event hub as shipped).
Subscribers are raw HTTP/1.1 connections held by client subprocesses (2 of them, so the
clients' parsing is not one Python loop's queue; this machine's cores are shared by the server
and the clients, so the figures are an upper bound). This process publishes events at a steady
rate (XADD as the bus does, with the wall-clock send time in the event's data); each subscriber
notes when each event reached it. Fan-out latency = received - published, over every
(event, subscriber) pair. Baseline in the same run: 1 subscriber, the same rate.

Redis connections used by the console: the hub's own connection (found in CLIENT LIST by its
name) plus any the serve process opened while the subscribers were connected (its TCP
connections to Redis, counted with psutil, during the 500 against before them). Targets:
fan-out p95 ≤ 100 ms with 500 subscribers; ≤ 2 Redis connections.

    python -m bench.sse [--quick]
    python -m bench.sse subscribers URL TOKEN COUNT EVENTS   (the client processes it starts)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from orchestrator.bus.wire import encode
from orchestrator.facade import Orchestrator
from orchestrator.messages import Event
from orchestrator.service.auth import TokenStore

from .common import Result, percentile, run_standalone, settings, subprocess_env

__all__ = ["run", "serving_console", "Console"]

_TARGET = "fan-out p95 ≤ 100 ms with 500 subscribers; ≤ 2 Redis connections for the console"
_CLIENT_PROCESSES = 2
_SENT = re.compile(rb'"sent":([0-9.]+)')


# -- the client processes ----------------------------------------------------------------------


async def _subscriber(host: str, port: int, token: str, events: int,
                      ready: asyncio.Event, connected: list[int]) -> list[float]:
    """One SSE connection: the latency of each of ``events`` events (seconds)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /events?types=bench.sse HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"/events answered {status!r}")
    while await reader.readline() not in (b"\r\n", b""):
        pass
    connected[0] += 1
    if connected[0] == connected[1]:
        ready.set()
    found: list[float] = []
    pending = b""
    try:
        while len(found) < events:
            chunk = await reader.read(65536)
            if not chunk:
                break
            now = time.time()
            pending += chunk
            end = pending.rfind(b"\r\n\r\n")  # the end of the last whole SSE frame
            if end < 0:
                continue
            whole, pending = pending[:end], pending[end + 4:]
            found += [now - float(sent) for sent in _SENT.findall(whole)]
    finally:
        writer.close()
    return found


async def _subscribers(url: str, token: str, count: int, events: int) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    ready, connected = asyncio.Event(), [0, count]
    tasks = [asyncio.create_task(_subscriber(host, int(port), token, events, ready, connected))
             for _ in range(count)]
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done() and task.exception():
            raise task.exception()  # type: ignore[misc]
    print("ready", flush=True)
    results = await asyncio.gather(*tasks)
    print(json.dumps([round(s, 6) for r in results for s in r]), flush=True)


# -- this process ------------------------------------------------------------------------------


class _Clients:
    """Client processes holding ``count`` subscribers between them."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    @classmethod
    async def start(cls, url: str, token: str, count: int, events: int) -> _Clients:
        shares = [count // _CLIENT_PROCESSES + (i < count % _CLIENT_PROCESSES)
                  for i in range(min(count, _CLIENT_PROCESSES))]
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sse", "subscribers", url, token, str(n), str(events),
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
            for n in shares]
        clients = cls(procs)
        try:
            async with asyncio.timeout(60):
                for proc in procs:
                    assert proc.stdout is not None
                    line = await proc.stdout.readline()
                    if line.strip() != b"ready":
                        raise RuntimeError(f"a client process did not connect: {line!r}")
        except BaseException:
            clients.kill()
            raise
        return clients

    async def latencies(self, timeout: float) -> list[float]:
        found: list[float] = []
        async with asyncio.timeout(timeout):
            for proc in self.procs:
                out, _ = await proc.communicate()
                found += json.loads(out.decode().strip().splitlines()[-1])
        return found

    def kill(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()


async def _serve(base: Any, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.cli", "serve", "--host", "127.0.0.1",
            "--port", "0", "--concurrency", "1", env=subprocess_env(base),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 90
    while not (found := re.search(r"listening on (http://\S+);", _text(log))):
        if proc.returncode is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"orchestrator serve did not start:\n{_text(log)}")
        await asyncio.sleep(0.05)
    return proc, found.group(1)


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


async def _redis_connections(orch: Orchestrator, pid: int, redis_port: int | None) -> int:
    """The serve process's connections to Redis: its TCP connections to Redis's port; with
    the embedded Redis (a Unix socket, private to this benchmark), every client of that Redis
    (this process holds its own steady between two counts)."""
    if redis_port is None:
        return len(await orch.runtime.redis.client_list())
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.raddr and c.raddr.port == redis_port and c.status == "ESTABLISHED")


async def _round(orch: Orchestrator, url: str, token: str, subscribers: int, rate: float,
                 seconds: float, serve_pid: int, redis_port: int | None) -> dict[str, Any]:
    """``subscribers`` connected, events published at ``rate``/s for ``seconds``: the
    latencies and the connections counted meanwhile."""
    events = max(1, round(rate * seconds))
    redis, key = orch.runtime.redis, orch.runtime.bus.keys.events
    before = await _redis_connections(orch, serve_pid, redis_port)
    clients = await _Clients.start(url, token, subscribers, events)
    try:
        during = await _redis_connections(orch, serve_pid, redis_port)
        hub = sum(1 for c in await redis.client_list()
                  if c.get("name", "").startswith(f"orchestrator-events-{orch.settings.namespace}"))
        serve = psutil.Process(serve_pid)
        cpu_before, started = sum(serve.cpu_times()[:2]), time.monotonic()
        for i in range(events):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            event = Event(type="bench.sse", source="bench", data={"sent": time.time(), "n": i})
            await redis.xadd(key, encode(event, orch.runtime.bus.secret))
        samples = await clients.latencies(60 + seconds)
        cpu = (sum(serve.cpu_times()[:2]) - cpu_before) / (time.monotonic() - started)
    finally:
        clients.kill()
    expected = events * subscribers
    return {"subscribers": subscribers, "events": events, "rate_per_s": rate,
            "received": len(samples), "expected": expected,
            "p50_ms": round(percentile(samples, 50) * 1000, 2),
            "p95_ms": round(percentile(samples, 95) * 1000, 2),
            "p99_ms": round(percentile(samples, 99) * 1000, 2),
            "max_ms": round(max(samples, default=float("nan")) * 1000, 2),
            "serve_cpu_share": round(cpu, 2), "load_average_1m": round(os.getloadavg()[0], 2),
            "hub_redis_connections": hub,
            "serve_redis_connections_before": before,
            "serve_redis_connections_during": during}


class Console(NamedTuple):
    """A running console: the publishing orchestrator, the serve process and a viewer token."""

    orch: Orchestrator
    url: str
    token: str
    serve_pid: int
    redis_port: int | None

    async def round(self, subscribers: int, rate: float, seconds: float) -> dict[str, Any]:
        """One fan-out round (see :func:`_round`) on this console."""
        return await _round(self.orch, self.url, self.token, subscribers, rate, seconds,
                            self.serve_pid, self.redis_port)


@contextlib.asynccontextmanager
async def serving_console(base: Any) -> AsyncIterator[Console]:
    """An orchestrator on ``base``, a viewer token and one ``orchestrator serve`` subprocess;
    the process stopped, the token and the events stream deleted afterwards."""
    async with Orchestrator(base, agents=[]) as orch:
        token = (await TokenStore(orch.runtime.db, base.namespace).create("viewer"))[1]
        redis_port = orch.runtime.redis.connection_pool.connection_kwargs.get("port")
        try:
            with tempfile.TemporaryDirectory(prefix="bench-sse-") as tmp:
                proc, url = await _serve(base, Path(tmp) / "serve.log")
                try:
                    yield Console(orch, url, token, proc.pid, redis_port)
                finally:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 30)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        finally:
            await orch.runtime.db.execute("DELETE FROM api_tokens WHERE namespace = %s",
                                          (base.namespace,))
            await orch.runtime.redis.delete(orch.runtime.bus.keys.events)


async def run(quick: bool = False) -> list[Result]:
    many, rate, seconds = (50, 10.0, 2.0) if quick else (500, 20.0, 10.0)
    async with serving_console(settings("sse", local_agents=False)) as served:
        one = await served.round(1, rate, seconds)
        fan = await served.round(many, rate, seconds)
    console = fan["hub_redis_connections"] + max(
        0, fan["serve_redis_connections_during"] - fan["serve_redis_connections_before"])
    fan["console_redis_connections"] = console
    met = (fan["p95_ms"] <= 100 and console <= 2 and fan["received"] == fan["expected"]
           and one["received"] == one["expected"])
    return [Result(
        "sse_fanout_500", _TARGET, met if not quick else None, fan, one,
        round(fan["p95_ms"] / one["p95_ms"], 2) if one["p95_ms"] else None,
        notes=f"one orchestrator serve subprocess on loopback; subscribers in "
              f"{_CLIENT_PROCESSES} client processes (raw HTTP/1.1); {rate:g} events/s for "
              f"{seconds:g} s; latency = wall clock at the subscriber - at XADD; baseline = 1 "
              "subscriber; ratio = p95 / baseline p95; console connections = the hub's named "
              "connection + the serve process's Redis connections added while subscribed; "
              "serve_cpu_share = the serve process's CPU seconds per second while publishing; "
              f"this machine has {os.cpu_count()} cores, shared with the clients")]


def main() -> int:
    if sys.argv[1:2] == ["subscribers"]:
        url, token, count, events = sys.argv[2:6]
        asyncio.run(_subscribers(url, token, int(count), int(events)))
        return 0
    return run_standalone("sse", __doc__, run)


if __name__ == "__main__":
    sys.exit(main())

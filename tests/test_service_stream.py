"""``GET /events`` and ``GET /runs/{thread_id}/stream`` over real HTTP (uvicorn on a free
loopback port in the test's loop, httpx streaming and raw sockets as clients) against real
Redis: filters, Last-Event-ID replay with no gap and no duplicate at the replay/live seam, the
reload event, the slow subscriber dropped while a fast one gets everything, one Redis connection
for many subscribers, auth, heartbeats, and subscribers freed on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from orchestrator.bus.wire import encode, to_text
from orchestrator.messages import Event
from orchestrator.service.app import ServerContext, create_app
from orchestrator.service.auth import TokenStore
from orchestrator.service.stream import EventHub
from tests.support.processes import free_port


@dataclass
class Sse:
    """An SSE response read event by event (comments kept apart)."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lines = self.response.aiter_lines()

    async def take(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The next ``n`` events: ``{"id", "event", "data"}`` (data parsed as JSON)."""
        found: list[dict[str, Any]] = []
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while len(found) < n:
                line = await anext(self._lines)
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line == "":
                    if fields:
                        found.append({"id": fields.get("id"), "event": fields.get("event"),
                                      "data": json.loads(fields.get("data", "null"))})
                        fields = {}
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
        return found

    async def comment(self, timeout: float) -> str:
        """Read until a comment line comes (no event may come before it here)."""
        async with asyncio.timeout(timeout):
            while not self.comments:
                line = await anext(self._lines)
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    assert line == "", f"an event where only a heartbeat was due: {line!r}"
        return self.comments[0]


@dataclass
class Served:
    url: str
    orch: Any
    hub: EventHub
    token: str  # a viewer's
    http: httpx.AsyncClient
    server: uvicorn.Server

    async def publish(self, event_type: str, secret: bytes | None = None, **data: Any) -> str:
        """XADD one event as the bus does (signed with the bus's secret); its entry id."""
        event = Event(type=event_type, source="test", data=data)
        key = self.hub.keys.events
        sign = self.hub.secret if secret is None else secret
        return to_text(await self.orch.runtime.redis.xadd(key, encode(event, sign)))

    @contextlib.asynccontextmanager
    async def sse(self, path: str, last_event_id: str | None = None,
                  token: str | None = None) -> AsyncIterator[Sse]:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        async with self.http.stream("GET", self.url + path, headers=headers) as response:
            assert response.status_code == 200, (await response.aread()).decode()
            assert response.headers["content-type"].startswith("text/event-stream")
            yield Sse(response)


async def until(check: Callable[[], Any], what: str, timeout: float = 10) -> None:
    """Poll ``check`` (state of the server in this loop) until true, at most ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.01)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(orchestrator_factory) -> AsyncIterator[Serve]:
    """``await serve(**hub_options)``: the app with a started hub, served by uvicorn on a free
    loopback port in this loop; all stopped after the test."""
    from orchestrator.service.runs import RunService

    stack = contextlib.AsyncExitStack()

    async def start(*, settings: dict[str, Any] | None = None, **hub_options: Any) -> Served:
        orch = await orchestrator_factory(builtin=False, **(settings or {}))

        async def ready() -> bool:
            return True

        hub = await stack.enter_async_context(EventHub.for_runtime(orch.runtime, **hub_options))
        app = create_app(ServerContext(orch, RunService(orch), None, ready, hub))
        token = (await TokenStore(orch.runtime.db, orch.settings.namespace).create(
            "viewer", "viewer-token"))[1]
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve())
        await until(lambda: server.started or task.done(), "uvicorn started")
        assert not task.done(), task

        async def stop() -> None:
            server.should_exit = True
            await hub.stop()  # as the server does: streams end, uvicorn can stop
            await asyncio.wait_for(task, 10)

        stack.push_async_callback(stop)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        return Served(f"http://127.0.0.1:{port}", orch, hub, token, http, server)

    async with stack:
        yield start


def entry(event: dict[str, Any]) -> tuple[str, str, Any]:
    return event["id"], event["event"], event["data"]["data"]


# -- filters and the event's form ----------------------------------------------------------------


async def test_events_arrive_filtered_with_their_entry_id_type_and_data(serve: Serve) -> None:
    s = await serve()
    async with (s.sse("/events") as every, s.sse("/events?types=step.finished") as steps,
                s.sse("/events?types=workflow.*,lock.acquired") as families,
                s.sse("/events?workflow=deploy") as deploys,
                s.sse("/runs/t1/stream") as t1,
                s.sse("/runs/t1/stream?types=step.finished") as t1_steps,
                s.sse("/events?thread=t2&workflow=deploy") as t2_deploys):
        await until(lambda: len(s.hub.subscribers) == 7, "7 subscribers")
        published = [
            (await s.publish(kind, **data), kind, data) for kind, data in [
                ("workflow.started", {"thread_id": "t1", "workflow_type": "deploy"}),
                ("step.finished", {"thread_id": "t1", "workflow_type": "deploy",
                                   "node": "plan", "seconds": 0.5}),
                ("step.finished", {"thread_id": "t2", "workflow_type": "docs", "node": "a",
                                   "seconds": 1.0}),
                ("lock.acquired", {"resource": "repo", "holder": "h", "token": 3}),
                ("lock.released", {"resource": "repo", "holder": "h", "token": 3}),
                ("workflow.completed", {"thread_id": "t2", "workflow_type": "deploy"}),
                ("workflowish", {"thread_id": "t1"}),
            ]]

        def expect(*indexes: int) -> list[tuple[str, str, Any]]:
            return [published[i] for i in indexes]

        first = (await every.take(7))
        assert [entry(e) for e in first] == expect(0, 1, 2, 3, 4, 5, 6)
        assert first[0]["data"]["type"] == "workflow.started"
        assert first[0]["data"]["source"] == "test" and "T" in first[0]["data"]["at"]
        assert set(first[0]["data"]) == {"type", "source", "data", "at"}
        assert [entry(e) for e in await steps.take(2)] == expect(1, 2)
        assert [entry(e) for e in await families.take(3)] == expect(0, 3, 5)
        assert [entry(e) for e in await deploys.take(3)] == expect(0, 1, 5)
        assert [entry(e) for e in await t1.take(3)] == expect(0, 1, 6)
        assert [entry(e) for e in await t1_steps.take(1)] == expect(1)
        assert [entry(e) for e in await t2_deploys.take(1)] == expect(5)
        # nothing more came to the filtered ones: the next event they get is the next match
        marker = await s.publish("step.finished", thread_id="t1", workflow_type="deploy")
        assert (await steps.take(1))[0]["id"] == marker
        assert (await t1_steps.take(1))[0]["id"] == marker
    await until(lambda: not s.hub.subscribers, "every subscriber freed on disconnect")


async def test_entries_not_signed_with_the_bus_secret_are_not_streamed(serve: Serve) -> None:
    s = await serve(settings={"bus_secret": "s3cret"})
    async with s.sse("/events") as every:
        await until(lambda: len(s.hub.subscribers) == 1, "subscribed")
        await s.publish("workflow.started", secret=b"forged", thread_id="x")
        signed = await s.publish("workflow.completed", thread_id="x")
        assert [e["id"] for e in await every.take(1)] == [signed]


# -- Last-Event-ID ---------------------------------------------------------------------------


async def test_a_reconnect_with_last_event_id_gets_exactly_what_it_missed(serve: Serve) -> None:
    s = await serve()
    ids = [await s.publish("step.finished", thread_id="t", n=i) for i in range(3)]
    async with s.sse("/events") as first:  # live only: nothing from before it connected
        await until(lambda: len(s.hub.subscribers) == 1, "subscribed")
        ids += [await s.publish("step.finished", thread_id="t", n=i) for i in range(3, 6)]
        got = await first.take(2)
    assert [e["id"] for e in got] == ids[3:5]
    await until(lambda: not s.hub.subscribers, "freed on disconnect")
    ids += [await s.publish("step.finished", thread_id="t", n=i) for i in range(6, 10)]
    async with s.sse("/events", last_event_id=got[-1]["id"]) as again:
        replayed = await again.take(5)
        assert [e["id"] for e in replayed] == ids[5:10]
        ids += [await s.publish("step.finished", thread_id="t", n=i) for i in (10, 11)]
        assert [e["id"] for e in await again.take(2)] == ids[10:12]
    # the query parameter, for clients that cannot set the header, and a filtered replay
    async with s.sse(f"/runs/t/stream?types=step.finished&last_event_id={ids[8]}") as by_query:
        assert [e["data"]["data"]["n"] for e in await by_query.take(3)] == [9, 10, 11]


async def test_no_gap_and_no_duplicate_at_the_seam_while_events_keep_coming(
        serve: Serve) -> None:
    """Reconnect again and again while a publisher writes without pause: the events received
    over all connections are each published one exactly once, in order."""
    s = await serve(batch=7)
    total = 1500
    published: list[str] = []

    async def publisher() -> None:
        redis, key = s.orch.runtime.redis, s.hub.keys.events
        for i in range(total):
            event = Event(type="step.finished", source="test", data={"n": i})
            published.append(to_text(await redis.xadd(key, encode(event, s.hub.secret))))

    received: list[str] = []
    last: str | None = None
    async with s.sse("/events") as first:
        await until(lambda: len(s.hub.subscribers) == 1, "subscribed")
        writer = asyncio.create_task(publisher())
        received += [e["id"] for e in await first.take(20)]
    connections = 1
    try:
        while len(received) < total:
            last = received[-1]
            async with s.sse("/events", last_event_id=last) as again:
                connections += 1
                left = total - len(received)
                received += [e["id"] for e in await again.take(min(left, 37 + connections))]
        await writer
    finally:
        writer.cancel()
    assert connections > 20
    assert received == published
    assert len(set(received)) == total


async def test_an_id_no_longer_kept_gets_reload_then_live_events(serve: Serve) -> None:
    s = await serve()
    ids = [await s.publish("step.finished", n=i) for i in range(10)]
    redis, key = s.orch.runtime.redis, s.hub.keys.events
    await redis.xtrim(key, maxlen=3, approximate=False)  # ids[0:7] are gone
    async with s.sse("/events", last_event_id=ids[7]) as kept:  # the oldest kept
        assert [e["id"] for e in await kept.take(2)] == ids[8:10]
    async with s.sse("/events", last_event_id=ids[2]) as lost:
        reload = (await lost.take(1))[0]
        assert reload["event"] == "reload" and reload["id"] is None
        assert "reload" in reload["data"]["reason"]
        live = await s.publish("step.finished", n=10)
        assert [e["id"] for e in await lost.take(1)] == [live]
    ahead = f"{int(ids[-1].split('-')[0]) + 60_000}-0"  # not of this stream (a reset Redis)
    async with s.sse("/events", last_event_id=ahead) as other:
        assert (await other.take(1))[0]["event"] == "reload"
    bad = await s.http.get(s.url + "/events", headers={"Authorization": f"Bearer {s.token}",
                                                        "Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and "stream entry id" in bad.json()["error"]["message"]


# -- the slow, the many, and the rest ------------------------------------------------------------


async def _raw_subscriber(port: int, token: str) -> socket.socket:
    """A client that asks for /events, reads the answer's head and then nothing (a tiny
    receive buffer, so the server's sends to it block soon)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, (f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   f"Authorization: Bearer {token}\r\nConnection: close\r\n"
                                   "\r\n").encode())
    head = b""
    async with asyncio.timeout(10):
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


async def test_a_slow_subscriber_is_dropped_and_never_slows_a_fast_one(serve: Serve) -> None:
    s = await serve(queue_size=64, batch=32)
    port = int(s.url.rsplit(":", 1)[1])
    slow = await _raw_subscriber(port, s.token)
    await until(lambda: len(s.hub.subscribers) == 1, "the slow one subscribed")
    (slow_sub,) = s.hub.subscribers
    padding = "x" * 2048
    published: list[str] = []
    async with s.sse("/events") as fast:
        await until(lambda: len(s.hub.subscribers) == 2, "both subscribed")
        received: list[str] = []
        # chunks of 32, each read by the fast client before the next: it keeps up, the
        # slow one reads nothing until its queue is full and it is dropped
        while s.hub.dropped == 0 and len(published) < 6000:
            published += [await s.publish("step.finished", n=len(published), pad=padding)
                          for _ in range(32)]
            received += [e["id"] for e in await fast.take(len(published) - len(received))]
        assert s.hub.dropped == 1, f"no subscriber dropped after {len(published)} events"
        assert len(s.hub.subscribers) == 1 and slow_sub not in s.hub.subscribers
        # its response ends though its client reads nothing: only the fast one's request
        # is still served
        await until(lambda: len(s.server.server_state.tasks) == 1, "the slow response ended")
        for _ in range(3):  # and the fast one goes on
            published += [await s.publish("step.finished", n=len(published)) for _ in range(32)]
            received += [e["id"] for e in await fast.take(len(published) - len(received))]
        assert received == published
    # the slow client's response was ended: it reads to the end of it (its connection closes)
    loop = asyncio.get_running_loop()
    got = b""
    async with asyncio.timeout(15):
        while chunk := await loop.sock_recv(slow, 65536):
            got += chunk
    slow.close()
    assert 0 < got.count(b"\r\nevent: step.finished") < len(published)


async def test_many_subscribers_share_one_redis_connection(serve: Serve) -> None:
    s = await serve()
    redis = s.orch.runtime.redis

    async def hub_connections() -> int:
        return sum(1 for c in await redis.client_list()
                   if c.get("name") == s.hub.client_name)

    assert await hub_connections() == 1
    async with contextlib.AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(s.sse(f"/events?types=x.{i % 3},y"))
                   for i in range(60)]
        await until(lambda: len(s.hub.subscribers) == 60, "60 subscribers")
        assert await hub_connections() == 1
        shared = await s.publish("y")
        for stream in streams:
            assert [e["id"] for e in await stream.take(1)] == [shared]
    await until(lambda: not s.hub.subscribers, "all 60 freed")
    assert await hub_connections() == 1


async def test_no_token_or_a_bad_one_is_refused(serve: Serve) -> None:
    s = await serve()
    for path in ("/events", "/runs/t1/stream"):
        missing = await s.http.get(s.url + path)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        bad = await s.http.get(s.url + path, headers={"Authorization": "Bearer orch_nope"})
        assert bad.status_code == 401
    assert not s.hub.subscribers


async def test_heartbeat_comments_keep_an_idle_stream_open(serve: Serve) -> None:
    s = await serve(heartbeat=0.2)
    async with s.sse("/events") as idle:
        assert (await idle.comment(timeout=5)).startswith("ping")


async def test_a_disconnect_frees_the_subscriber_and_its_tasks(serve: Serve) -> None:
    s = await serve()
    async with s.sse("/events") as warm:  # the server's per-loop helpers exist from here
        await until(lambda: len(s.hub.subscribers) == 1, "subscribed")
        await s.publish("a")
        await warm.take(1)
    await until(lambda: not s.hub.subscribers, "freed")
    tasks = len(asyncio.all_tasks())
    for _ in range(5):
        async with s.sse("/events") as stream:
            await until(lambda: len(s.hub.subscribers) == 1, "subscribed")
            assert len(asyncio.all_tasks()) > tasks
            await s.publish("a")
            await stream.take(1)
        await until(lambda: not s.hub.subscribers, "freed at once on disconnect", timeout=2)
    await until(lambda: len(asyncio.all_tasks()) <= tasks, "no task left behind")


async def test_stopping_the_hub_ends_every_stream(serve: Serve) -> None:
    s = await serve()
    async with s.sse("/events") as stream:
        await until(lambda: len(s.hub.subscribers) == 1, "subscribed")
        await s.hub.stop()
        async with asyncio.timeout(5):
            with pytest.raises(StopAsyncIteration):
                await stream.take(1)
    answer = await s.http.get(s.url + "/events", headers={"Authorization": f"Bearer {s.token}"})
    assert answer.status_code == 503

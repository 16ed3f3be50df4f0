"""Server-Sent Events of the events stream: ``GET /events`` and ``GET /runs/{thread_id}/stream``.

One :class:`EventHub` per process reads the events stream (``BusKeys.events``) with one XREAD
loop on one dedicated Redis connection (named, so ``CLIENT LIST`` shows it) and fans each entry
out to the subscribers' bounded queues: a browser tab costs a queue, never a Redis connection.
An entry is decoded, checked against the bus secret and encoded as an SSE frame once, whatever
the number of subscribers. A subscriber whose queue fills is dropped at once (the hub never
waits for anybody) and its response ends; its client reconnects with ``Last-Event-ID`` and
loses nothing the stream still keeps.

Each SSE event: ``id`` = the stream entry id, ``event`` = the event type, ``data`` = JSON
``{type, source, data, at}``.

Replay without gap or duplicate: a reconnecting subscriber is registered first (its queue gets
every entry after the hub's position H from then on), then the entries after its
``Last-Event-ID`` X are read with XRANGE up to the stream's end T, which is at least H because
H was already in Redis. Live entries are then taken from the queue, skipping any whose id is
not after T (they were in the replay). If entries after X are no longer kept (trimmed: Redis
records the largest deleted id), or X is past the end of the stream (a different stream), the
client gets ``event: reload`` first, then live events.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError
from redis.asyncio import ConnectionPool, Redis
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from orchestrator.bus.keys import BusKeys
from orchestrator.bus.wire import DecodeFailure, to_text, verified
from orchestrator.errors import InvalidInput
from orchestrator.messages import Event
from orchestrator.tasks import cancel_and_wait, cancel_requested

if TYPE_CHECKING:
    from orchestrator.runtime import Runtime
    from orchestrator.service.app import Call, ServerContext

__all__ = ["EventFilter", "EventHub", "Subscription", "routes"]

log = logging.getLogger(__name__)

StreamId = tuple[int, int]

_ID = re.compile(r"^(\d+)-(\d+)$")


def parse_id(raw: bytes | str) -> StreamId:
    """A stream entry id ``ms-seq`` as a comparable pair.

    Raises:
        InvalidInput: not of that form.
    """
    match = _ID.match(to_text(raw).strip())
    if match is None:
        raise InvalidInput(f"event id {to_text(raw)[:60]!r} is not a stream entry id "
                           "(<milliseconds>-<sequence>, as sent in the SSE id field)")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber gets: any of ``types`` (``prefix.*`` matches a family; empty:
    all), of workflow type ``workflow`` and of thread ``thread`` (``None``: any)."""

    types: frozenset[str] = frozenset()
    workflow: str | None = None
    thread: str | None = None

    @classmethod
    def of(cls, types: str | None, workflow: str | None, thread: str | None) -> EventFilter:
        names = frozenset(t.strip() for t in (types or "").split(",") if t.strip())
        return cls(names, workflow or None, thread or None)

    def matches(self, event: Event) -> bool:
        if self.types and event.type not in self.types and not any(
                t.endswith(".*") and event.type.startswith(t[:-1]) for t in self.types):
            return False
        if self.workflow is not None and event.data.get("workflow_type") != self.workflow:
            return False
        return self.thread is None or event.data.get("thread_id") == self.thread


@dataclass(frozen=True, slots=True)
class Item:
    """One entry of the stream, decoded once and shared by every subscriber."""

    key: StreamId
    event: Event
    frame: bytes  # the SSE frame: id, event, data


@dataclass(eq=False)
class Subscription:
    """One subscriber: its filter and bounded queue. ``None`` in the queue ends it."""

    filter: EventFilter
    queue: asyncio.Queue[Item | None]
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class EventHub:
    """The process's one reader of the events stream, fanning out to subscribers.

    Use ``async with`` (or :meth:`start` / :meth:`stop`). ``redis`` gives the connection
    parameters (the runtime's client); the hub opens its own single connection, named
    ``client_name``, and reads replays through ``redis`` itself (brief, pooled).
    """

    def __init__(self, redis: Redis, keys: BusKeys, secret: bytes | None, *, client_name: str,
                 queue_size: int = 1000, heartbeat: float = 15.0, block_ms: int = 1000,
                 batch: int = 500) -> None:
        self.redis = redis
        self.keys = keys
        self.secret = secret or None
        self.client_name = client_name
        self.queue_size = queue_size
        self.heartbeat = heartbeat
        self.block_ms = block_ms
        self.batch = batch
        self.subscribers: set[Subscription] = set()
        self.dropped = 0  # subscribers dropped for a full queue, since start
        self._conn: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._position = b"0-0"

    @classmethod
    def for_runtime(cls, runtime: Runtime, **options: Any) -> EventHub:
        """The hub of ``runtime``'s events stream, with its bus's secret."""
        bus = runtime.bus
        name = f"orchestrator-events-{runtime.settings.namespace}-{runtime.process_id}"
        return cls(runtime.redis, bus.keys, bus.secret,
                   client_name=re.sub(r"[^\w.:-]", "_", name), **options)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> EventHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the dedicated connection and read from the stream's current end."""
        pool = self.redis.connection_pool
        self._conn = Redis(connection_pool=ConnectionPool(
            connection_class=pool.connection_class, max_connections=1,
            **{**pool.connection_kwargs, "client_name": self.client_name}))
        last = await self._conn.xrevrange(self.keys.events, count=1)
        self._position = last[0][0] if last else b"0-0"
        self._task = asyncio.create_task(self._read(), name="event-hub")

    async def stop(self) -> None:
        """Stop reading and end every subscriber's response."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for sub in list(self.subscribers):
            self._end(sub)
        if self._conn is not None:
            await self._conn.aclose(close_connection_pool=True)
            self._conn = None

    # -- subscribers -----------------------------------------------------------------------

    def subscribe(self, wanted: EventFilter) -> Subscription:
        """A new subscriber getting every matching entry after the hub's position from now."""
        sub = Subscription(wanted, asyncio.Queue(self.queue_size))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def _end(self, sub: Subscription) -> None:
        """Remove ``sub`` and make its reader stop (what it has not read is discarded: its
        client catches up from its last id)."""
        self.subscribers.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)
        sub.dropped.set()

    def _dispatch(self, item: Item) -> None:
        for sub in list(self.subscribers):
            if not sub.filter.matches(item.event):
                continue
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped += 1
                log.info("dropped an event subscriber that fell %d events behind",
                         self.queue_size)
                self._end(sub)

    # -- reading -----------------------------------------------------------------------------

    def _item(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Item | None:
        try:
            event = Event.model_validate_json(verified(fields, self.secret))
        except (DecodeFailure, ValidationError) as exc:
            log.debug("skipped events entry %s: %s", to_text(entry_id), exc)
            return None
        text = to_text(entry_id)
        frame = ServerSentEvent(event.model_dump_json(), id=text, event=event.type).encode()
        return Item(parse_id(text), event, frame)

    async def _read(self) -> None:
        assert self._conn is not None
        failures = 0
        while not cancel_requested():  # redis-py can swallow a cancel that lands as a read ends
            try:
                replies = await self._conn.xread({self.keys.events: self._position},
                                                 count=self.batch, block=self.block_ms)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: retry from the same position, lose nothing
                failures += 1
                log.warning("event hub: reading %s failed (%s); retrying", self.keys.events, exc)
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))
                continue
            for _stream, entries in (replies.items() if isinstance(replies, dict) else replies):
                for entry_id, fields in entries:
                    self._position = entry_id
                    item = self._item(entry_id, fields)
                    if item is not None:
                        self._dispatch(item)

    async def replay(self, after: StreamId, wanted: EventFilter) -> AsyncIterator[Item | StreamId]:
        """The kept entries after ``after`` matching ``wanted``, oldest first, paged; then
        the id of the last entry read (matching or not), where the replay ended."""
        start, last = f"({after[0]}-{after[1]}", after
        while True:
            page = await self.redis.xrange(self.keys.events, min=start, count=self.batch)
            for entry_id, fields in page:
                item = self._item(entry_id, fields)
                last = parse_id(entry_id)
                if item is not None and wanted.matches(item.event):
                    yield item
            if len(page) < self.batch:
                break
            start = f"({last[0]}-{last[1]}"
        yield last

    async def lost_since(self, after: StreamId) -> bool:
        """Whether entries after ``after`` may be trimmed away (``after`` is older than the
        oldest entry kept), or ``after`` is not of this stream (past its end, or the stream is
        gone). An ``after`` that was itself the last entry trimmed counts as lost too: the
        stream does not say what it trimmed."""
        try:
            info = await self.redis.xinfo_stream(self.keys.events)
        except Exception:  # no such stream: nothing it had is kept
            return True
        last = parse_id(info["last-generated-id"])
        if after > last:
            return True
        first = info.get("first-entry")
        return after < parse_id(first[0]) if first else after < last


# -- the HTTP side -------------------------------------------------------------------------------


class _HubResponse(EventSourceResponse):
    """An SSE response that ends as soon as its subscriber is dropped, even when it is stuck
    sending to a client that reads nothing (after a short grace: a reader waiting on its
    queue ends cleanly by itself), and that always unsubscribes."""

    def __init__(self, hub: EventHub, sub: Subscription, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, ping=hub.heartbeat)
        self.hub, self.sub = hub, sub

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # no send timeout here (a stuck client is dropped by its full queue instead), so no
        # cancel scope per frame: with hundreds of subscribers it cost as much as the write
        await send(message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def end_when_dropped() -> None:
                    await self.sub.dropped.wait()
                    await anyio.sleep(1.0)
                    group.cancel_scope.cancel()

                group.start_soon(end_when_dropped)
                await super().__call__(scope, receive, send)
                group.cancel_scope.cancel()
        finally:
            self.hub.unsubscribe(self.sub)


def _last_event_id(call: Call) -> StreamId | None:
    raw = call.request.headers.get("last-event-id") or call.query["last_event_id"]
    return parse_id(raw) if raw else None


async def _frames(hub: EventHub, sub: Subscription, after: StreamId | None) -> AsyncIterator[bytes]:
    """What one subscriber is sent: the replay after ``after`` (or a reload), then live."""
    try:
        seen: StreamId = (-1, -1)
        if after is not None:
            if await hub.lost_since(after):
                yield ServerSentEvent('{"reason": "events after the last id are no longer '
                                      'kept; reload the page"}', event="reload").encode()
            else:
                async for found in hub.replay(after, sub.filter):
                    if isinstance(found, Item):
                        yield found.frame
                    else:
                        seen = found
        while True:  # what waits in the queue goes out as one chunk (one send, not n)
            batch = [await sub.queue.get()]
            while not sub.queue.empty():
                batch.append(sub.queue.get_nowait())
            frames = b"".join(i.frame for i in batch if i is not None and i.key > seen)
            if frames:
                yield frames
            if batch[-1] is None:  # dropped or the hub stopped (None is always last)
                return
    finally:
        hub.unsubscribe(sub)


async def _events(call: Call, thread: str | None = None) -> Any:
    hub: EventHub | None = call.ctx.hub
    if hub is None or not hub.running:
        return JSONResponse({"error": {"code": "not_ready", "message": "this process streams "
                                       "no events (its event hub is not running); try again"}},
                            status_code=503)
    q = call.query
    after = _last_event_id(call)
    sub = hub.subscribe(EventFilter.of(q["types"], q["workflow"], thread or q["thread"]))
    return _HubResponse(hub, sub, _frames(hub, sub, after))


async def _run_stream(call: Call) -> Any:
    return await _events(call, call.param("thread_id"))


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """``GET /events`` and ``GET /runs/{thread_id}/stream`` (role viewer), authenticated and
    answered like the API's other routes (``app._serve``)."""
    from orchestrator.service.app import Endpoint, Query, _serve

    query = (
        Query("types", description="comma-separated event types; `family.*` for a family"),
        Query("workflow", description="only events of this workflow type"),
        Query("thread", description="only events of this thread id"),
        Query("last_event_id", description="resume after this event id (for clients that "
                                           "cannot send the Last-Event-ID header)"),
    )
    endpoints = (
        Endpoint("GET", "/events", _events, "viewer",
                 "The event log as Server-Sent Events (live; Last-Event-ID replays what was "
                 "missed)", query=query, answer="text"),
        Endpoint("GET", "/runs/{thread_id}/stream", _run_stream, "viewer",
                 "One workflow's events as Server-Sent Events", query=query[:2] + query[3:],
                 answer="text"),
    )
    return [Route(ep.path, _serve(ctx, ep), methods=[ep.method], name=f"get{ep.handler.__name__}")
            for ep in endpoints]

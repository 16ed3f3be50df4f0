"""The LangGraph checkpointer: ``AsyncPostgresSaver`` over the shared psycopg pool, each of its
writes sent as one statement.

LangGraph's saver makes a write (``aput``, ``aput_writes``) as a pipeline of one statement per
row: a 10-step workflow sends 37 of them, each its own implicit transaction, and the
pipeline's client-side bookkeeping is most of the write's CPU (measured with py-spy on
``bench.peers``' 10-step workflow: the saver was 42% of bare LangGraph's CPU). This saver keeps
the saver's own code (what is stored, how it is serialized, the reads) and sends what a write
records as ONE statement: the rows of a table as one multi-row ``VALUES``, the blobs and the
checkpoint in one statement of two ``INSERT``\\ s. The rows and their conflict rules are the
saver's own; a statement this module does not know (a newer saver's, ``adelete_thread``'s)
goes as the saver sends it.

Fenced writes (``orchestrator serve``, :mod:`orchestrator.service.fencing`): when the service
sets a fence (:data:`WRITE_FENCE`), the statement also selects ``orchestrator_fence(...)``,
which raises unless the run's lease is still held: one statement checks and writes, so a
refused check writes nothing.

A caller that knows a thread has no checkpoint yet (the service's claim reads it in its own
statement) says so with :func:`known_empty`: LangGraph's first read of the run then finds none
without a round trip.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import orjson
import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.postgres import _ainternal
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from orchestrator.state.db import Database
from orchestrator.state.store import FENCE_CALL, WRITE_FENCE
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__all__ = ["make_checkpointer", "FencedSaver", "known_empty"]

# one row of each table, typed (a column may be NULL in every row: its type is the cast's)
_BLOB_ROW = "(%s::text, %s::text, %s::text, %s::text, %s::text, %s::bytea)"
_WRITE_ROW = ("(%s::text, %s::text, %s::text, %s::text, %s::text, %s::integer, %s::text, "
              "%s::text, %s::bytea)")
_CHECKPOINT = """
    INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                             checkpoint, metadata)
    SELECT %s::text, %s::text, %s::text, %s::text, %s::jsonb, %s::jsonb {source}
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
    DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata"""
_BLOBS = """
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT b.* FROM (VALUES {rows}) AS b {fence}
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING"""
_WRITES = """
    INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path,
                                   idx, channel, type, blob)
    SELECT w.* FROM {fence}(VALUES {rows}) AS w
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) {action}"""
#: parameters one statement may carry (the protocol's limit is 65,535)
_MAX_PARAMS = 60_000
_UPSERT = "DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"


@functools.lru_cache(maxsize=256)
def _statement(kind: str, rows: int, fenced: bool) -> str:
    """The one statement of a write of ``kind`` with ``rows`` rows (a multi-row ``VALUES``:
    psycopg adapts its scalars in C, where arrays for ``unnest`` cost twice the CPU), with the
    fence's check first when ``fenced``."""
    fence_cte = f"WITH fence AS MATERIALIZED (SELECT {FENCE_CALL})" if fenced else ""
    source = "FROM fence" if fenced else ""
    if kind == "checkpoint":
        return fence_cte + _CHECKPOINT.format(source=source)
    if kind == "blobs+checkpoint":
        blobs = _BLOBS.format(rows=", ".join([_BLOB_ROW] * rows),
                              fence=", fence" if fenced else "")
        return (f"{fence_cte}, " if fenced else "WITH ") + f"blobs AS ({blobs})" \
            + _CHECKPOINT.format(source=source)
    return _WRITES.format(rows=", ".join([_WRITE_ROW] * rows),
                          fence=f"{FENCE_CALL} AS fence, " if fenced else "",
                          action=_UPSERT if kind == "upsert writes" else "DO NOTHING")


class _Empty:
    """A thread that has no checkpoint, as far as its run knows (:func:`known_empty`)."""

    __slots__ = ("thread_id", "empty")

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self.empty = True


_KNOWN_EMPTY: ContextVar[_Empty | None] = ContextVar("orchestrator_known_empty", default=None)


@contextlib.contextmanager
def known_empty(thread_id: str) -> Iterator[None]:
    """In this block, the latest checkpoint of ``thread_id`` (its root namespace) is read as
    none, without asking the database, until a checkpoint of it is written. For a caller that
    knows, and whose run is the thread's only writer: the service's runs (the claim read it,
    and the run's lease fences every other writer out)."""
    token = _KNOWN_EMPTY.set(_Empty(thread_id))
    try:
        yield
    finally:
        _KNOWN_EMPTY.reset(token)


class _Recorder:
    """What the saver's write sends on its cursor, recorded to be sent as one statement."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, bool]] = []

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        self.calls.append((query, params, False))

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        self.calls.append((query, list(params_seq), True))


class FencedSaver(AsyncPostgresSaver):
    """``AsyncPostgresSaver`` whose writes are one statement each, checking the run's fence
    (:data:`WRITE_FENCE`) when the service sets one (see the module's text).

    The saver makes every write on a ``_cursor(pipeline=True)``: that cursor records the
    write's statements, and they are sent when the write's block ends: as one statement when
    they are the saver's known ``INSERT``\\ s, else as they were (in a pipeline whose first
    statement checks the fence). Reads are the saver's own, unchanged.
    """

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The saver's own, but a thread known to have no checkpoint (:func:`known_empty`) is
        not asked about (a round trip, ~0.3 ms, at the start of every run)."""
        empty = _KNOWN_EMPTY.get()
        configurable = config["configurable"]
        if (empty is not None and empty.empty and configurable.get("thread_id") == empty.thread_id
                and not configurable.get("checkpoint_ns") and not configurable.get("checkpoint_id")):
            return None
        return await super().aget_tuple(config)

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        empty = _KNOWN_EMPTY.get()
        if empty is not None and config["configurable"].get("thread_id") == empty.thread_id:
            empty.empty = False  # from now on (even if this write fails), ask
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        """The saver's own, but for its rows: serialized here rather than in a worker thread.
        A step's writes take microseconds to serialize, the hop to the thread and back ~80 us
        of CPU (measured: 0.7 us for a 663-byte state update, 83 us for ``to_thread`` of it),
        and every task pays it; a write of megabytes holds the event loop ~1 ms per MB."""
        query = (self.UPSERT_CHECKPOINT_WRITES_SQL if all(w[0] in WRITES_IDX_MAP for w in writes)
                 else self.INSERT_CHECKPOINT_WRITES_SQL)
        configurable = config["configurable"]
        params = self._dump_writes(configurable["thread_id"], configurable["checkpoint_ns"],
                                   configurable["checkpoint_id"], task_id, task_path, writes)
        async with self._cursor(pipeline=True) as cur:
            await cur.executemany(query, params)

    @contextlib.asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
        if not pipeline:
            async with super()._cursor(pipeline=False) as cur:
                yield cur
            return
        recorder = _Recorder()
        yield recorder
        if recorder.calls:
            await self._send(recorder.calls)

    async def _send(self, calls: list[tuple[str, Any, bool]]) -> None:
        fence = WRITE_FENCE.get()
        one = self._one_statement(calls, fence is not None)
        async with self.lock, _ainternal.get_connection(self.conn) as conn:
            try:
                async with conn.cursor(binary=True) as cur:
                    if one is not None:
                        query, params = one
                        for param in params:
                            if isinstance(param, Jsonb) and param.dumps is None:
                                param.dumps = _json_dumps
                        if fence is not None:
                            params = [*fence.params, *params]
                        await cur.execute(query, params)
                        return
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    target = fence.cursor(cur) if fence is not None else cur
                    for query, params, many in calls:
                        if many:
                            await target.executemany(query, params)
                        else:
                            await target.execute(query, params)
            except psycopg.Error as exc:
                if fence is None or (refused := fence.refusal(exc, "checkpoint")) is None:
                    raise
                raise refused from None

    def _one_statement(self, calls: list[tuple[str, Any, bool]],
                       fenced: bool) -> tuple[str, list[Any]] | None:
        """``calls`` as one statement and its parameters (the fence's go first), or None when
        they are not the saver's known writes."""
        kinds = [(query, many) for query, _, many in calls]
        if sum(len(params) * (len(params[0]) if many and params else 1)
               for _, params, many in calls) > _MAX_PARAMS:
            return None  # the protocol's limit: sent as the saver sends it
        if kinds == [(self.UPSERT_CHECKPOINTS_SQL, False)]:
            return _statement("checkpoint", 1, fenced), list(calls[0][1])
        if kinds == [(self.UPSERT_CHECKPOINT_BLOBS_SQL, True), (self.UPSERT_CHECKPOINTS_SQL, False)]:
            if not (blobs := calls[0][1]):
                return _statement("checkpoint", 1, fenced), list(calls[1][1])
            return (_statement("blobs+checkpoint", len(blobs), fenced),
                    [*_flat(blobs), *calls[1][1]])
        if kinds == [(self.INSERT_CHECKPOINT_WRITES_SQL, True)] and calls[0][1]:
            return _statement("writes", len(calls[0][1]), fenced), _flat(calls[0][1])
        if kinds == [(self.UPSERT_CHECKPOINT_WRITES_SQL, True)] and calls[0][1]:
            # row by row, a later row of the same key replaced an earlier one: in one
            # statement a key may appear once, so the last of each is what is sent
            rows = list({row[:4] + (row[5],): row for row in calls[0][1]}.values())
            return _statement("upsert writes", len(rows), fenced), _flat(rows)
        return None


def _json_dumps(obj: Any) -> bytes | str:
    """The checkpoint and its metadata as JSON: orjson, ~8x json's speed on a checkpoint (one
    per step: 2.1 against 17.7 us, measured), the same bytes for the same JSON values; json
    for what orjson refuses (integers past 64 bits), so what json could store is stored. A NaN
    or infinite float (json's ``NaN``, which jsonb refuses) becomes ``null``."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(obj)


def _flat(rows: Sequence[Sequence[Any]]) -> list[Any]:
    """The parameters of ``rows`` in a multi-row ``VALUES``."""
    return [value for row in rows for value in row]


def make_checkpointer(db: Database) -> FencedSaver:
    """A saver on ``db``'s pool. The schema is set up by :func:`orchestrator.state.migrations.migrate`."""
    saver = FencedSaver(db.pool)  # type: ignore[arg-type]
    # The saver serializes every read and write behind one process-wide lock, which a single
    # shared connection needs; on a pool each operation takes a connection of its own, so
    # the lock only queues concurrent workflows (measured: 300 concurrent no-op workflows went
    # from 29-30 to 38-44 per second without it).
    saver.lock = contextlib.nullcontext()  # type: ignore[assignment]
    return saver

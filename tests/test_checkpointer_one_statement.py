"""FencedSaver sends each of the saver's writes as one statement: it stores exactly what
LangGraph's ``AsyncPostgresSaver`` stores, a stale fence's write stores nothing, and statements
it does not know (``adelete_thread``'s) still go as the saver sends them, fenced."""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT
from orchestrator.state.checkpointer import FencedSaver, make_checkpointer
from psycopg.types.json import Jsonb

from orchestrator.errors import LeaseLost
from orchestrator.service.fencing import Fence, fenced
from orchestrator.service.runs import RunService

from .support.graphs_for_tests import approval

_ORDER = {"checkpoints": "checkpoint_ns, checkpoint_id",
          "checkpoint_blobs": "checkpoint_ns, channel, version",
          "checkpoint_writes": "checkpoint_ns, checkpoint_id, task_id, idx"}


@pytest.fixture
async def env(orchestrator_factory: Any) -> tuple[FencedSaver, Any, Fence, Fence, str]:
    """(saver, db, a stale fence, the holder's fence, a prefix for this test's thread ids) of
    one run taken over by a second runner (the database is shared by the session's tests)."""
    orch = await orchestrator_factory(builtin=False, workflows={"approval": approval})
    svc, db = RunService(orch), orch.runtime.db
    p = uuid.uuid4().hex[:8]
    await svc.submit("approval", {"change": "x"}, f"{p}-run")
    old = await svc.queue.claim("r1")
    await db.execute("UPDATE runs SET lease_expires_at = now() - interval '1 second' "
                     "WHERE run_id = %s", (old.run_id,))
    assert await svc.queue.sweep() == 1
    new = await svc.queue.claim("r2")
    return (make_checkpointer(db), db, Fence(f"{p}-run", old.run_id, old.lease_epoch, "r1"),
            Fence(f"{p}-run", new.run_id, new.lease_epoch, "r2"), p)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every checkpoint statement sent to the server (an executemany sends one per row)."""
    statements: list[str] = []
    execute, executemany = psycopg.AsyncCursor.execute, psycopg.AsyncCursor.executemany

    def keep(query: Any, times: int = 1) -> None:
        text = query.decode() if isinstance(query, bytes) else str(query)
        if "checkpoint" in text or "orchestrator_fence" in text:
            statements.extend([text] * times)

    async def spy_execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        keep(query)
        return await execute(self, query, params, **kw)

    async def spy_executemany(self: Any, query: Any, params_seq: Any, **kw: Any) -> Any:
        params_seq = list(params_seq)
        keep(query, len(params_seq))
        return await executemany(self, query, params_seq, **kw)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", spy_execute)
    monkeypatch.setattr(psycopg.AsyncCursor, "executemany", spy_executemany)
    return statements


def _config(thread: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    extra = {"checkpoint_id": checkpoint_id} if checkpoint_id else {}
    return {"configurable": {"thread_id": thread, "checkpoint_ns": "", **extra}}


def _checkpoint(values: dict[str, Any], version: str) -> dict[str, Any]:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = values
    checkpoint["channel_versions"] = {k: version for k in values}
    return checkpoint


BLOBS = _checkpoint({"state": {"items": [1, 2]}, "log": ["a"], "note": "hi", "n": 3,
                     "flag": None}, "1")
INLINE = _checkpoint({"note": "bye", "n": 4, "ok": True}, "2")
# the same blob versions again, new values: the blobs' DO NOTHING keeps the first
AGAIN = _checkpoint({"state": {"items": ["other"]}, "log": ["b"], "note": "3"}, "1")


async def _sequence(saver: AsyncPostgresSaver, thread: str) -> None:
    """One thread's writes of every shape the saver makes (and conflicts of each kind)."""
    first = await saver.aput(_config(thread), BLOBS, {"source": "input", "step": -1},
                             dict(BLOBS["channel_versions"]))
    await saver.aput_writes(first, [("a", {"x": 1}), ("b", "two"), ("a", [3])], "t1", "p1")
    await saver.aput_writes(first, [("a", "again"), ("c", None)], "t1", "p1")  # kept: first
    await saver.aput_writes(first, [("c", 1), (ERROR, "first"), (ERROR, "second")], "t2")
    await saver.aput_writes(first, [(ERROR, "e1"), (INTERRUPT, "i1"), (ERROR, "e2")], "t3")
    await saver.aput_writes(first, [(INTERRUPT, "i2")], "t3")  # replaces i1
    second = await saver.aput(first, INLINE, {"source": "loop", "step": 0},
                              dict(INLINE["channel_versions"]))
    await saver.aput(first, INLINE, {"source": "loop", "step": 1}, {})  # metadata replaced
    await saver.aput(second, AGAIN, {"source": "loop", "step": 2},
                     dict(AGAIN["channel_versions"]))


async def _rows(db: Any, thread: str) -> dict[str, list[dict[str, Any]]]:
    """The thread's rows of each table, column by column, without thread_id."""
    out = {}
    for table, order in _ORDER.items():
        rows = await db.fetch(f"SELECT * FROM {table} WHERE thread_id = %s ORDER BY {order}",
                              (thread,))
        out[table] = [{k: v for k, v in row.items() if k != "thread_id"} for row in rows]
    return out


def _read(found: Any) -> tuple[Any, ...]:
    parent = found.parent_config and found.parent_config["configurable"]["checkpoint_id"]
    return found.checkpoint, found.metadata, found.pending_writes, parent


async def test_it_stores_what_the_upstream_saver_stores(env: Any) -> None:
    """Blob and inline channels, DO NOTHING and upserted writes (the last of a key wins, as
    row by row): the same rows, column by column, and the same reads as AsyncPostgresSaver."""
    saver, db, _, _, p = env
    pairs = ((saver, f"{p}-ours"), (AsyncPostgresSaver(db.pool), f"{p}-upstream"))
    for each, thread in pairs:
        await _sequence(each, thread)
    ours, upstream = [await _rows(db, thread) for _, thread in pairs]
    assert ours == upstream and [len(ours[t]) for t in _ORDER] == [3, 2, 7]
    for checkpoint_id in [None, *(row["checkpoint_id"] for row in ours["checkpoints"])]:
        got = [await each.aget_tuple(_config(thread, checkpoint_id)) for each, thread in pairs]
        assert _read(got[0]) == _read(got[1])
    listed = [[_read(c) async for c in each.alist(_config(thread))] for each, thread in pairs]
    assert listed[0] == listed[1] and len(listed[0]) == 3
    blobs = await saver.aget_tuple(_config(f"{p}-ours", BLOBS["id"]))
    writes = {(w[0], w[1]): w[2] for w in blobs.pending_writes}
    assert writes[("t1", "b")] == "two" and writes[("t2", ERROR)] == "first"
    assert writes[("t3", ERROR)] == "e2" and writes[("t3", INTERRUPT)] == "i2"


async def test_a_duplicate_plain_write_keeps_the_first(env: Any) -> None:
    """INSERT ... DO NOTHING: the same (task_id, idx) sent twice keeps the first row, as the
    upstream saver does."""
    saver, db, _, _, p = env
    for each in (saver, AsyncPostgresSaver(db.pool)):
        config = await each.aput(_config(f"{p}-dup-{id(each)}"), INLINE, {"source": "loop"}, {})
        await each.aput_writes(config, [("note", "first")], "task")
        await each.aput_writes(config, [("note", "second")], "task")
        got = await each.aget_tuple(config)
        assert got.pending_writes == [("task", "note", "first")]


def _clause(query: str) -> tuple[str, str]:
    """An upstream INSERT's ``INSERT INTO table (columns)`` and its ``ON CONFLICT ...``."""
    found = re.fullmatch(r"(INSERT INTO \w+ \([^)]*\)) VALUES \([^)]*\) (ON CONFLICT .*?);?",
                         " ".join(query.split()))
    assert found, query
    return found.group(1), found.group(2)


def _shapes(saver: FencedSaver) -> list[list[tuple[str, Any, bool]]]:
    """What the saver's writes send on their cursor: the calls ``_one_statement`` gets."""
    checkpoint = ("t", "", "id", None, Jsonb({}), Jsonb({}))
    blob, write = ("t", "", "ch", "1", "msgpack", b"x"), ("t", "", "id", "k", "", 0, "c", "n", b"")
    return [[(saver.UPSERT_CHECKPOINTS_SQL, checkpoint, False)],
            [(saver.UPSERT_CHECKPOINT_BLOBS_SQL, [blob, blob], True),
             (saver.UPSERT_CHECKPOINTS_SQL, checkpoint, False)],
            [(saver.INSERT_CHECKPOINT_WRITES_SQL, [write, write], True)],
            [(saver.UPSERT_CHECKPOINT_WRITES_SQL, [write, write], True)]]


@pytest.mark.parametrize("fenced_", [False, True])
async def test_each_write_is_one_statement_mirroring_the_upstream_sql(
    env: Any, sent: list[str], fenced_: bool,
) -> None:
    """Each write shape becomes one statement carrying the upstream SQL's columns and conflict
    rules (an upstream change fails here), and each write sends exactly one statement (the
    plain saver sends one per row)."""
    saver, db, _, holder, p = env
    for calls in _shapes(saver):
        one = saver._one_statement(calls, fenced_)
        assert one is not None, calls
        query, params = " ".join(one[0].split()), one[1]
        for upstream, _, _ in calls:
            assert all(part in query for part in _clause(upstream)), (query, upstream)
        assert ("orchestrator_fence" in query) == fenced_
        assert query.count("%s") == len(params) + 3 * fenced_
    await _sequence(AsyncPostgresSaver(db.pool), f"{p}-plain")
    assert len(sent) == 3 + 3 + 2 + 3 + 3 + 1 + 1 + 1 + 3
    sent.clear()
    with fenced(holder) if fenced_ else contextlib.nullcontext():
        await _sequence(saver, f"{p}-one")
    assert len(sent) == 9 and all(("orchestrator_fence" in s) == fenced_ for s in sent)
    assert await _rows(db, f"{p}-one") == await _rows(db, f"{p}-plain")


async def _count(db: Any, thread: str) -> list[int]:
    return [len(rows) for rows in (await _rows(db, thread)).values()]


async def test_delete_thread_falls_back_and_is_fenced(env: Any, sent: list[str]) -> None:
    """adelete_thread's DELETEs are not known: sent as before (3 statements), the fence's
    check first. A stale fence's deletion raises LeaseLost and deletes nothing."""
    saver, db, stale, holder, p = env
    for thread in (f"{p}-del-1", f"{p}-del-2"):
        await _sequence(saver, thread)
    sent.clear()
    await saver.adelete_thread(f"{p}-del-1")
    assert len(sent) == 3 and await _count(db, f"{p}-del-1") == [0, 0, 0]
    with fenced(stale), pytest.raises(LeaseLost):
        await saver.adelete_thread(f"{p}-del-2")
    assert await _count(db, f"{p}-del-2") == [3, 2, 7]
    sent.clear()
    with fenced(holder):
        await saver.adelete_thread(f"{p}-del-2")
    assert "orchestrator_fence" in sent[0] and len(sent) == 4
    assert await _count(db, f"{p}-del-2") == [0, 0, 0]


async def test_a_stale_fence_refuses_each_one_statement_write(env: Any) -> None:
    """aput without and with blobs, aput_writes of either kind: a stale fence's write raises
    LeaseLost and stores nothing; the holder's stores."""
    saver, db, stale, holder, p = env
    config = _config(f"{p}-stale", INLINE["id"])
    writes = [lambda: saver.aput(_config(f"{p}-stale"), INLINE, {"source": "loop"}, {}),
              lambda: saver.aput(_config(f"{p}-stale"), BLOBS, {"source": "loop"},
                                 dict(BLOBS["channel_versions"])),
              lambda: saver.aput_writes(config, [("a", 1), ("b", {"x": 2})], "t"),
              lambda: saver.aput_writes(config, [(ERROR, "boom"), (INTERRUPT, "q")], "t")]
    for write in writes:
        with fenced(stale), pytest.raises(LeaseLost):
            await write()
    assert await _count(db, f"{p}-stale") == [0, 0, 0]
    with fenced(holder):
        for write in writes:
            await write()
    assert await _count(db, f"{p}-stale") == [2, 2, 4]


async def test_a_write_too_big_for_one_statement_goes_row_by_row_fenced(
    env: Any, sent: list[str],
) -> None:
    """Past the protocol's parameter limit the write is sent as the saver sends it (a row a
    statement, the check folded into the first): a stale fence's stores nothing."""
    saver, db, stale, holder, p = env
    config, writes = _config(f"{p}-big", "c1"), [(f"ch{i}", i) for i in range(7300)]
    with fenced(stale), pytest.raises(LeaseLost):
        await saver.aput_writes(config, writes, "t")
    assert await _count(db, f"{p}-big") == [0, 0, 0]
    sent.clear()
    with fenced(holder):
        await saver.aput_writes(config, writes, "t")
    assert len(sent) == 7300 and "orchestrator_fence" in sent[0]
    assert await _count(db, f"{p}-big") == [0, 0, 7300]


async def test_a_failure_inside_the_write_sends_nothing(env: Any, sent: list[str]) -> None:
    """An error in the write's block (a blob the serializer cannot serialize; any error after
    statements were recorded) propagates and sends nothing; metadata that is not JSON fails
    before the statement leaves and stores nothing (upstream's pipeline stores the blobs)."""
    saver, db, _, holder, p = env
    bad = _checkpoint({"state": {"lock": object()}}, "1")
    for fence in (None, holder):
        with fenced(fence) if fence else contextlib.nullcontext():
            with pytest.raises(TypeError, match="msgpack"):
                await saver.aput(_config(f"{p}-bad"), bad, {}, dict(bad["channel_versions"]))
            with pytest.raises(RuntimeError, match="in the block"):
                async with saver._cursor(pipeline=True) as cur:
                    await cur.executemany(saver.INSERT_CHECKPOINT_WRITES_SQL, saver._dump_writes(
                        f"{p}-bad", "", "c1", "t", "", [("a", 1)]))
                    raise RuntimeError("in the block")
            assert sent == []
            with pytest.raises(TypeError, match="JSON"):
                await saver.aput(_config(f"{p}-bad"), BLOBS, {"x": object()},
                                 dict(BLOBS["channel_versions"]))
            sent.clear()
    assert await _count(db, f"{p}-bad") == [0, 0, 0]

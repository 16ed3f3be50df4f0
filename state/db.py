"""The one helper that owns database access: a psycopg pool plus small query helpers.

Connections are in autocommit mode with ``dict_row`` rows, which is also what LangGraph's
``AsyncPostgresSaver`` requires, so the checkpointer shares this pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

__all__ = ["Database", "Row"]

log = logging.getLogger(__name__)

Row = dict[str, Any]


class _ReconnectWarnings(logging.Filter):
    """psycopg_pool warns on every failed attempt to reconnect (about one a second while the
    server is down): the first of each pool's warnings per minute stays a warning, the others
    go out at debug level. A lost database is one line in the log, not a flood."""

    def __init__(self) -> None:
        super().__init__()
        self._warned: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "error connecting in %r: %s" or record.levelno != logging.WARNING:
            return True
        pool = record.args[0] if isinstance(record.args, tuple) and record.args else None
        now = time.monotonic()
        if now - self._warned.get(pool, -120.0) >= 60.0:
            self._warned[pool] = now
        else:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("psycopg.pool").addFilter(_ReconnectWarnings())


class Database:
    """A pool of autocommit connections and the queries everything else runs through."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Row]]) -> None:
        self.pool = pool

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 30.0,
        idle_in_transaction_timeout: float | None = None,
    ) -> AsyncIterator[Database]:
        """Open a pool on ``url``; it is closed when the block exits.

        ``idle_in_transaction_timeout`` (seconds): the server ends a session of this pool that
        sits inside a transaction that long (PostgreSQL's ``idle_in_transaction_session_timeout``),
        so a process stopped in the middle of one (SIGSTOP, a stalled VM) does not hold its row
        locks forever: a run's fence is such a lock, and the sweeper skips locked runs.
        """
        configure = None
        if idle_in_transaction_timeout is not None:
            millis = max(1, round(idle_in_transaction_timeout * 1000))

            async def configure(conn: AsyncConnection[Row]) -> None:
                await conn.execute(f"SET idle_in_transaction_session_timeout = {millis:d}")

        pool: AsyncConnectionPool[AsyncConnection[Row]] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=configure,
            name="orchestrator",
        )
        await pool.open(wait=True, timeout=timeout)
        try:
            yield cls(pool)
        finally:
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Row]]:
        async with self.pool.connection() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[Row]]:
        """A connection inside one transaction, committed when the block exits cleanly."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, query: Any, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def fetchone(self, query: Any, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    async def execute(self, query: Any, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run a statement; returns the number of rows it touched."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return cur.rowcount

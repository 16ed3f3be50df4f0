"""The LangGraph checkpointer: ``AsyncPostgresSaver`` over the shared psycopg pool."""

from __future__ import annotations

import contextlib

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from orchestrator.state.db import Database

__all__ = ["make_checkpointer"]


def make_checkpointer(db: Database) -> AsyncPostgresSaver:
    """A saver on ``db``'s pool. The schema is set up by :func:`orchestrator.state.migrations.migrate`."""
    saver = AsyncPostgresSaver(db.pool)  # type: ignore[arg-type]
    # The saver serializes every read and write behind one process-wide lock, which a single
    # shared connection needs; on a pool each operation takes a connection of its own, so
    # the lock only queues concurrent workflows (measured: 300 concurrent no-op workflows went
    # from 29-30 to 38-44 per second without it).
    saver.lock = contextlib.nullcontext()  # type: ignore[assignment]
    return saver

"""The LangGraph checkpointer: ``AsyncPostgresSaver`` over the shared psycopg pool."""

from __future__ import annotations

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from .db import Database

__all__ = ["make_checkpointer"]


def make_checkpointer(db: Database) -> AsyncPostgresSaver:
    """A saver on ``db``'s pool. The schema is set up by :func:`state.migrations.migrate`."""
    return AsyncPostgresSaver(db.pool)  # type: ignore[arg-type]

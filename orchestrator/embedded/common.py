"""What the embedded PostgreSQL and Redis share: the error, proving and awaiting processes,
log tails, the locks of a server's directory, and its handle list (who uses it)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from ..errors import ErrorCode, OrchestratorError

logger = logging.getLogger(__name__)

_SOCKET_MAX = 100  # bytes; sun_path holds 108 including the NUL


class EmbeddedServiceError(OrchestratorError, RuntimeError):
    """An embedded service could not be started, attached to, or stopped."""

    code = ErrorCode.EMBEDDED_SERVICE_ERROR


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


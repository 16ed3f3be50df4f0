"""Process identities, and telling whether the process behind one has died.

A runtime names itself ``<host>-<pid>-<random>``. Workflow owners, lock holders
(``<process id>:<thread>:<task>``) and claims carry that name, so a dead process on this host
is recognised at once; processes on other hosts are trusted until their lease or TTL runs out.
"""

from __future__ import annotations

import os
import socket
import uuid

import psutil

__all__ = ["new_process_id", "parse_process_id", "pid_alive", "died_on_this_host"]


def new_process_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def parse_process_id(process_id: str) -> tuple[str, int | None]:
    """(host, pid) of ``<host>-<pid>-<random>``; pid None when it does not have that shape."""
    parts = process_id.rsplit("-", 2)
    if len(parts) != 3:
        return process_id, None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return parts[0], None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    if pid == os.getpid():
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def died_on_this_host(process_id: str) -> bool:
    """True only when ``process_id`` names a process of this host that is gone."""
    host, pid = parse_process_id(process_id)
    return host == socket.gethostname() and pid is not None and not pid_alive(pid)

"""Process identities, and telling whether the process behind one still runs.

A runtime names itself ``<host>-<pid>-<random>-<boot>.<pidns>.<start>``: ``boot`` is the first
12 hex digits of the kernel's boot id, ``pidns`` the inode of the pid namespace the pid is
counted in (``/proc/self/ns/pid``) and ``start`` the process's start time in clock ticks since
boot (``/proc/<pid>/stat``). Workflow owners, lock holders (``<process id>:<thread>:<task>``)
and execution claims (``<process id>:<worker>:<agent id>``) carry that name.

:func:`process_alive` answers from the pid only when the pid provably names that process: same
boot, same pid namespace as the asking process, and (for "alive") the same start time. Then a
killed owner is recognised at once. In every other case (another host, another pid namespace
such as a host-network container sharing the hostname, a pid now used by another process, an id
written by an older version as ``<host>-<pid>-<random>``, a platform without ``/proc``) it
answers None, and the caller goes by the owner's lease, heartbeat or TTL: a pid that may
belong to someone else is never trusted.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass

__all__ = ["ProcessRef", "new_process_id", "parse_process_id", "process_id_of", "process_alive",
           "died_on_this_host"]

_ID = re.compile(
    r"(?P<host>.+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})-(?P<boot>[0-9a-f]{12})\."
    r"(?P<pidns>\d+)\.(?P<start>\d+)"
)


@dataclass(frozen=True)
class ProcessRef:
    """What a process id proves: the process ``pid`` of pid namespace ``pidns`` that started
    ``start`` clock ticks after boot ``boot``."""

    host: str
    pid: int
    boot: str
    pidns: int
    start: int


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip().replace("-", "")[:12]
    except OSError:
        return None
    return boot if re.fullmatch(r"[0-9a-f]{12}", boot) else None


def _pid_namespace() -> int | None:
    """Inode of this process's pid namespace, when ``/proc`` counts pids in it (a ``/proc``
    mounted for another namespace would make every pid read through it someone else's)."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from ``/proc``; None when it
    cannot be read (no such process, or one ``/proc`` hides from us)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()  # the name in parentheses may hold spaces
    try:
        return fields[0].decode(), int(fields[19])  # fields 3 (state) and 22 (starttime)
    except (IndexError, ValueError):
        return None


def _no_such_pid(pid: int) -> bool:
    """Whether no process (of this pid namespace) has ``pid``: signal 0 sends nothing and
    fails with ESRCH only then (EPERM: it exists, but is not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


_OWN: dict[int, tuple[str | None, int | None, int | None]] = {}


def _own() -> tuple[str | None, int | None, int | None]:
    """(boot, pid namespace, start time) of this process: read once per process (at import,
    so that no ``/proc`` read happens later on an event loop; again after a fork)."""
    pid = os.getpid()
    own = _OWN.get(pid)
    if own is None:
        stat = _stat(pid)
        own = (_boot_id(), _pid_namespace(), stat[1] if stat else None)
        _OWN.clear()
        _OWN[pid] = own
    return own


def process_id_of(pid: int) -> str:
    """The process id that process ``pid`` of this pid namespace carries (a new random part
    each call). Without ``/proc`` it is the bare ``<host>-<pid>-<random>``, which
    :func:`process_alive` never answers for."""
    base = f"{socket.gethostname()}-{pid}-{uuid.uuid4().hex[:8]}"
    boot, pidns, start = _own()
    if pid != os.getpid():
        stat = _stat(pid)
        start = stat[1] if stat else None
    if boot is None or pidns is None or start is None:
        return base
    return f"{base}-{boot}.{pidns}.{start}"


def new_process_id() -> str:
    """A fresh id for this process."""
    return process_id_of(os.getpid())


def parse_process_id(process_id: str) -> ProcessRef | None:
    """The process a process id names, or None when it has another shape (an older version's
    ``<host>-<pid>-<random>``, a hand-written owner)."""
    match = _ID.fullmatch(process_id)
    if match is None:
        return None
    return ProcessRef(match["host"], int(match["pid"]), match["boot"], int(match["pidns"]),
                      int(match["start"]))


def process_alive(process_id: str) -> bool | None:
    """Whether the process ``process_id`` names still runs: True or False when the pid
    provably names it (this boot, this pid namespace, its start time), None when that cannot
    be proven. On None go by the owner's lease or TTL, never by the pid.

    False means: its pid namespace is ours and holds no process with that pid (or only a
    zombie with its start time). A pid now used by a process with another start time gives
    None, not False: nothing is concluded from a process that is not the one named.
    """
    ref = parse_process_id(process_id)
    if ref is None or ref.pid <= 0 or ref.host != socket.gethostname():
        return None
    boot, pidns, _ = _own()
    if ref.boot != boot or ref.pidns != pidns:
        return None
    stat = _stat(ref.pid)
    if stat is None:
        return False if _no_such_pid(ref.pid) else None
    state, start = stat
    if start != ref.start:
        return None
    return state not in ("Z", "X", "x")


def died_on_this_host(process_id: str) -> bool:
    """True only when ``process_id`` provably names a process that is gone."""
    return process_alive(process_id) is False


_own()

"""The embedded PostgreSQL: pgserver's binaries (initdb, pg_ctl, the postmaster) run on a
pgdata under the data dir, with a private socket dir, and a postmaster acted on only once
its pid is proven (see :mod:`orchestrator.embedded`)."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from .common import (
    _SOCKET_MAX,
    EmbeddedServiceError,
    _flock_dir,
    _handles,
    _log_tail,
    _proc_gone,
)

logger = logging.getLogger(__name__)

_PG_USER = "pgserver"
_PG_SOCK_PREFIX = "orchestrator-pg-"


def _load_pgserver() -> None:
    """Import pgserver once, without platformdirs' RuntimeDirWarning (XDG_RUNTIME_DIR unset
    is normal for services and root shells; pgserver then uses /tmp/runtime-<uid>)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # noqa: F401


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


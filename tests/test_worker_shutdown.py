"""Stopping a worker whose services are gone: SIGTERM ends it within its grace period, and the
lost services are reported once each, not once per retry.

The worker is a real ``orchestrator worker`` subprocess. Its Redis is a ``redis-server`` of
the test's own (stopped by its pid); its PostgreSQL is the test database behind a TCP
forwarder of the test's own (cut: every connection dropped and the port closed, which is
what the worker sees when PostgreSQL stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from .support.processes import ORCHESTRATOR_CMD, free_port

pytestmark = pytest.mark.slow


class _Forwarder:
    """Forwards a local port to ``host:port`` until cut."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()


async def test_a_worker_whose_services_are_gone_stops_promptly_and_quietly(
    service_env, orchestrator_settings, tmp_path: Path
) -> None:
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    db = urlsplit(orchestrator_settings.database_url)
    forwarder = _Forwarder(db.hostname or "127.0.0.1", db.port or 5432)
    await forwarder.start()
    netloc = db.netloc.rsplit("@", 1)[0] + "@" if "@" in db.netloc else ""
    env = {**service_env,
           "ORCHESTRATOR_REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "ORCHESTRATOR_DATABASE_URL": urlunsplit(
               db._replace(netloc=f"{netloc}127.0.0.1:{forwarder.port}"))}
    log = tmp_path / "worker.log"
    worker = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, probe = await asyncio.open_connection("127.0.0.1", port)
                probe.close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
        with log.open("wb") as out:
            worker = subprocess.Popen([*ORCHESTRATOR_CMD, "worker", "--agents", "docs"],
                                      env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "hosting docs" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # serving: heartbeats and reads go through

        redis.send_signal(signal.SIGTERM)
        await asyncio.to_thread(redis.wait, 10)
        forwarder.cut()
        await asyncio.sleep(3.0)  # long enough for every loop to meet the outage
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 60)
        took = time.monotonic() - started
    finally:
        for proc in (worker, redis):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        forwarder.cut()
    text = log.read_text()
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    assert code == 0, text
    assert took <= 10.0, f"stopping took {took:.1f}s:\n{text}"
    assert len(warnings) <= 8, f"{len(warnings)} warnings:\n{text}"
    assert "Traceback" not in text, text

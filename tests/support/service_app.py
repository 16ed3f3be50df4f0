"""A small real HTTP service for health tests: run it as a subprocess on 127.0.0.1.

    python tests/service_app.py --port 0 --port-file PATH [--pid-file PATH]
        [--mode ok|error|slow] [--delay-ms N] [--error-rate F]

Endpoints:

* ``GET /health``: ``ok`` → 200; ``error`` → 500 for exactly a fraction ``error_rate`` of the
  requests (request n fails when ``floor(n * rate)`` steps up, so 0.5 fails every second one);
  ``slow`` → waits ``delay_ms`` then 200. The JSON body carries ``status``, ``pid``, ``mode`` and
  any ``extra`` fields set through ``/control`` (e.g. ``{"error_rate": 0.2}`` for a service that
  reports its own error rate).
* ``GET /metrics``: Prometheus text: counter ``http_requests_total{status=...}`` and histogram
  ``http_request_duration_seconds`` of the ``/health`` requests served.
* ``GET /control`` / ``POST /control`` with ``{"mode", "delay_ms", "error_rate", "extra"}``
  (each optional): read or change the settings at run time.

The port is written to ``--port-file`` (and the pid to ``--pid-file``) atomically once the
socket listens. SIGTERM or SIGINT stops it cleanly; it then removes those two files if they are
still the ones it wrote. Standard library only. :class:`ServiceProcess` starts and stops it
from tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODES = ("ok", "error", "slow")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DEFAULT_DELAY_MS = 500.0
SCRIPT = Path(__file__).resolve()


# --- the service ----------------------------------------------------------------------------


class _State:
    """Settings and metrics, shared by the request threads."""

    def __init__(self, mode: str, delay_ms: float, error_rate: float) -> None:
        self.lock = threading.Lock()
        self.mode = mode
        self.delay_ms = delay_ms
        self.error_rate = error_rate
        self.extra: dict[str, Any] = {}
        self.error_mode_requests = 0
        self.by_status: dict[str, int] = {"200": 0, "500": 0}
        self.bucket_counts = [0] * len(BUCKETS)
        self.duration_sum = 0.0
        self.duration_count = 0

    def settings(self) -> dict[str, Any]:
        with self.lock:
            return {
                "mode": self.mode,
                "delay_ms": self.delay_ms,
                "error_rate": self.error_rate,
                "extra": dict(self.extra),
            }

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply a /control change; raises ValueError on a bad one."""
        unknown = set(changes) - {"mode", "delay_ms", "error_rate", "extra"}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        mode = changes.get("mode")
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        delay = changes.get("delay_ms")
        if delay is not None and not _is_number(delay, low=0.0):
            raise ValueError(f"delay_ms must be a number >= 0, got {delay!r}")
        rate = changes.get("error_rate")
        if rate is not None and not _is_number(rate, low=0.0, high=1.0):
            raise ValueError(f"error_rate must be a number in 0..1, got {rate!r}")
        extra = changes.get("extra")
        if extra is not None and not isinstance(extra, dict):
            raise ValueError(f"extra must be a JSON object, got {extra!r}")
        with self.lock:
            if mode is not None:
                self.mode = mode
            if delay is not None:
                self.delay_ms = float(delay)
            if rate is not None:
                self.error_rate = float(rate)
            if extra is not None:
                self.extra = dict(extra)
            self.error_mode_requests = 0  # a new setting starts a new, exact error pattern
        return self.settings()

    def plan(self) -> tuple[int, float, dict[str, Any]]:
        """What the next /health request does: (status, delay in s, body fields)."""
        with self.lock:
            status, delay = 200, 0.0
            if self.mode == "error":
                self.error_mode_requests += 1
                n = self.error_mode_requests
                if math.floor(n * self.error_rate) > math.floor((n - 1) * self.error_rate):
                    status = 500
            elif self.mode == "slow":
                delay = self.delay_ms / 1000.0
            body = {**self.extra, "status": "ok" if status == 200 else "error", "mode": self.mode}
        body["pid"] = os.getpid()
        return status, delay, body

    def record(self, status: int, seconds: float) -> None:
        with self.lock:
            key = str(status)
            self.by_status[key] = self.by_status.get(key, 0) + 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.bucket_counts[i] += 1
            self.duration_sum += seconds
            self.duration_count += 1

    def exposition(self) -> str:
        with self.lock:
            lines = [
                "# HELP http_requests_total /health requests served, by status code.",
                "# TYPE http_requests_total counter",
            ]
            for status in sorted(self.by_status):
                lines.append(f'http_requests_total{{status="{status}"}} {self.by_status[status]}')
            lines += [
                "# HELP http_request_duration_seconds Time to serve /health, in seconds.",
                "# TYPE http_request_duration_seconds histogram",
            ]
            for bound, count in zip(BUCKETS, self.bucket_counts, strict=True):
                lines.append(f'http_request_duration_seconds_bucket{{le="{bound}"}} {count}')
            lines.append(
                f'http_request_duration_seconds_bucket{{le="+Inf"}} {self.duration_count}'
            )
            lines.append(f"http_request_duration_seconds_sum {self.duration_sum!r}")
            lines.append(f"http_request_duration_seconds_count {self.duration_count}")
        return "\n".join(lines) + "\n"


def _is_number(value: Any, *, low: float, high: float = math.inf) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and low <= value <= high


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: no line per request."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if path == "/health":
            started = time.perf_counter()
            status, delay, body = state.plan()
            if delay:
                time.sleep(delay)
            state.record(status, time.perf_counter() - started)
            self._send(status, json.dumps(body).encode(), "application/json")
        elif path == "/metrics":
            self._send(200, state.exposition().encode(), "text/plain; version=0.0.4")
        elif path == "/control":
            self._send_json(200, state.settings())
        else:
            self._send_json(404, {"error": f"no such path: {path}"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/control":
            self._send_json(404, {"error": f"no such path: {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            changes = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            settings = self.server.state.update(changes)
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        self._send_json(200, settings)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state: _State) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A prober that gave up on a slow answer closes its socket: not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _remove_if_ours(path: Path | None, text: str) -> None:
    """Remove a file this process wrote, unless someone has replaced it since."""
    if path is None:
        return
    try:
        if path.read_text() == text:
            path.unlink()
    except OSError:
        pass


def serve(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A small HTTP service for health tests.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--pid-file", type=Path)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_MS)
    parser.add_argument("--error-rate", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not 0.0 <= args.error_rate <= 1.0:
        parser.error("--error-rate must be within 0..1")
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")

    # Block SIGTERM/SIGINT before any thread starts (threads inherit the mask) and take them
    # with sigtimedwait in the main thread: no Python handler runs at an awkward moment.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = _Server(args.port, _State(args.mode, args.delay_ms, args.error_rate))
    port_text, pid_text = str(server.server_address[1]), str(os.getpid())
    worker = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    worker.start()
    try:
        if args.pid_file is not None:
            _write_atomically(args.pid_file, pid_text)
        _write_atomically(args.port_file, port_text)  # last: its presence means "ready"
        while worker.is_alive() and signal.sigtimedwait(stop_signals, 0.5) is None:
            pass
    finally:
        server.shutdown()
        server.server_close()
        _remove_if_ours(args.port_file, port_text)
        _remove_if_ours(args.pid_file, pid_text)
    return 0


# --- the test helper ------------------------------------------------------------------------


class ServiceProcess:
    """One running ``service_app`` subprocess, for tests. No pytest needed.

    ``argv`` is the full command line; once the service has started it names the port it got,
    so ``ServiceProcess.spawn(svc.argv, ...)`` or :meth:`restart` brings it back on the same
    port (in the mode from the command line, not one set later through ``/control``).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        port_file: Path,
        pid_file: Path,
        log_file: Path,
        process: subprocess.Popen[bytes],
        port: int,
    ) -> None:
        self.argv = argv
        self.port_file = port_file
        self.pid_file = pid_file
        self.log_file = log_file
        self.process = process
        self.port = port

    @classmethod
    def start(
        cls,
        tmp_dir: Path,
        *,
        mode: str = "ok",
        delay_ms: float | None = None,
        error_rate: float | None = None,
        port: int = 0,
        timeout: float = 10.0,
    ) -> ServiceProcess:
        """Start a service in ``tmp_dir`` (its port, pid and log files go there).

        ``port=0`` picks a free port first and passes it, so the process's command line is
        ``argv`` exactly (a restart proves a pid file's process by its command line).

        Raises:
            RuntimeError: if it exits or does not listen within ``timeout`` seconds; the
                message carries what it wrote to stderr.
        """
        tmp_dir = Path(tmp_dir)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        name = f"service-{uuid.uuid4().hex[:8]}"
        if not port:
            port = free_port()
        port_file = tmp_dir / f"{name}.port"
        pid_file = tmp_dir / f"{name}.pid"
        argv = [
            sys.executable,
            str(SCRIPT),
            "--port",
            str(port),
            "--port-file",
            str(port_file),
            "--pid-file",
            str(pid_file),
            "--mode",
            mode,
        ]
        if delay_ms is not None:
            argv += ["--delay-ms", str(delay_ms)]
        if error_rate is not None:
            argv += ["--error-rate", str(error_rate)]
        return cls.spawn(
            argv,
            port_file=port_file,
            pid_file=pid_file,
            log_file=tmp_dir / f"{name}.log",
            timeout=timeout,
        )

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        *,
        port_file: Path,
        pid_file: Path,
        log_file: Path,
        timeout: float = 10.0,
    ) -> ServiceProcess:
        """Run ``argv`` (a service command line) and wait until it listens."""
        port_file.unlink(missing_ok=True)  # a file left by an earlier run must not count
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            port_text = _read(port_file)
            if port_text:
                break
            if process.poll() is not None:
                raise RuntimeError(
                    f"service exited with code {process.returncode} before listening: "
                    f"{_read(log_file) or '(no output)'}"
                )
            if time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=5)
                raise RuntimeError(
                    f"service did not listen within {timeout} s: {_read(log_file) or '(no output)'}"
                )
            time.sleep(0.01)
        port = int(port_text)
        fixed = list(argv)
        fixed[fixed.index("--port") + 1] = str(port)
        return cls(
            fixed,
            port_file=port_file,
            pid_file=pid_file,
            log_file=log_file,
            process=process,
            port=port,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def control(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET /control, or POST the given changes to it; returns the settings."""
        data = None if changes is None else json.dumps(changes).encode()
        request = urllib.request.Request(
            f"{self.url}/control",
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as response:
            return json.loads(response.read())

    def set_mode(self, mode: str, **settings: Any) -> dict[str, Any]:
        """Change the mode (and ``delay_ms``, ``error_rate``, ``extra``) at run time."""
        return self.control({"mode": mode, **settings})

    def restart(self, timeout: float = 10.0) -> ServiceProcess:
        """Stop this process if it still runs, then start ``argv`` again (same port)."""
        if self.alive():
            self.stop()
        restarted = self.spawn(
            self.argv,
            port_file=self.port_file,
            pid_file=self.pid_file,
            log_file=self.log_file,
            timeout=timeout,
        )
        self.process, self.port = restarted.process, restarted.port
        return self

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM, wait up to 5 s, then SIGKILL."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=5)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(serve())

"""``orchestrator run`` / ``resume`` subprocesses (the ``cli`` fixture's runner), and what a
test polls and checks with them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .processes import ORCHESTRATOR_CMD


class CLI:
    """Starts ``orchestrator`` CLI subprocesses; kills whatever is still running at teardown."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def run(self, workflow: str, data: dict[str, Any], thread_id: str, *,
            local_agents: bool) -> subprocess.Popen[bytes]:
        source = self.folder / f"{thread_id}.input.json"
        source.write_text(json.dumps(data))
        args = ["run", workflow, "--input", str(source), "--thread-id", thread_id, "--json"]
        if not local_agents:
            args.append("--no-local-agents")
        log = self.folder / f"{thread_id}.run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*ORCHESTRATOR_CMD, *args], env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def output(self, thread_id: str) -> str:
        path = self.folder / f"{thread_id}.run.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def resume(self, thread_id: str, *, local_agents: bool,
                     timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
        """``orchestrator resume T --json``; returns the finished process and its wall time."""
        args = ["resume", thread_id, "--json"]
        if not local_agents:
            args.append("--no-local-agents")
        started = time.monotonic()
        try:
            done = await asyncio.to_thread(
                subprocess.run, [*ORCHESTRATOR_CMD, *args], env=self.env, capture_output=True,
                text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
            raise AssertionError(f"resume did not finish within {timeout:g} s:\n"
                                 f"{exc.stderr!r}") from None
        return done, time.monotonic() - started

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


async def until(predicate: Callable[[], Any], what: str, proc: subprocess.Popen[bytes],
                cli: CLI, thread_id: str, timeout: float = 30.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` (sync or async) until true; fail if the CLI ends first or time's up."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n"
                        f"{cli.output(thread_id)[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{cli.output(thread_id)[-3000:]}")
        await asyncio.sleep(interval)


def resumed_result(done: subprocess.CompletedProcess[str], thread_id: str) -> dict[str, Any]:
    """The ``--json`` result of a resume that exited 0 with the workflow completed."""
    assert done.returncode == 0, f"resume exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    result = json.loads(done.stdout)
    assert result["thread_id"] == thread_id and result["status"] == "completed", result
    return result

"""``orchestrator serve`` and ``orchestrator worker`` processes with a test workflow, for the
service tests (runners, chaos, benchmarks).

    python -m tests.support.serve_process EVENTS ARGS...   (settings from ORCHESTRATOR_*)

runs the ``orchestrator`` command with ``svcflow`` as its only workflow and the ``tally``
stand-in agent in place of the built-in ones (hosted by ``worker --agents tally``, or by
``serve --local-agents``). ``svcflow`` makes ``steps`` calls to ``tally``, one per step, each
sleeping ``seconds``; the handler appends ``start <request id> <pid>`` and
``done <request id> <pid>`` lines to the file EVENTS (one ``write`` of one line each, so
processes sharing the file never interleave inside a line). :func:`started_requests` counts
them: a request started twice means a handler executed twice. A test can make a runner's next
checkpoint write for a thread stall (:func:`stall_flag`), to pause it at that point.

:func:`start_serve` and :func:`start_worker` start those processes and return a
:class:`ServiceHandle` (pid, url, ``stop()`` = SIGTERM, ``kill()`` = SIGKILL) once they serve.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from orchestrator.state.checkpointer import FencedSaver
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel

from orchestrator import agent as agent_module
from orchestrator import cli, graphs
from orchestrator.calls import call_agent
from orchestrator.graphs import WorkflowSpec
from orchestrator.runtime import Runtime
from orchestrator.testing import stand_in
from tests.support.service_app import free_port

__all__ = ["svcflow", "ServiceHandle", "start_serve", "start_worker", "started_requests",
           "service_settings_env", "stall_flag"]

ROOT = Path(__file__).resolve().parents[2]

# -- the workflow and the agent --------------------------------------------------------------


class SvcInput(BaseModel):
    seconds: float = 0.0
    steps: int = 1


class SvcState(MultiAgentState, total=False):
    seconds: float
    steps: int
    done: int


async def work(state: SvcState) -> dict[str, Any]:
    done = state.get("done", 0)
    call = await call_agent("tally", "work", {"seconds": state["seconds"], "step": done},
                            subtask=f"step{done}")
    return {**call.updates, "done": done + 1,
            "partial_results": {f"step{done}": call.result}}


def _more(state: SvcState) -> str:
    return "work" if state.get("done", 0) < state.get("steps", 1) else "finish"


async def finish(state: SvcState) -> dict[str, Any]:
    return {"final_result": {"status": "completed", "steps": state.get("done", 0)}}


_builder = StateGraph(SvcState)
_builder.add_node("work", work)
_builder.add_node("finish", finish)
_builder.add_edge(START, "work")
_builder.add_conditional_edges("work", _more, ["work", "finish"])
_builder.add_edge("finish", END)
svcflow = WorkflowSpec("svcflow", _builder, SvcInput, "agent calls to tally, one per step")


def tally_agent(events: Path) -> agent_module.Agent:
    """The ``tally`` stand-in: sleeps ``seconds``, noting start and end in ``events``."""

    def note(event: str, request_id: str) -> None:
        line = f"{event} {request_id} {os.getpid()}\n".encode()
        fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    async def handle(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        note("start", ctx.request.request_id)
        await asyncio.sleep(payload["seconds"])
        note("done", ctx.request.request_id)
        return {"ok": True, "step": payload["step"]}

    return stand_in("tally", {"work": handle})


def started_requests(events: Path) -> collections.Counter[str]:
    """How many times each request's handler started, from an EVENTS file."""
    counts: collections.Counter[str] = collections.Counter()
    if events.exists():
        for line in events.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "start":
                counts[parts[1]] += 1
    return counts


#: how long a stalled checkpoint write blocks its runner: longer than the tests' leases
STALL_SECONDS = 5.0


def stall_flag(events: Path, thread_id: str) -> Path:
    """The file that makes the next checkpoint write for ``thread_id`` stall (see
    :func:`_stall_checkpoint_writes`); it is renamed to ``<name>.taken`` when one does."""
    return events.with_name(f"stall-{thread_id}")


def _stall_checkpoint_writes(events: Path) -> None:
    """Make the saver's ``aput_writes`` block this process's event loop (no lease renewals,
    as in a long GC pause or a stopped VM) for :data:`STALL_SECONDS`, right before it writes,
    once per :func:`stall_flag` a test creates: the process that renames the flag stalls, the
    others pass. A test pauses the runner (SIGSTOP) while it stalls, so that what the runner
    does first on resuming is that write."""
    real = FencedSaver.aput_writes

    async def aput_writes(self: FencedSaver, config: Any, *args: Any, **kwargs: Any) -> Any:
        flag = stall_flag(events, config["configurable"]["thread_id"])
        with contextlib.suppress(FileNotFoundError):
            os.rename(flag, flag.with_name(flag.name + ".taken"))
            time.sleep(STALL_SECONDS)  # noqa: ASYNC251 (blocking the loop is the point)
        return await real(self, config, *args, **kwargs)

    FencedSaver.aput_writes = aput_writes  # type: ignore[method-assign]


def main(events: str, argv: list[str]) -> int:
    tally = tally_agent(Path(events))
    _stall_checkpoint_writes(Path(events))
    real_open = Runtime.open

    def open_with_tally(settings: Any, *, agents: Any = None) -> Any:
        # serve --local-agents asks for the built-in agents (agents=None); a worker for the
        # ones it loaded: both get tally instead
        hosted = [tally] if agents or (agents is None and settings.local_agents) else []
        return real_open(settings, agents=hosted)

    graphs.available_workflows = lambda: {"svcflow": svcflow}  # type: ignore[assignment]
    agent_module.load_agents = lambda names: [tally]  # type: ignore[assignment]
    Runtime.open = open_with_tally  # type: ignore[method-assign]
    return cli.main(argv)


# -- processes, for tests ------------------------------------------------------------------------


def service_settings_env(env: dict[str, str], **settings: float | str) -> dict[str, str]:
    """``env`` with ``ORCHESTRATOR_<NAME>`` set for each keyword (run_lease=2 ...)."""
    return {**env, **{f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in settings.items()}}


@dataclass
class ServiceHandle:
    """A started serve or worker process."""

    process: subprocess.Popen[bytes]
    log_file: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait up to ``timeout`` s (SIGKILL after that); the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=5)


def _spawn(args: list[str], env: dict[str, str], events: Path, log_file: Path
           ) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.serve_process", str(events), *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )


def _wait(handle: ServiceHandle, ready: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not handle.alive():
            raise RuntimeError(f"{what} exited with {handle.process.returncode} before it was "
                               f"ready:\n{handle.output()}")
        if time.monotonic() > deadline:
            handle.kill()
            raise RuntimeError(f"{what} not ready within {timeout} s:\n{handle.output()}")
        time.sleep(0.05)


def _ready(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_serve(env: dict[str, str], tmp_dir: Path, events: Path, *, concurrency: int = 4,
                local_agents: bool = False, args: tuple[str, ...] = (),
                timeout: float = 30.0) -> ServiceHandle:
    """Start ``orchestrator serve`` on a free loopback port; returns once ``/readyz`` says
    ready (its runner claims). The caller stops it (``stop()``/``kill()``)."""
    port = free_port()
    log_file = Path(tmp_dir) / f"serve-{port}.log"
    argv = ["serve", "--port", str(port), "--concurrency", str(concurrency), *args]
    if local_agents:
        argv.append("--local-agents")
    handle = ServiceHandle(_spawn(argv, env, events, log_file), log_file,
                           f"http://127.0.0.1:{port}")
    _wait(handle, lambda: _ready(f"http://127.0.0.1:{port}"), "orchestrator serve", timeout)
    return handle


def start_worker(env: dict[str, str], tmp_dir: Path, events: Path, *,
                 timeout: float = 30.0) -> ServiceHandle:
    """Start ``orchestrator worker --agents tally``; returns once it hosts the agent."""
    log_file = Path(tmp_dir) / f"worker-{time.monotonic_ns()}.log"
    handle = ServiceHandle(_spawn(["worker", "--agents", "tally"], env, events, log_file),
                           log_file)
    _wait(handle, lambda: "hosting tally" in handle.output(), "orchestrator worker", timeout)
    return handle


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))

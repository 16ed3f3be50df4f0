"""The ``infrastructure`` agent: probe a running service, diagnose it, apply runbook fixes.

Its request types, their payloads and answers, and the ``service:<name>`` lock are its
contract's: :mod:`orchestrator.contracts.infrastructure`. Health is sampled by
:mod:`orchestrator.agents.lib.health`.

A pid read from the pid file is signalled only when it is proven to be the service: the
pid and start time this agent recorded when it started it, or (a pid file it did not write)
a command line equal to ``start``. Anything else is a stale pid file: it is reported and
removed, and nothing is signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from orchestrator.agents.lib.files import write_atomic
from orchestrator.agents.lib.health.probe import Prober
from orchestrator.agents.lib.proc import child_env, run
from orchestrator.agents.lib.prompts import render_prompt

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.health import ISSUE_ORDER, HealthSource, Sample
from orchestrator.contracts.infrastructure import (
    DIAGNOSE,
    FIX,
    PROBE,
    Diagnose,
    Diagnosis,
    Fix,
    FixResult,
    Probe,
    ProbeResult,
    RestartSpec,
    service_lock,
)
from orchestrator.errors import AgentErrorCode
from orchestrator.llm import model_call

__all__ = ["agent", "diagnose_by_rules"]

agent = Agent(
    "infrastructure",
    capabilities=["http-probe", "prometheus", "runbook", "process-restart"],
    version="1",
    description="HTTP and metrics probes, diagnosis, runbook fixes and process restarts",
)

#: Lines of a failed command's output or of a dead service's log kept as evidence.
_TAIL_LINES = 20


@agent.handler(PROBE)
async def probe(payload: Probe, ctx: RequestContext) -> ProbeResult:
    deadline = time.monotonic() + payload.wait_healthy
    attempts = 0
    while True:
        attempts += 1
        samples = await _probe_once(payload)
        issues: list[str] = [s.issue for s in samples if s.status != "healthy" and s.issue]
        healthy = not issues
        if healthy or "http_4xx" in issues or time.monotonic() + 0.5 > deadline:
            return ProbeResult(healthy=healthy, issues=issues, attempts=attempts,
                               samples=samples)
        await asyncio.sleep(0.5)


async def _probe_once(spec: Probe) -> list[Sample]:
    health = Prober(HealthSource(kind="http", url=spec.health_url, timeout=spec.timeout),
                    spec.thresholds)
    if spec.metrics_url is None:
        return [await health.sample()]
    metrics = Prober(HealthSource(kind="prometheus", url=spec.metrics_url, timeout=spec.timeout),
                     spec.thresholds)
    await metrics.sample()  # the window's start
    first = await health.sample()
    if spec.window:
        await asyncio.sleep(spec.window)
    return [first, await metrics.sample()]


def diagnose_by_rules(samples: list[dict[str, Any]], kinds: list[str]) -> tuple[str, str]:
    """The gravest issue seen, preferring those the runbook knows; (kind, reason)."""
    seen = [s for s in samples if s.get("status") != "healthy" and s.get("issue")]
    if not seen:
        return "none", "every sample was healthy"
    ranked = sorted(seen, key=lambda s: ISSUE_ORDER.index(s["issue"])
                    if s["issue"] in ISSUE_ORDER else len(ISSUE_ORDER))
    known = [s for s in ranked if s["issue"] in kinds] or ranked
    worst = known[0]
    return worst["issue"], f"{worst['issue']}: {worst.get('detail', '')}".strip()


@agent.handler(DIAGNOSE)
async def diagnose(payload: Diagnose, ctx: RequestContext) -> Diagnosis:
    samples, kinds = payload.samples, payload.kinds or list(ISSUE_ORDER)
    kind, reason = diagnose_by_rules(samples, kinds)
    if kind != "none":
        answer = await _ask_model(samples, kinds, ctx)
        if answer is not None:
            return Diagnosis(kind=answer[0], reason=answer[1], by="model", rules=kind)
    return Diagnosis(kind=kind, reason=reason, by="rules")


async def _ask_model(samples: list[dict[str, Any]], kinds: list[str],
                     ctx: RequestContext) -> tuple[str, str] | None:
    """The model's (kind, reason), limited to ``kinds``; None when no model is configured or
    its answer is not usable (the rules stand). A budget refusal is the caller's to handle."""
    prompt, messages = render_prompt("infrastructure_diagnose", kinds=", ".join(kinds),
                                     samples=json.dumps(samples, indent=1))
    try:
        answer = await model_call(ctx, purpose="diagnose", tier="small", messages=messages,
                                  prompt=prompt)
    except (asyncio.CancelledError, HandlerError):
        raise
    except Exception as exc:  # the rules still stand; say why the model was not used
        ctx.log.warning("chat model diagnosis failed (%s); using the rules", exc)
        return None
    if answer is None:
        return None
    first, _, rest = answer.content.strip().partition("\n")
    word = first.strip().strip(".`*\"'").lower()
    if word not in kinds:
        ctx.log.warning("chat model answered %r, not one of %s; using the rules", word, kinds)
        return None
    return word, rest.strip() or f"the model chose {word}"


@agent.handler(FIX)
async def fix(payload: Fix, ctx: RequestContext) -> FixResult | dict[str, Any]:
    service, action = payload.service, payload.action
    await ctx.check_fencing(service_lock(service))
    if action.type == "wait":
        await asyncio.sleep(action.seconds)
        return FixResult(action="wait", ok=True, detail=f"waited {action.seconds:g}s")
    if action.type == "command":
        assert action.argv is not None
        return await _run_fix("command", action.argv, timeout=action.timeout)
    spec = payload.restart
    if spec is None:
        raise HandlerError(AgentErrorCode.INVALID_INPUT,
                           "payload.restart: a 'restart' action needs 'restart': "
                           '{"command": [argv]} or {"start": [argv], "pid_file": path}')
    if spec.command is not None:
        return await _run_fix("restart", spec.command, timeout=spec.timeout, cwd=spec.cwd,
                              env=spec.env)
    result = await asyncio.to_thread(_restart_process, spec, ctx.request.request_id)
    ctx.log.warning("restart of %s: %s", service, result["detail"])
    return result


async def _run_fix(kind: str, argv: list[str], **how: Any) -> dict[str, Any]:
    """Run a fix command; a failure is an answer with its evidence, not an error."""
    command = shlex.join(argv)
    try:
        done = await run(argv, **how)
    except HandlerError as exc:  # not found: the runbook or the restart spec is wrong
        return {"action": kind, "ok": False, "exit_code": None, "output": "",
                "detail": f"{command} could not run: {exc}"}
    output = _tail(done.stdout + done.stderr)
    ok = done.returncode == 0 and not done.timed_out
    said = (f"timed out after {how.get('timeout', 60):g}s" if done.timed_out
            else f"exited {done.returncode}")
    detail = f"{command} {said}"
    if output:
        detail += f": {output.splitlines()[-1]}"
    return {"action": kind, "ok": ok, "exit_code": done.returncode, "timed_out": done.timed_out,
            "output": output, "detail": detail}


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-4000:]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return pid if pid > 0 else None


def _read_record(marker: Path) -> dict[str, Any] | None:
    """The restart record beside the pid file, if this agent's user wrote it.

    Only a regular file (not a symlink) owned by this process's user is believed: the
    record is what lets the agent signal a pid, so nobody else's file may vouch for one.
    """
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return None
        try:
            record = json.loads(handle.read(1 << 20))
        except ValueError:
            return None
    return record if isinstance(record, dict) else None


def _same_start(process: psutil.Process, record: dict[str, Any]) -> bool:
    """Whether ``process`` is the one ``record`` says this agent started (pid, start time)."""
    try:
        return (int(record.get("pid") or 0) == process.pid
                and abs(float(record["create_time"]) - process.create_time()) < 0.01)
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


def _same_command(cmdline: list[str], start: list[str]) -> bool:
    """``cmdline`` runs ``start``: the same arguments, the program by name or path."""
    return (len(cmdline) == len(start) and cmdline[1:] == start[1:]
            and os.path.basename(cmdline[0]) == os.path.basename(start[0]))


def _prove(pid: int, record: dict[str, Any] | None,
           start: list[str]) -> tuple[psutil.Process | None, str]:
    """The pid file's process if it is provably the service, else (None, why it is not)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None, f"pid {pid} is not running"
        cmdline = process.cmdline()
    except psutil.NoSuchProcess:
        return None, f"pid {pid} is not running"
    except psutil.AccessDenied:
        return None, f"pid {pid} belongs to another user, not to the service this agent runs"
    if record is not None and _same_start(process, record):
        return process, f"pid {pid} is the process this agent started"
    if _same_command(cmdline, start):
        return process, f"pid {pid} runs the start command"
    return None, (f"pid {pid} runs {shlex.join(cmdline)!r}, not the start command, and is "
                  "not the process this agent started")


def _stop(process: psutil.Process, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``. psutil checks before each signal that the pid
    still belongs to the same process (its start time), so a reused pid is never signalled."""

    def running() -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    if running():
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _log_tail(path: str | None, offset: int) -> str:
    """The last lines written to ``path`` from ``offset`` on."""
    if not path:
        return ""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(offset, size - 64_000))
        return _tail(handle.read().decode("utf-8", "replace"))
    return ""


def _restart_process(spec: RestartSpec, request_id: str) -> dict[str, Any]:
    """Stop the pid file's process (if proven to be the service) and start ``spec.start``, at
    most once per request id.

    A marker beside the pid file records the request and the process it started (pid, start
    time, command line) as soon as the new process exists, before anything else: a request
    re-run after a crash at any point finds it and answers from it instead of restarting the
    service again, and a later restart proves by it that the pid file's pid is still that
    process. A start that fails, or whose process is gone within ``settle`` seconds, answers
    ``ok: false`` with the exit code and the last lines of its log.
    """
    assert spec.start is not None and spec.pid_file is not None
    pid_file = Path(spec.pid_file)
    marker = pid_file.with_name(pid_file.name + ".restart.json")
    record = _read_record(marker)
    if record is not None and record.get("request_id") == request_id:
        with contextlib.suppress(psutil.Error, KeyError, TypeError, ValueError):
            if _same_start(psutil.Process(int(record["pid"])), record):
                return {**record["result"], "replayed": True}  # this request restarted it
    old = _read_pid(pid_file)
    stopped, stale, said = None, None, []
    if old is not None:
        process, why = _prove(old, record, spec.start)
        if process is not None:
            _stop(process, spec.stop_timeout)
            stopped = old
            said.append(f"stopped pid {old}")
        else:
            stale = {"pid": old, "reason": why}
            pid_file.unlink(missing_ok=True)
            said.append(f"stale pid file ({why}): removed it, signalled nothing")
    command = shlex.join(spec.start)
    base = {"action": "restart", "stopped_pid": stopped, "stale_pid_file": stale}
    offset = 0
    with contextlib.suppress(OSError):
        offset = os.stat(spec.log_file).st_size if spec.log_file else 0
    try:
        log = open(spec.log_file, "ab") if spec.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                spec.start, cwd=spec.cwd, env=child_env(spec.env),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
    except OSError as exc:  # not found, not executable, a bad cwd or log file
        said.append(f"could not start {command}: {exc}")
        return {**base, "ok": False, "pid": None, "exit_code": None, "log_tail": "",
                "detail": "; ".join(said)}
    try:
        identity = psutil.Process(proc.pid)
        created, cmdline = identity.create_time(), identity.cmdline()
    except psutil.Error:
        created, cmdline = None, list(spec.start)
    said.append(f"started pid {proc.pid}" if stopped or stale
                else f"was not running; started pid {proc.pid}")
    result = {**base, "ok": True, "pid": proc.pid, "detail": "; ".join(said)}
    write_atomic(marker, json.dumps({"request_id": request_id, "pid": proc.pid,
                                      "create_time": created, "cmdline": cmdline,
                                      "result": result}), mode=0o644)
    write_atomic(pid_file, f"{proc.pid}\n", mode=0o644)
    deadline = time.monotonic() + spec.settle
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.returncode is not None:
        tail = _log_tail(spec.log_file, offset)
        said[-1] = (f"started pid {proc.pid}, which exited {proc.returncode} within "
                    f"{spec.settle:g}s")
        if tail:
            said.append(f"last log line: {tail.splitlines()[-1]}")
        elif not spec.log_file:
            said.append("no log_file was given: set one to see its output")
        return {**base, "ok": False, "pid": proc.pid, "exit_code": proc.returncode,
                "log_tail": tail, "detail": "; ".join(said)}
    # reap it when it exits, so it never lingers as a zombie of this process
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return result

"""The ``infrastructure`` agent: probe a running service, diagnose it, apply runbook fixes.

Request types:

* ``probe`` ``{"health_url", "metrics_url"?, "thresholds"?, "timeout"?, "window"?,
  "wait_healthy"?}`` → ``{"healthy", "issues", "samples"}``. One HTTP health sample, plus a
  Prometheus sample over ``window`` seconds when ``metrics_url`` is given. With
  ``wait_healthy`` (seconds) it probes every half second until healthy or out of time —
  how a fix is verified while the service comes up — or until a URL answers 4xx
  (``http_4xx``: a misconfigured probe does not heal by waiting).
* ``diagnose`` ``{"samples", "kinds"}`` → ``{"kind", "reason", "by"}``: the issue to treat.
  Rules pick the gravest issue seen (down > http_5xx > http_4xx > error_rate > latency); when a chat
  model is configured (``ORCHESTRATOR_CHAT_MODEL``) it is asked first, and its answer is
  used only if it names one of ``kinds``.
* ``fix`` ``{"service", "action", "restart"}`` → what was done. Guarded by
  ``service:<name>``: the request must carry that lock's fencing token. ``action`` is
  ``{"type": "restart"}``, ``{"type": "command", "argv": [...], "timeout": 60}`` or
  ``{"type": "wait", "seconds": N}``. ``restart`` says how: ``{"command": [argv]}`` (e.g. a
  service manager), or ``{"start": [argv], "pid_file", "cwd"?, "env"?, "log_file"?,
  "settle"?}``: the process in the pid file is stopped (SIGTERM, then SIGKILL) and ``start``
  is launched in a session of its own. A start is recorded beside the pid file
  (``<pid_file>.restart.json``: the request id, the pid, its start time and command line), so a
  redelivered request does not restart the service a second time.

  A pid read from the pid file is signalled only when it is proven to be the service: the
  pid and start time this agent recorded when it started it, or (a pid file it did not write)
  a command line equal to ``start``. Anything else is a stale pid file: it is reported and
  removed, and nothing is signalled.

  A fix that did not work answers ``"ok": false`` with the evidence, not an error: a command
  that exits non-zero or times out (``exit_code``, ``output``: its last lines), a start
  command that cannot run or whose process is gone within ``settle`` seconds (``exit_code``,
  ``log_tail``: the last lines it logged).
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
from typing import Any, Literal

import psutil
from orchestrator.agents._payload import parse_payload
from orchestrator.agents.lib.files import write_atomic
from orchestrator.agents.lib.health import HealthSource, Prober, Sample, Thresholds
from orchestrator.agents.lib.proc import child_env, run
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.errors import AgentErrorCode

__all__ = ["agent", "RestartSpec", "FixAction", "diagnose_by_rules", "ISSUE_ORDER"]

agent = Agent(
    "infrastructure",
    capabilities=["http-probe", "prometheus", "runbook", "process-restart"],
    version="1",
    description="HTTP and metrics probes, diagnosis, runbook fixes and process restarts",
)

#: Issue kinds, gravest first: the rules treat the gravest one seen.
ISSUE_ORDER = ("down", "http_5xx", "http_4xx", "error_rate", "latency")
#: Lines of a failed command's output or of a dead service's log kept as evidence.
_TAIL_LINES = 20


class RestartSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(None, min_length=1)
    start: list[str] | None = Field(None, min_length=1)
    pid_file: str | None = None
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    log_file: str | None = None
    stop_timeout: float = Field(5.0, gt=0)
    timeout: float = Field(60.0, gt=0)
    #: Seconds the started process must stay up to count as started.
    settle: float = Field(1.0, ge=0, le=60)

    @model_validator(mode="after")
    def _one_way(self) -> RestartSpec:
        if (self.command is None) == (self.start is None):
            raise ValueError("give exactly one of 'command' or 'start' (with 'pid_file')")
        if self.start is not None and not self.pid_file:
            raise ValueError("'start' needs 'pid_file', where the service's pid is kept")
        return self


class FixAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["restart", "command", "wait"]
    argv: list[str] | None = Field(None, min_length=1)
    timeout: float = Field(60.0, gt=0)
    seconds: float = Field(0.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _argv(self) -> FixAction:
        if self.type == "command" and not self.argv:
            raise ValueError("a 'command' action needs 'argv'")
        return self


class _Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    health_url: str
    metrics_url: str | None = None
    thresholds: Thresholds = Field(default_factory=Thresholds)
    timeout: float = Field(2.0, gt=0)
    window: float = Field(1.0, ge=0)
    wait_healthy: float = Field(0.0, ge=0, le=3600)


@agent.handler("probe")
async def probe(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    spec = parse_payload(_Probe, payload, "probe")
    deadline = time.monotonic() + spec.wait_healthy
    attempts = 0
    while True:
        attempts += 1
        samples = await _probe_once(spec)
        issues = [s.issue for s in samples if s.status != "healthy" and s.issue]
        healthy = not issues
        if healthy or "http_4xx" in issues or time.monotonic() + 0.5 > deadline:
            return {"healthy": healthy, "issues": issues, "attempts": attempts,
                    "samples": [s.model_dump(mode="json") for s in samples]}
        await asyncio.sleep(0.5)


async def _probe_once(spec: _Probe) -> list[Sample]:
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


@agent.handler("diagnose")
async def diagnose(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    samples, kinds = payload.get("samples"), payload.get("kinds") or list(ISSUE_ORDER)
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'samples', a list of probe samples")
    kind, reason = diagnose_by_rules(samples, list(kinds))
    model = ctx.chat_model()
    if model is not None and kind != "none":
        answer = await _ask_model(model, samples, list(kinds), ctx)
        if answer is not None:
            return {"kind": answer[0], "reason": answer[1], "by": "model", "rules": kind}
    return {"kind": kind, "reason": reason, "by": "rules"}


async def _ask_model(model: Any, samples: list[dict[str, Any]], kinds: list[str],
                     ctx: RequestContext) -> tuple[str, str] | None:
    prompt = (
        "You diagnose a misbehaving web service from probe samples. Answer with exactly one "
        f"word from this list, the issue to treat first: {', '.join(kinds)}. Then, on the "
        "next line, one sentence of reasoning.\n\nSamples:\n"
        + json.dumps(samples, indent=1)
    )
    try:
        reply = await asyncio.wait_for(model.ainvoke(prompt), 60)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the rules still stand; say why the model was not used
        ctx.log.warning("chat model diagnosis failed (%s); using the rules", exc)
        return None
    text = str(getattr(reply, "content", reply)).strip()
    first, _, rest = text.partition("\n")
    word = first.strip().strip(".`*\"'").lower()
    if word not in kinds:
        ctx.log.warning("chat model answered %r, not one of %s; using the rules", word, kinds)
        return None
    return word, rest.strip() or f"the model chose {word}"


@agent.handler("fix")
async def fix(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    service = payload.get("service")
    if not isinstance(service, str) or not service:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'service', the service's name")
    action = parse_payload(FixAction, payload.get("action"), "action")
    await ctx.check_fencing(f"service:{service}")
    if action.type == "wait":
        await asyncio.sleep(action.seconds)
        return {"action": "wait", "ok": True, "detail": f"waited {action.seconds:g}s"}
    if action.type == "command":
        assert action.argv is not None
        return await _run_fix("command", action.argv, timeout=action.timeout)
    spec = parse_payload(RestartSpec, payload.get("restart"), "restart")
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

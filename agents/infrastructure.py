"""The ``infrastructure`` agent: probe a running service, diagnose it, apply runbook fixes.

Request types:

* ``probe`` ``{"health_url", "metrics_url"?, "thresholds"?, "timeout"?, "window"?,
  "wait_healthy"?}`` → ``{"healthy", "issues", "samples"}``. One HTTP health sample, plus a
  Prometheus sample over ``window`` seconds when ``metrics_url`` is given. With
  ``wait_healthy`` (seconds) it probes every half second until healthy or out of time —
  how a fix is verified while the service comes up.
* ``diagnose`` ``{"samples", "kinds"}`` → ``{"kind", "reason", "by"}``: the issue to treat.
  Rules pick the gravest issue seen (down > http_5xx > error_rate > latency); when a chat
  model is configured (``ORCHESTRATOR_CHAT_MODEL``) it is asked first, and its answer is
  used only if it names one of ``kinds``.
* ``fix`` ``{"service", "action", "restart"}`` → what was done. Guarded by
  ``service:<name>``: the request must carry that lock's fencing token. ``action`` is
  ``{"type": "restart"}``, ``{"type": "command", "argv": [...], "timeout": 60}`` or
  ``{"type": "wait", "seconds": N}``. ``restart`` says how: ``{"command": [argv]}`` (e.g. a
  service manager), or ``{"start": [argv], "pid_file", "cwd"?, "env"?, "log_file"?}``: the
  process in the pid file is stopped (SIGTERM, then SIGKILL) and ``start`` is launched in a
  session of its own. A start is recorded beside the pid file with the request id, so a
  redelivered request does not restart the service a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.agent import Agent, HandlerError, RequestContext

from ._payload import parse_payload
from ._proc import child_env, run
from .health import HealthSource, Prober, Sample, Thresholds

__all__ = ["agent", "RestartSpec", "FixAction", "diagnose_by_rules", "ISSUE_ORDER"]

agent = Agent(
    "infrastructure",
    capabilities=["http-probe", "prometheus", "runbook", "process-restart"],
    version="1",
    description="HTTP and metrics probes, diagnosis, runbook fixes and process restarts",
)

#: Issue kinds, gravest first: the rules treat the gravest one seen.
ISSUE_ORDER = ("down", "http_5xx", "error_rate", "latency")


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
        if healthy or time.monotonic() + 0.5 > deadline:
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
        raise HandlerError("invalid_input", "payload needs 'samples', a list of probe samples")
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
        raise HandlerError("invalid_input", "payload needs 'service', the service's name")
    action = parse_payload(FixAction, payload.get("action"), "action")
    await ctx.check_fencing(f"service:{service}")
    if action.type == "wait":
        await asyncio.sleep(action.seconds)
        return {"action": "wait", "ok": True, "detail": f"waited {action.seconds:g}s"}
    if action.type == "command":
        assert action.argv is not None
        done = await run(action.argv, timeout=action.timeout)
        output = (done.stdout + done.stderr).strip()[-2000:]
        ok = done.returncode == 0 and not done.timed_out
        return {"action": "command", "ok": ok, "exit_code": done.returncode,
                "detail": f"{' '.join(action.argv)} exited {done.returncode}: {output}"}
    spec = parse_payload(RestartSpec, payload.get("restart"), "restart")
    if spec.command is not None:
        done = await run(spec.command, timeout=spec.timeout, cwd=spec.cwd,
                         env=spec.env)
        ok = done.returncode == 0 and not done.timed_out
        return {"action": "restart", "ok": ok, "exit_code": done.returncode,
                "detail": f"{' '.join(spec.command)} exited {done.returncode}"}
    result = await asyncio.to_thread(_restart_process, spec, ctx.request.request_id)
    ctx.log.warning("restarted %s: %s", service, result["detail"])
    return result


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _restart_process(spec: RestartSpec, request_id: str) -> dict[str, Any]:
    """Stop the pid file's process and start ``spec.start``, at most once per request id.

    A marker beside the pid file records the request and the pid it started as soon as the
    new process exists, before anything else: a request re-run after a crash at any point
    finds it and answers from it instead of restarting the service again.
    """
    assert spec.start is not None and spec.pid_file is not None
    pid_file = Path(spec.pid_file)
    marker = pid_file.with_name(pid_file.name + ".restart.json")
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        done = json.loads(marker.read_text())
        if done["request_id"] == request_id and done.get("pid") and _alive(int(done["pid"])):
            return {**done["result"], "replayed": True}  # this request already restarted it
    old = _read_pid(pid_file)
    stopped = None
    if old is not None and _alive(old):
        stopped = old
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGTERM)
        deadline = time.monotonic() + spec.stop_timeout
        while _alive(old) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(old):
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGKILL)
    log = open(spec.log_file, "ab") if spec.log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            spec.start, cwd=spec.cwd, env=child_env(spec.env), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except FileNotFoundError:
        raise HandlerError("command_not_found", f"{spec.start[0]!r} was not found") from None
    finally:
        if log is not subprocess.DEVNULL:
            log.close()
    result = {"action": "restart", "ok": True, "pid": proc.pid, "stopped_pid": stopped,
              "detail": f"stopped pid {stopped}, started pid {proc.pid}" if stopped
              else f"was not running; started pid {proc.pid}"}
    _write_atomic(marker, json.dumps({"request_id": request_id, "pid": proc.pid,
                                      "result": result}))
    # reap it when it exits, so it never lingers as a zombie of this process
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    _write_atomic(pid_file, f"{proc.pid}\n")
    time.sleep(0.2)
    if proc.poll() is not None:
        raise HandlerError("start_failed", f"{' '.join(spec.start)} exited {proc.returncode} "
                           "right after starting; see its log", retryable=True)
    return result

"""The CLI against a server, and the commands of the service's own tables.

With ``--server URL`` (or ``ORCHESTRATOR_SERVER``) ``run``, ``resume``, ``ls``, ``show`` and
``cancel`` go to ``orchestrator serve`` through :class:`orchestrator.client.Client` (token:
``--token`` or ``ORCHESTRATOR_TOKEN``) and print what their local forms print. ``run
--detach`` / ``resume --detach`` return once the run is queued.

Without a server: ``cancel THREAD`` cancels in the database (queued, interrupted or failed
workflows; a running one only when no live process outside the service runs it), ``token``
manages the API's tokens and ``audit`` shows the trail. Each change made here is audited as
the OS user, from ``cli@<host>``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TextIO

from .exits import EXIT_OK, UsageError
from .output import print_json, print_result
from .parser import settings_for

__all__ = ["remote_command", "cmd_cancel", "cmd_token", "cmd_audit"]

Command = Callable[[argparse.Namespace, TextIO, TextIO, TextIO], Awaitable[int]]


def server_url(args: argparse.Namespace) -> str | None:
    return getattr(args, "server", None) or os.environ.get("ORCHESTRATOR_SERVER") or None


def remote_command(args: argparse.Namespace) -> Command | None:
    """The server form of ``args.command`` when a server is given, else None.

    Raises:
        UsageError: ``--detach`` without a server.
    """
    if args.command not in _REMOTE or not hasattr(args, "server"):
        return None
    if server_url(args) is None:
        if getattr(args, "detach", False):
            raise UsageError("--detach submits to a server: give --server URL or set "
                             "ORCHESTRATOR_SERVER")
        return None
    return _REMOTE[args.command]


def _client(args: argparse.Namespace) -> Any:
    from ..client import Client

    return Client(server_url(args), getattr(args, "token", None))


def _result(details: dict[str, Any]) -> Any:
    """A :class:`~orchestrator.facade.RunResult` from ``GET /runs/{thread_id}``, so a run
    through the server prints (and exits) as a local one."""
    from ..facade import RunResult

    record = details["record"]
    return RunResult(record["thread_id"], record["workflow_type"], record["status"],
                     details.get("result"), details.get("interrupts") or [], record.get("error"))


def _wait(client: Any, thread_id: str, run_id: int, args: argparse.Namespace,
          err: TextIO) -> dict[str, Any]:
    try:
        return client.wait(thread_id, run_id=run_id, timeout=None)
    except KeyboardInterrupt:
        err.write(f"\nstopped waiting; the run goes on on the server: orchestrator show "
                  f"{thread_id} --server {client.url}\n")
        args.interrupt_reported = True
        raise


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .run_input import parse_input

    data = parse_input(args, stdin)
    with _client(args) as client:
        run = client.submit(args.workflow, data, args.thread_id)
        return _after_queueing(client, run, args, out, err)


async def _resume(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    value = None
    if args.value is not None:
        try:
            value = json.loads(args.value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--value must be JSON: {exc}") from None
    with _client(args) as client:
        run = client.resume(args.thread_id, value)
        return _after_queueing(client, run, args, out, err)


def _after_queueing(client: Any, run: dict[str, Any], args: argparse.Namespace, out: TextIO,
                    err: TextIO) -> int:
    thread_id = run["thread_id"]
    if args.detach:
        if args.json:
            print_json(run, out)
        else:
            out.write(f"{thread_id}\n")
            err.write(f"queued run {run['run_id']} ({run.get('kind', 'start')}); follow it "
                      f"with: orchestrator show {thread_id} --server {client.url}\n")
        return EXIT_OK
    return print_result(_result(_wait(client, thread_id, run["run_id"], args, err)), args, out)


async def _ls(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .inspect import print_workflows

    with _client(args) as client:
        found = client.workflows(status=args.status, type=args.workflow_type, limit=args.limit)
    return print_workflows([_record(r) for r in found], args, out)


async def _show(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..facade import HistoryEntry, WorkflowDetails
    from .inspect import print_details

    with _client(args) as client:
        data = client.get(args.thread_id)
        history = ([HistoryEntry(**h) for h in client.history(args.thread_id)]
                   if args.history else None)
    details = WorkflowDetails(_record(data["record"]), data["values"], data["next"],
                              data["interrupts"])
    code = print_details(details, history, args, out)
    if not args.json and data.get("runs"):
        out.write("\nruns (newest first):\n")
        for r in data["runs"]:
            out.write(f"  run {r['run_id']:>6}  {r['kind']:<8} {r['status']:<10} "
                      f"attempts {r['attempts']}  by {r.get('requested_by') or '-'}\n")
    return code


def _record(data: dict[str, Any]) -> Any:
    """A :class:`WorkflowRecord` from its JSON form (``to_dict``)."""
    from ..state.store import WorkflowRecord

    dates = {k: datetime.fromisoformat(data[k]) if data.get(k) else None
             for k in ("heartbeat_at", "created_at", "updated_at")}
    return WorkflowRecord(**{**data, **dates})


async def _cancel(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    with _client(args) as client:
        run = client.cancel(args.thread_id)
    return _print_cancel(run, args, out)


def _print_cancel(run: Any, args: argparse.Namespace, out: TextIO) -> int:
    data = run if isinstance(run, dict) else run.to_dict()
    if args.json:
        print_json(data, out)
    else:
        out.write(f"cancel of {data['thread_id']} requested (run {data['run_id']}, "
                  f"{data['status']})\n")
    return EXIT_OK


_REMOTE: dict[str, Command] = {"run": _run, "resume": _resume, "ls": _ls, "show": _show,
                               "cancel": _cancel}


# -- local commands ------------------------------------------------------------------------------


async def cmd_cancel(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    """``cancel THREAD`` in the database (no server given)."""
    from ..errors import WorkflowBusy
    from ..facade import Orchestrator
    from ..service import audit
    from ..service.runs import RunService

    async with Orchestrator(settings_for(args), agents=[]) as orch:
        record = await orch.runtime.workflows.get(args.thread_id)
        runs = RunService(orch)
        in_service = await runs.runs(thread_id=args.thread_id, status="running")
        # a workflow run by a CLI command or a Python program (not by a runner) cannot be
        # reached from here: no runner is listening for its cancel
        if (record.status == "running" and not in_service
                and orch._owner_alive(record)):  # the facade's own liveness rule
            raise WorkflowBusy(
                f"workflow {args.thread_id} is running in live process {record.owner}, not "
                "under `orchestrator serve`: stop that process (Ctrl-C), or, when it runs "
                "under a server, cancel it there with --server URL")
        run = await runs.cancel(args.thread_id, by=audit.cli_actor())
        await audit.record(orch.runtime.db, actor=audit.cli_actor(), action="run.cancel",
                           target=args.thread_id, detail={"run_id": run.run_id},
                           source=audit.cli_source(), namespace=orch.settings.namespace)
    return _print_cancel(run, args, out)


async def cmd_token(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    """``token create|ls|revoke``: the API's bearer tokens, in the database."""
    from ..runtime import Runtime
    from ..service import audit
    from ..service.auth import TokenStore

    if args.token_command is None:
        raise UsageError("usage: orchestrator token create|ls|revoke")
    async with Runtime.open(settings_for(args), agents=[]) as rt:
        store = TokenStore(rt.db, rt.settings.namespace)

        async def note(action: str, target: str, detail: dict[str, Any]) -> None:
            await audit.record(rt.db, actor=audit.cli_actor(), action=action, target=target,
                               detail=detail, source=audit.cli_source(),
                               namespace=rt.settings.namespace)

        if args.token_command == "create":
            info, secret = await store.create(args.role, args.name, by=audit.cli_actor())
            await note("token.create", info.name, {"role": info.role})
            out.write(f"{secret}\n")
            err.write(f"token {info.name!r} ({info.role}) created; it is shown this once "
                      "(only its hash is stored): pass it as --token or ORCHESTRATOR_TOKEN\n")
            return EXIT_OK
        if args.token_command == "ls":
            tokens = await store.list(include_revoked=args.all)
            if args.json:
                print_json([t.to_dict() for t in tokens], out)
            elif not tokens:
                out.write("no tokens; create one with `orchestrator token create --role admin`\n")
            for t in tokens if not args.json else []:
                state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
                out.write(f"{t.name:<32} {t.role:<9} {state:<24} by {t.created_by or '-'} "
                          f"{t.created_at:%Y-%m-%d %H:%M}\n")
            return EXIT_OK
        if not await store.revoke(args.name):
            raise UsageError(f"no active token named {args.name!r}; `orchestrator token ls` "
                             "lists them")
        await note("token.revoke", args.name, {})
        out.write(f"revoked {args.name}\n")
        return EXIT_OK


async def cmd_audit(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    """``audit``: who changed what, when, from where; newest first."""
    from ..runtime import Runtime
    from ..service import audit

    async with Runtime.open(settings_for(args), agents=[]) as rt:
        found = await audit.entries(rt.db, rt.settings.namespace, limit=args.limit,
                                    target=args.target)
    if args.json:
        print_json([e.to_dict() for e in found], out)
        return EXIT_OK
    if not found:
        out.write("no audit entries\n")
    for e in found:
        detail = json.dumps(e.detail, sort_keys=True, default=str) if e.detail else ""
        out.write(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.actor:<20} {e.action:<20} {e.target:<38} "
                  f"{e.source:<24} {detail}\n")
    return EXIT_OK

"""``orchestrator``: run, resume and inspect workflows; host agents; manage the database.

Exit codes: 0 completed (or success), 3 interrupted (waiting for ``resume``), 1 failed,
2 bad usage or bad input, 4 completed but partial (the result's status is ``partial``: a
plan finished with tasks skipped), 130 stopped by Ctrl-C (the workflow stays resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import ErrorCode, InvalidInput, OrchestratorError
from .questions import describe_question
from .settings import Settings

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_PARTIAL"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PARTIAL = 0, 1, 2, 3, 4
_STATUS_EXIT = {"completed": EXIT_OK, "interrupted": EXIT_INTERRUPTED, "failed": EXIT_FAILED,
                "running": EXIT_FAILED}


def _exit_code(result: Any) -> int:
    """The exit code of a run: by its status; a completed run whose result says ``partial``
    (a plan that finished with tasks skipped) is not a clean success."""
    final = result.final_result
    if result.status == "completed" and isinstance(final, dict) and final.get("status") == "partial":
        return EXIT_PARTIAL
    return _STATUS_EXIT.get(result.status, EXIT_FAILED)


class UsageError(Exception):
    """Bad command-line usage: exit 2 with the message."""


def _thread_id(value: str) -> str:
    """argparse type of a thread id: 1-200 printable characters (it is shown, logged, typed)."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty (leave the option out for a new id)")
    if len(value) > 200:
        raise argparse.ArgumentTypeError(f"is {len(value)} characters long; at most 200")
    if not value.isprintable() or value != value.strip():
        raise argparse.ArgumentTypeError(
            f"{value!r} holds control characters or surrounding spaces; use printable text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text") from None
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not a positive number")
    return number


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langgraph-orchestrator")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orchestrator",
        description="Durable LangGraph workflows for multi-agent software delivery. "
        "Configuration comes from ORCHESTRATOR_* variables (see README); with no database "
        "or Redis URL set, embedded ones are started in ORCHESTRATOR_DATA_DIR.",
        epilog="exit codes: 0 completed, 3 interrupted (resume it), 1 failed, 2 bad usage/input, "
               "4 completed but partial, 130 stopped by Ctrl-C (resume it)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def local_agents_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-local-agents", action="store_true",
                        help="do not host the built-in agents in this process; leave agent "
                        "work to `orchestrator worker` processes")

    run = sub.add_parser("run", help="start a workflow and run it until it ends or pauses")
    run.add_argument("workflow", help="workflow name (see `orchestrator graphs`)")
    run.add_argument("--input", metavar="FILE", help="JSON input object from FILE, or - for stdin")
    run.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                     help="set one input field (VALUE parsed as JSON when it is JSON); repeatable")
    run.add_argument("--thread-id", type=_thread_id,
                     help="thread id for the new workflow (default: a new UUID)")
    run.add_argument("--json", action="store_true", help="print the result as one JSON object")
    local_agents_flag(run)

    resume = sub.add_parser("resume", help="continue a paused, crashed or failed workflow")
    resume.add_argument("thread_id")
    resume.add_argument("--value", metavar="JSON",
                        help="answer to the pending question, as JSON that fits its schema "
                        "(`orchestrator show THREAD_ID` prints the question and examples)")
    resume.add_argument("--json", action="store_true", help="print the result as one JSON object")
    local_agents_flag(resume)

    recover = sub.add_parser("recover", help="continue every running workflow whose process died")
    recover.add_argument("--json", action="store_true")
    local_agents_flag(recover)

    ls = sub.add_parser("ls", help="list workflows, most recently updated first")
    ls.add_argument("--status", choices=["running", "interrupted", "completed", "failed"])
    ls.add_argument("--type", dest="workflow_type", help="only this workflow type")
    ls.add_argument("--limit", type=_positive_int, default=50, metavar="N",
                    help="at most N workflows (default 50)")
    ls.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="show one workflow: record, state, pending interrupts")
    show.add_argument("thread_id")
    show.add_argument("--history", action="store_true", help="also list its checkpoints")
    show.add_argument("--json", action="store_true")

    graphs = sub.add_parser("graphs", help="list the available workflows")
    graphs.add_argument("--json", action="store_true")

    agents = sub.add_parser("agents", help="list registered agent instances")
    agents.add_argument("--all", action="store_true", help="include offline instances")
    agents.add_argument("--json", action="store_true")

    worker = sub.add_parser("worker", help="host agents until SIGTERM/SIGINT")
    worker.add_argument("--agents", required=True, metavar="TYPE[,TYPE...]",
                        help="agent types to host, e.g. docs")
    worker.add_argument("--min", dest="min_concurrency", type=int, metavar="N",
                        help="handlers run at once per agent type, at least (default 2)")
    worker.add_argument("--max", dest="max_concurrency", type=int, metavar="N",
                        help="handlers run at once per agent type, at most (default 10); "
                        "the worker scales between the two on the backlog")
    worker.add_argument("--metrics-port", type=int, metavar="N",
                        help="serve Prometheus metrics on 127.0.0.1:N")

    locks = sub.add_parser("locks", help="list held resource locks")
    locks.add_argument("--all", action="store_true", help="include free locks (last token)")
    locks.add_argument("--json", action="store_true")

    dlq = sub.add_parser("dlq", help="dead-lettered agent requests")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION")
    dlq_ls = dlq_sub.add_parser("ls", help="list dead letters")
    dlq_ls.add_argument("--agent", help="only this agent type")
    dlq_ls.add_argument("--json", action="store_true")
    dlq_show = dlq_sub.add_parser("show", help="one dead letter, with its message")
    dlq_show.add_argument("agent")
    dlq_show.add_argument("id")
    dlq_replay = dlq_sub.add_parser("replay", help="queue dead letters again (all of the type "
                                    "when no id is given)")
    dlq_replay.add_argument("agent")
    dlq_replay.add_argument("ids", nargs="*", metavar="ID")
    dlq_purge = dlq_sub.add_parser("purge", help="delete dead letters (all of the type when no "
                                   "id is given)")
    dlq_purge.add_argument("agent")
    dlq_purge.add_argument("ids", nargs="*", metavar="ID")

    analyze = sub.add_parser(
        "analyze", help="import dependencies of a repository (Python, JavaScript, TypeScript)",
        description="Import-dependency analysis by the planner agent, run in this process (no "
        "database or Redis needed): files, edges as [importer, imported], cycles, "
        "topological batches and the critical path.")
    analyze.add_argument("path", help="repository folder")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.add_parser("migrate", help="apply pending SQL migrations (re-running is a no-op)")

    services = sub.add_parser("services", help="the embedded PostgreSQL and Redis")
    services_sub = services.add_subparsers(dest="services_command", metavar="ACTION")
    services_sub.add_parser("status", help="are the embedded services running?")
    services_stop = services_sub.add_parser(
        "stop", help="stop the embedded services of the data dir (refused while other "
        "processes use them, unless --force)")
    services_stop.add_argument("--force", action="store_true",
                               help="stop them even under live processes (listed)")
    return p


# -- helpers -----------------------------------------------------------------------------------


# Bounds on what ``run`` accepts: a workflow's input is stored in its record and in every
# checkpoint, so a multi-megabyte value is a mistake, and a deeply nested one only crashes
# whatever walks it recursively later (the JSON decoder, pydantic, psycopg).
MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_INPUT_DEPTH = 100


def _utf8(value: str, what: str) -> str:
    """``value`` if it is valid UTF-8 text (argv smuggles undecodable bytes in as surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid UTF-8 text") from None
    return value


def _read_input(source: str, stdin: TextIO) -> str:
    """The text of ``--input`` (a file, or ``-`` for stdin), at most MAX_INPUT_BYTES of UTF-8."""
    limit = MAX_INPUT_BYTES
    try:
        if source == "-":
            binary = getattr(stdin, "buffer", None)
            raw: bytes | str = (binary.read(limit + 1) if binary is not None
                                else stdin.read(limit + 1))
        else:
            with open(source, "rb") as fh:
                raw = fh.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --input {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # a text stdin that cannot decode what it was given
        raise UsageError(f"--input {source} is not UTF-8 text") from None
    size = len(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape"))
    if size > limit:
        raise UsageError(f"--input {source} is larger than {limit // (1024 * 1024)} MiB; "
                         "a workflow input holds paths and settings, not data")
    if isinstance(raw, str):
        return _utf8(raw, f"--input {source}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--input {source} is not UTF-8 text (byte {exc.start}: "
                         f"{raw[exc.start:exc.start + 1]!r})") from None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _load_json(text: str, what: str, *, lenient: bool = False) -> Any:
    """``text`` decoded as JSON, refused when it nests too deep; ``lenient``: text that is
    not JSON is returned as it is (``--set name=value``)."""
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        if lenient:
            return text
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder gave up: deeper than the interpreter's stack
        loaded, deep = None, True
    else:
        deep = _too_deep(loaded, MAX_INPUT_DEPTH)
    if deep:
        raise UsageError(f"{what} nests lists or objects more than {MAX_INPUT_DEPTH} levels deep")
    return loaded


def _parse_input(args: argparse.Namespace, stdin: TextIO) -> dict[str, Any]:
    data: dict[str, Any] = {}
    size = 0
    if args.input:
        text = _read_input(args.input, stdin)
        size += len(text)
        loaded = _load_json(text, f"--input {args.input}")
        if not isinstance(loaded, dict):
            raise UsageError(f"--input {args.input} must hold a JSON object")
        data.update(loaded)
    for item in args.set:
        key, sep, raw = _utf8(item, "--set").partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item[:200]!r}")
        size += len(raw)
        data[key] = _load_json(raw, f"--set {key}", lenient=True)
    if size > MAX_INPUT_BYTES:
        raise UsageError(f"the input is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB; "
                         "a workflow input holds paths and settings, not data")
    return data


def _print_json(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _summarize(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} items" if len(value) > 5 else json.dumps(value, default=str)
    if isinstance(value, dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _print_result(result: Any, args: argparse.Namespace, out: TextIO) -> int:
    if args.json:
        _print_json(result.to_dict(), out)
        return _exit_code(result)
    out.write(f"{result.status}: {result.workflow_type} (thread {result.thread_id})\n")
    if isinstance(result.final_result, dict):
        for key, value in result.final_result.items():
            out.write(f"  {key}: {_summarize(value)}\n")
    elif result.final_result is not None:
        out.write(f"  result: {_summarize(result.final_result)}\n")
    if result.error:
        out.write(f"  error ({result.error.get('code')}): {result.error.get('message')}\n")
        out.write(f"  to retry from the last checkpoint: orchestrator resume {result.thread_id}\n")
    for item in result.interrupts:  # the question, the answer it expects, how to give it
        for line in describe_question(item["value"], result.thread_id):
            out.write(f"  {line}\n")
    if result.status == "running":
        out.write(f"  stopped before the end; continue with: orchestrator resume {result.thread_id}\n")
    return _exit_code(result)


class _LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The CLI's log handler: clears the progress line of its stream before a record is
    written, and draws it again after, so a warning never lands inside the progress line."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.progress: _ProgressPrinter | None = None

    def emit(self, record: logging.LogRecord) -> None:
        progress = self.progress
        if progress is None:
            super().emit(record)
            return
        with progress.lock:
            progress.erase()
            super().emit(record)
            progress.draw()


class _ProgressPrinter:
    """Progress on a terminal: one rewritten line per finished step."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.line = ""
        self.lock = threading.RLock()  # log records come from worker threads too
        self._handlers = [h for h in logging.getLogger().handlers
                          if isinstance(h, _LogHandler) and h.stream is stream]
        if self.enabled:
            for handler in self._handlers:
                handler.progress = self

    def __call__(self, progress: Any) -> None:
        if not self.enabled:
            return
        count = f"[{progress.done}/{progress.total}] " if progress.total else ""
        with self.lock:
            self.erase()
            self.line = f"{count}{progress.label}"[:120]
            self.draw()

    def draw(self) -> None:
        if self.line:
            self.stream.write("\r" + self.line)
            self.stream.flush()

    def erase(self) -> None:
        if self.line:
            self.stream.write("\r" + " " * len(self.line) + "\r")
            self.stream.flush()

    def finish(self) -> None:
        with self.lock:
            self.erase()
            self.line = ""
        for handler in self._handlers:
            if handler.progress is self:
                handler.progress = None


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "no_local_agents", False):
        overrides["local_agents"] = False
    return Settings.from_env(**overrides)


# -- commands ----------------------------------------------------------------------------------


async def _cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .facade import Orchestrator
    from .graphs import get_workflow, validate_input

    data = _parse_input(args, stdin)
    # bad input fails before any start-up; the run takes it validated (not checked again)
    validated = validate_input(get_workflow(args.workflow), data)
    thread_id = args.thread_id or str(uuid.uuid4())  # known here, to say how to resume it
    progress = _ProgressPrinter(err)
    async with Orchestrator(_settings(args)) as orch:
        try:
            async with _stop_promptly_on_ctrl_c(orch, thread_id, args, err):
                result = await orch.run(args.workflow, validated, thread_id,
                                        on_progress=progress)
        finally:
            progress.finish()
    return _print_result(result, args, out)


@contextlib.asynccontextmanager
async def _stop_promptly_on_ctrl_c(
    orch: Any, thread_id: str, args: argparse.Namespace, err: TextIO
) -> AsyncIterator[None]:
    """On Ctrl-C (asyncio.run cancels the command), stop at once and say how to go on.

    The workflow's record stays ``running`` with this (soon dead) process as its owner, so
    ``orchestrator resume`` carries it on from its last checkpoint. The agent requests this
    process was handling are cancelled instead of drained (the worker's grace period is for
    SIGTERM): unanswered, they run again when the workflow is resumed.
    """
    try:
        yield
    except asyncio.CancelledError:
        worker = orch.runtime.worker
        if worker is not None:
            worker_log = logging.getLogger("orchestrator.worker")
            level = worker_log.level
            worker_log.setLevel(logging.ERROR)  # its "still running" warnings: we say it here
            try:
                await worker.stop(grace=0)
            finally:
                worker_log.setLevel(level)
        err.write(f"\ninterrupted: workflow {thread_id} stopped (agent work in progress in "
                  f"this process was cancelled and runs again); continue it with "
                  f"`orchestrator resume {thread_id}`\n")
        args.interrupt_reported = True
        raise


async def _cmd_resume(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .facade import Orchestrator

    value = None
    if args.value is not None:
        try:
            value = json.loads(args.value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--value must be JSON: {exc}") from None
    progress = _ProgressPrinter(err)
    async with Orchestrator(_settings(args)) as orch:
        try:
            async with _stop_promptly_on_ctrl_c(orch, args.thread_id, args, err):
                result = await orch.resume(args.thread_id, value, on_progress=progress)
        finally:
            progress.finish()
    return _print_result(result, args, out)


async def _cmd_recover(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .facade import Orchestrator

    async with Orchestrator(_settings(args)) as orch:
        results = await orch.recover()
    if args.json:
        _print_json([r.to_dict() for r in results], out)
    else:
        if not results:
            out.write("no orphaned workflows\n")
        for r in results:
            out.write(f"{r.status}: {r.workflow_type} (thread {r.thread_id})\n")
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


async def _cmd_ls(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .runtime import Runtime

    async with Runtime.open(_settings(args), agents=[]) as rt:
        records = await rt.workflows.list(args.status, args.workflow_type, limit=args.limit)
    if args.json:
        _print_json([r.to_dict() for r in records], out)
        return EXIT_OK
    if not records:
        out.write("no workflows\n")
        return EXIT_OK
    out.write(f"{'THREAD ID':<38} {'WORKFLOW':<16} {'STATUS':<12} {'STEP':<18} UPDATED\n")
    for r in records:
        out.write(f"{r.thread_id:<38} {r.workflow_type:<16} {r.status:<12} "
                  f"{(r.current_step or '-'):<18} {r.updated_at:%Y-%m-%d %H:%M:%S}\n")
    return EXIT_OK


async def _cmd_show(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .facade import Orchestrator

    async with Orchestrator(_settings(args), agents=[]) as orch:
        details = await orch.get(args.thread_id)
        history = await orch.history(args.thread_id) if args.history else None
    if args.json:
        data = details.to_dict()
        if history is not None:
            data["history"] = [h.to_dict() for h in history]
        _print_json(data, out)
        return EXIT_OK
    r = details.record
    out.write(f"thread:    {r.thread_id}\nworkflow:  {r.workflow_type}\nstatus:    {r.status}\n"
              f"step:      {r.current_step or '-'}\nversion:   {r.version}\n"
              f"agents:    {', '.join(r.participating_agents) or '-'}\n"
              f"created:   {r.created_at:%Y-%m-%d %H:%M:%S}\nupdated:   {r.updated_at:%Y-%m-%d %H:%M:%S}\n"
              f"input:     {json.dumps(r.input, sort_keys=True)}\n")
    if r.result is not None:
        out.write(f"result:    {_summarize(r.result)}\n")
    if r.error:
        out.write(f"error:     {r.error.get('code')}: {r.error.get('message')}\n")
    if details.next:
        out.write(f"next:      {', '.join(details.next)}\n")
    for item in details.interrupts:
        for n, line in enumerate(describe_question(item["value"], r.thread_id)):
            out.write(f"{'waiting:' if n == 0 else '':<11}{line}\n")
    if history is not None:
        out.write("\nhistory (oldest first):\n")
        for h in history:
            names = f"  [{', '.join(h.names)}]" if h.names else ""
            out.write(f"  step {h.step:>3}  {h.checkpoint_id}  {h.source:<6} "
                      f"next={','.join(h.next) or '-'}{names}\n")
    return EXIT_OK


async def _cmd_graphs(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .graphs import available_workflows

    specs = available_workflows()
    if args.json:
        _print_json([{"name": s.name, "description": s.description,
                      "input": s.input_model.model_json_schema()} for s in specs.values()], out)
        return EXIT_OK
    for spec in sorted(specs.values(), key=lambda s: s.name):
        fields = ", ".join(spec.input_model.model_fields)
        out.write(f"{spec.name:<18} {spec.description}\n{'':<18} input: {fields}\n")
    return EXIT_OK


async def _cmd_agents(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .runtime import Runtime

    async with Runtime.open(_settings(args), agents=[]) as rt:
        agents = await rt.registry.discover(include_offline=args.all)
    if args.json:
        _print_json([a.to_dict() for a in agents], out)
        return EXIT_OK
    if not agents:
        out.write("no live agents; start some with `orchestrator worker --agents docs`\n")
        return EXIT_OK
    out.write(f"{'AGENT ID':<48} {'TYPE':<14} {'STATUS':<9} HEARTBEAT\n")
    for a in agents:
        status = a.status if a.live else "offline"
        out.write(f"{a.agent_id:<48} {a.agent_type:<14} {status:<9} "
                  f"{a.heartbeat_at:%H:%M:%S}\n")
    return EXIT_OK


async def _cmd_worker(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .agent import load_agents
    from .metrics import start_metrics_server
    from .runtime import Runtime

    names = [n.strip() for n in args.agents.split(",") if n.strip()]
    agents = load_agents(names)
    overrides: dict[str, Any] = {}
    if args.min_concurrency:
        overrides["worker_min_concurrency"] = args.min_concurrency
    if args.max_concurrency:
        overrides["worker_max_concurrency"] = args.max_concurrency
    settings = Settings.from_env(**overrides)
    if args.metrics_port:
        start_metrics_server(args.metrics_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Runtime.open(settings, agents=agents) as rt:
        assert rt.worker is not None
        err.write(f"worker {rt.worker.name} hosting {', '.join(names)}; stop with SIGTERM\n")
        err.flush()
        await stop.wait()
        err.write("stopping: finishing in-flight requests\n")
        err.flush()
    return EXIT_OK


async def _cmd_locks(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .runtime import Runtime

    async with Runtime.open(_settings(args), agents=[]) as rt:
        locks = await rt.locks.list_locks(include_free=args.all)
    if args.json:
        _print_json([lock.to_dict() for lock in locks], out)
        return EXIT_OK
    if not locks:
        out.write("no locks held\n")
        return EXIT_OK
    out.write(f"{'RESOURCE':<40} {'HOLDER':<40} {'TOKEN':>6} EXPIRES\n")
    for lock in locks:
        expires = f"{lock.expires_at:%H:%M:%S}" if lock.expires_at else "-"
        out.write(f"{lock.resource:<40} {(lock.holder or '-'):<40} {lock.token:>6} {expires}\n")
    return EXIT_OK


async def _dead_letter_ids(bus: Any, agent_type: str, wanted: list[str]) -> list[str]:
    """``wanted`` (all of ``agent_type``'s dead letters when empty), each checked to exist.

    Raises:
        UsageError: naming the ids that are not dead letters of ``agent_type``.
    """
    present = [d["id"] for d in await bus.dead_letters(agent_type, 100_000)]
    if not wanted:
        return present
    unknown = [i for i in wanted if i not in set(present)]
    if unknown:
        raise UsageError(f"no dead letter {', '.join(unknown)} for agent type {agent_type!r}; "
                         f"`orchestrator dlq ls --agent {agent_type}` lists them")
    return list(dict.fromkeys(wanted))


async def _cmd_dlq(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .bus import DecodeFailure
    from .runtime import Runtime

    if args.dlq_command is None:
        raise UsageError("usage: orchestrator dlq ls|show|replay|purge")
    async with Runtime.open(_settings(args), agents=[]) as rt:
        bus = rt.bus
        if args.dlq_command == "ls":
            types = [args.agent] if args.agent else await bus.dead_letter_types()
            letters = [d for t in types for d in await bus.dead_letters(t, 1000)]
            if args.json:
                _print_json(letters, out)
            elif not letters:
                out.write("no dead letters\n")
            for d in letters if not args.json else []:
                out.write(f"{d['agent_type']:<14} {d['id']:<18} x{d['deliveries']} {d['reason']}\n")
            return EXIT_OK
        if args.dlq_command == "show":
            found = [d for d in await bus.dead_letters(args.agent, 100_000) if d["id"] == args.id]
            if not found:
                raise UsageError(f"no dead letter {args.id} for agent type {args.agent!r}; "
                                 "`orchestrator dlq ls` lists them")
            _print_json(found[0], out)
            return EXIT_OK
        if args.dlq_command == "replay":
            ids = await _dead_letter_ids(bus, args.agent, args.ids)
            if not ids:
                out.write(f"no dead letters for agent type {args.agent!r}: nothing queued\n")
                return EXIT_OK
            queued, failed = 0, 0
            for entry_id in ids:
                try:
                    request = await bus.replay_dead_letter(args.agent, entry_id)
                except (KeyError, DecodeFailure) as exc:
                    failed += 1
                    err.write(f"cannot replay {entry_id}: {exc}; purge it instead\n")
                    continue
                queued += 1
                out.write(f"replayed {entry_id} as request {request.request_id} "
                          f"({request.target}.{request.request_type}, attempt {request.attempt})\n")
            out.write(f"queued {queued} of {len(ids)} dead letter(s) for {args.agent!r} again\n")
            return EXIT_FAILED if failed else EXIT_OK
        if args.dlq_command == "purge":
            ids = await _dead_letter_ids(bus, args.agent, args.ids) if args.ids else None
            n = await bus.purge_dead_letters(args.agent, ids)
            out.write(f"purged {n} dead letter(s)\n")
            return EXIT_OK
    raise UsageError("usage: orchestrator dlq ls|show|replay|purge")


async def _cmd_analyze(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    import time

    from .agent import load_agents

    if not await asyncio.to_thread(Path(args.path).is_dir):
        raise UsageError(f"{args.path} is not a folder; give the path of a repository")
    (planner,) = load_agents(["planner"])
    started = time.perf_counter()
    result = await planner.call_locally("analyze_repository", {"repo": str(args.path)})
    seconds = time.perf_counter() - started
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
        return EXIT_OK
    out.write(f"{result['root']}: {len(result['files'])} files, {len(result['edges'])} import "
              f"edges ({seconds:.2f}s)\n\nedges (importer -> imported):\n")
    for importer, imported in result["edges"]:
        out.write(f"  {importer} -> {imported}\n")
    out.write(f"\ncycles: {len(result['cycles'])}\n")
    for cycle in result["cycles"]:
        out.write(f"  {' -> '.join([*cycle, cycle[0]])}\n")
    out.write(f"\nbatches: {len(result['batches'])}\n")
    for number, batch in enumerate(result["batches"]):
        out.write(f"  {number}: {' '.join(batch)}\n")
    path = result["critical_path"]
    out.write(f"\ncritical path ({len(path['files'])} files, weight {path['weight']:g}):\n  "
              + " -> ".join(path["files"]) + "\n")
    for importer, specifiers in sorted((result.get("unresolved") or {}).items()):
        err.write(f"unresolved in {importer}: {', '.join(specifiers)}\n")
    return EXIT_OK


async def _cmd_db(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    if args.db_command != "migrate":
        raise UsageError("usage: orchestrator db migrate")
    from orchestrator.state.migrations import migrate

    from .runtime import Runtime

    async with Runtime.open(_settings(args), agents=[]) as rt:
        applied = await migrate(rt.db)  # Runtime.open applied them already on first use
        rows = await rt.db.fetch("SELECT version, name FROM orchestrator_migrations ORDER BY 1")
    out.write(f"schema at version {rows[-1]['version'] if rows else 0} "
              f"({len(rows)} migrations applied; {len(applied)} by this run)\n")
    return EXIT_OK


async def _cmd_services(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .embedded import embedded_status, embedded_users, stop_embedded

    settings = _settings(args)
    if args.services_command == "stop":
        users = await asyncio.to_thread(embedded_users, settings.data_dir)
        listed = "".join(f"\n  pid {pid}: {command}" for pid, command in users)
        if users and not args.force:
            err.write(f"orchestrator: the embedded services of {settings.data_dir} are in use "
                      f"by {len(users)} live process(es):{listed}\nstop those first, or stop "
                      "the services under them with `orchestrator services stop --force`\n")
            return EXIT_FAILED
        stopped = await asyncio.to_thread(stop_embedded, settings.data_dir)
        if not stopped:
            out.write("nothing was running\n")
        elif users:
            out.write(f"stopped, under {len(users)} live process(es) that used them (their "
                      f"database and Redis calls fail from now on):{listed}\n")
        else:
            out.write("stopped\n")
        return EXIT_OK
    if args.services_command == "status":
        _print_json(embedded_status(settings.data_dir), out)
        return EXIT_OK
    raise UsageError("usage: orchestrator services status|stop")


# the commands that open the services (and so create a data dir when they are embedded)
_USES_SERVICES = {"run", "resume", "recover", "ls", "show", "agents", "worker", "locks", "dlq",
                  "db"}

_COMMANDS = {
    "run": _cmd_run, "resume": _cmd_resume, "recover": _cmd_recover, "ls": _cmd_ls,
    "show": _cmd_show, "graphs": _cmd_graphs, "agents": _cmd_agents, "worker": _cmd_worker,
    "locks": _cmd_locks, "dlq": _cmd_dlq, "db": _cmd_db, "services": _cmd_services,
    "analyze": _cmd_analyze,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Entry point of the ``orchestrator`` command; returns the exit code."""
    out, err, inp = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(out)
        return EXIT_USAGE
    handler = _LogHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)])
    try:
        if args.command in _USES_SERVICES:
            _announce_new_data_dir(err)
        return asyncio.run(_COMMANDS[args.command](args, out, err, inp))
    except (UsageError, InvalidInput) as exc:
        err.write(f"orchestrator: error: {exc}\n")
        return EXIT_USAGE
    except OrchestratorError as exc:
        err.write(f"orchestrator: {exc.code}: {exc}\n")
        return EXIT_USAGE if exc.code == ErrorCode.WORKFLOW_NOT_FOUND else EXIT_FAILED
    except KeyboardInterrupt:
        if not getattr(args, "interrupt_reported", False):
            err.write("interrupted; `orchestrator recover` continues running workflows\n")
        return 130
    except Exception as exc:
        if args.verbose:
            log.exception("command failed")
        err.write(f"orchestrator: {type(exc).__name__}: {exc}\n  ({_hint(exc)})\n")
        return EXIT_FAILED
    finally:
        root.removeHandler(handler)  # main() may run again in one process (tests, embedding)
        root.setLevel(saved_level)


def _announce_new_data_dir(err: TextIO) -> None:
    """One line on stderr when this command is about to create a data dir: a command run
    from the wrong folder should not start a second, empty set of services unnoticed."""
    settings = Settings.from_env()
    embedded = settings.database_url is None or settings.redis_url is None
    if embedded and not settings.data_dir.exists():
        err.write(f"orchestrator: creating a new data dir {settings.data_dir.absolute()} "
                  "(no .orchestrator folder here or above; set ORCHESTRATOR_DATA_DIR to "
                  "use another)\n")
        err.flush()


def _hint(exc: BaseException) -> str:
    """What to check after an unexpected error: the services only when they are the cause."""
    import psycopg
    import redis

    from .embedded import EmbeddedServiceError

    if isinstance(exc, psycopg.OperationalError | redis.ConnectionError | redis.TimeoutError
                  | ConnectionError | EmbeddedServiceError):
        return "check ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL; -v for details"
    return "an unexpected error; -v shows where it happened"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

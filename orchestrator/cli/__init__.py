"""``orchestrator``: run, resume and inspect workflows; host agents; manage the database.

Exit codes: 0 completed (or success), 3 interrupted (waiting for ``resume``), 1 failed,
2 bad usage or bad input, 4 completed but partial (the result's status is ``partial``: a
plan finished with tasks skipped), 130 stopped by Ctrl-C (the workflow stays resumable).

One module per command family (``run``, ``inspect``, ``agents``, ``analyze``, ``services``);
each imports what its commands need when they run, so a command that needs no graph never
imports LangGraph.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from ..errors import ErrorCode, InvalidInput, OrchestratorError
from ..settings import Settings
from .agents import cmd_agents, cmd_dlq, cmd_locks, cmd_worker
from .analyze import cmd_analyze
from .costs import cmd_costs
from .estimate import cmd_estimate
from .exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    UsageError,
)
from .inspect import cmd_graphs, cmd_ls, cmd_show
from .learn import cmd_learn
from .maintenance import cmd_prune, cmd_restore
from .parser import build_parser
from .plan import cmd_plan
from .progress import LogHandler
from .remote import cmd_audit, cmd_cancel, cmd_token, remote_command
from .run import cmd_recover, cmd_resume, cmd_run
from .serve import cmd_serve
from .services import cmd_db, cmd_services

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_PARTIAL"]

log = logging.getLogger(__name__)

_USES_SERVICES = {"prune", "restore",
                  "run", "resume", "recover", "ls", "show", "agents", "worker", "locks", "dlq",
                  "db", "serve", "cancel", "token", "audit", "costs", "learn"}

_COMMANDS = {
    "prune": cmd_prune, "restore": cmd_restore,
    "run": cmd_run, "resume": cmd_resume, "recover": cmd_recover, "ls": cmd_ls,
    "show": cmd_show, "graphs": cmd_graphs, "agents": cmd_agents, "worker": cmd_worker,
    "locks": cmd_locks, "dlq": cmd_dlq, "db": cmd_db, "services": cmd_services,
    "analyze": cmd_analyze, "serve": cmd_serve, "plan": cmd_plan, "estimate": cmd_estimate,
    "cancel": cmd_cancel, "token": cmd_token, "audit": cmd_audit, "costs": cmd_costs,
    "learn": cmd_learn,
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(out)
        return EXIT_USAGE
    handler = LogHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)])
    try:
        remote = remote_command(args)  # --server / ORCHESTRATOR_SERVER: sent to the server
        if remote is None and args.command in _USES_SERVICES:
            _announce_new_data_dir(err)
        return asyncio.run((remote or _COMMANDS[args.command])(args, out, err, inp))
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

    from ..embedded import EmbeddedServiceError

    if isinstance(exc, psycopg.OperationalError | redis.ConnectionError | redis.TimeoutError
                  | ConnectionError | EmbeddedServiceError):
        return "check ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL; -v for details"
    return "an unexpected error; -v shows where it happened"

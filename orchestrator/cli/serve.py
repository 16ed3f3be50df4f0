"""``orchestrator serve``: the service (runners, sweeper, HTTP API) until SIGTERM."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TextIO

from ..settings import Settings
from .exits import EXIT_OK, UsageError


async def cmd_serve(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..service.server import serve

    # agents stay on the bus, in `orchestrator worker` processes, unless asked for here
    settings = Settings.from_env(local_agents=args.local_agents)
    hooks = Path(args.hooks) if args.hooks else None
    if hooks is not None and not hooks.is_file():
        raise UsageError(f"--hooks {args.hooks}: no such file")
    # a service's log is its progress: one line per claimed and finished run, without -v
    service_log = logging.getLogger("orchestrator.service")
    saved = service_log.level
    if not args.verbose:
        service_log.setLevel(logging.INFO)
    try:
        await serve(settings, host=args.host, port=args.port, concurrency=args.concurrency,
                    hooks_file=hooks, err=err)
    finally:
        service_log.setLevel(saved)  # main() may run again in this process (tests)
    return EXIT_OK

"""The services under the runtime: ``orchestrator db migrate`` and ``services status|stop``."""

from __future__ import annotations

import argparse
import asyncio
from typing import TextIO

from .exits import EXIT_FAILED, EXIT_OK, UsageError
from .output import print_json
from .parser import settings_for


async def cmd_db(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    if args.db_command != "migrate":
        raise UsageError("usage: orchestrator db migrate")
    from orchestrator.state.migrations import migrate

    from ..runtime import Runtime

    async with Runtime.open(settings_for(args), agents=[]) as rt:
        applied = await migrate(rt.db)  # Runtime.open applied them already on first use
        rows = await rt.db.fetch("SELECT version, name FROM orchestrator_migrations ORDER BY 1")
    out.write(f"schema at version {rows[-1]['version'] if rows else 0} "
              f"({len(rows)} migrations applied; {len(applied)} by this run)\n")
    return EXIT_OK


async def cmd_services(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..embedded import embedded_status, embedded_users, stop_embedded

    settings = settings_for(args)
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
        print_json(embedded_status(settings.data_dir), out)
        return EXIT_OK
    raise UsageError("usage: orchestrator services status|stop")

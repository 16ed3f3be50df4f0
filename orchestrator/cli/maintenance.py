"""Looking after stored workflows: ``orchestrator prune`` (checkpoint retention) and
``orchestrator restore`` (back to a named checkpoint). Both change state directly, so both are
written to the audit trail."""

from __future__ import annotations

import argparse
from typing import TextIO

from .exits import EXIT_OK
from .output import print_json
from .parser import settings_for


async def cmd_prune(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..runtime import Runtime
    from ..service import audit
    from ..service.retention import Retention

    settings = settings_for(args)
    async with Runtime.open(settings, agents=[]) as rt:
        report = await Retention(rt.db, settings).run(dry_run=args.dry_run)
        if not args.dry_run:
            await audit.record(rt.db, actor=audit.cli_actor(), action="checkpoints.prune",
                               target=settings.namespace, detail=report.to_dict(),
                               source=audit.cli_source(), namespace=settings.namespace)
    if args.json:
        print_json(report.to_dict(), out)
        return EXIT_OK
    verb = "would delete (dry run: nothing was changed)" if args.dry_run else "deleted"
    out.write(f"retention policy of namespace {settings.namespace}: {verb}\n")
    if not report.tallies:
        out.write("  no status has a retention rule (ORCHESTRATOR_RETENTION_POLICY)\n")
        return EXIT_OK
    out.write(f"  {'STATUS':<10} {'ACTION':<12} {'OLDER THAN':>10} {'THREADS':>8} "
              f"{'CHECKPOINTS':>11} {'SKIPPED':>7}\n")
    for t in report.tallies:
        out.write(f"  {t.status:<10} {t.action:<12} {t.older_than_days:>5g} days "
                  f"{t.threads:>8} {t.checkpoints:>11} {t.skipped:>7}\n")
    out.write(f"  total: {report.checkpoints} checkpoints of {report.threads} threads "
              f"({report.seconds:.1f} s)\n")
    return EXIT_OK


async def cmd_restore(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..facade import Orchestrator
    from ..service import audit

    settings = settings_for(args)
    async with Orchestrator(settings, agents=[]) as orch:
        checkpoint_id = await orch.restore_checkpoint(args.thread_id, args.name)
        await audit.record(orch.runtime.db, actor=audit.cli_actor(), action="checkpoint.restore",
                           target=args.thread_id,
                           detail={"name": args.name, "checkpoint_id": checkpoint_id},
                           source=audit.cli_source(), namespace=settings.namespace)
        details = await orch.get(args.thread_id)
    if args.json:
        print_json({"thread_id": args.thread_id, "name": args.name,
                    "checkpoint_id": checkpoint_id, "status": details.record.status,
                    "next": details.next}, out)
        return EXIT_OK
    out.write(f"restored workflow {args.thread_id} to checkpoint {args.name!r} "
              f"({checkpoint_id})\nstatus: {details.record.status}, next: "
              f"{', '.join(details.next) or '-'}\n"
              f"continue it with: orchestrator resume {args.thread_id}\n")
    return EXIT_OK

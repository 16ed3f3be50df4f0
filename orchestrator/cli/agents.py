"""The agent side: ``orchestrator agents``, ``worker``, ``locks`` and ``dlq`` (dead letters)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any, TextIO

from ..settings import Settings
from .exits import EXIT_FAILED, EXIT_OK, UsageError
from .output import print_json
from .parser import settings_for


async def cmd_agents(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..runtime import Runtime

    async with Runtime.open(settings_for(args), agents=[]) as rt:
        agents = await rt.registry.discover(include_offline=args.all)
    if args.json:
        print_json([a.to_dict() for a in agents], out)
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


async def cmd_worker(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..agent import load_agents
    from ..metrics import start_metrics_server
    from ..runtime import Runtime

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


async def cmd_locks(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..runtime import Runtime

    async with Runtime.open(settings_for(args), agents=[]) as rt:
        locks = await rt.locks.list_locks(include_free=args.all)
    if args.json:
        print_json([lock.to_dict() for lock in locks], out)
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


async def cmd_dlq(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..bus import DecodeFailure
    from ..runtime import Runtime

    if args.dlq_command is None:
        raise UsageError("usage: orchestrator dlq ls|show|replay|purge")
    async with Runtime.open(settings_for(args), agents=[]) as rt:
        bus = rt.bus
        if args.dlq_command == "ls":
            types = [args.agent] if args.agent else await bus.dead_letter_types()
            letters = [d for t in types for d in await bus.dead_letters(t, 1000)]
            if args.json:
                print_json(letters, out)
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
            print_json(found[0], out)
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

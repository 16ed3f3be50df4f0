"""``orchestrator analyze``: the planner's import-dependency analysis of a repository, in this
process."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TextIO

from .exits import EXIT_OK, UsageError


async def cmd_analyze(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    import time

    from ..agent import load_agents

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

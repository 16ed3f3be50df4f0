"""``orchestrator analyze``: the planner's import-dependency analysis of a repository, in this
process.

``--json`` prints :meth:`DependencyGraph.to_dict` as the planner answers it (keys and their
order are stable; ``unresolved`` is ``{importer: {specifier: reason}}``); without it, a text
report on stdout and the unresolved imports on stderr."""

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
    _write_unresolved(result.get("unresolved") or {}, err)
    return EXIT_OK


def _write_unresolved(unresolved: dict[str, dict[str, str]], err: TextIO) -> None:
    """On stderr: each file's imports naming nothing in the repository, with the reason
    (``not_found``, ``outside_repository``, ``computed``), then one line for the packages
    not in the repository (npm / PyPI dependencies) with how many files import each."""
    packages: dict[str, set[str]] = {}
    for importer, specifiers in sorted(unresolved.items()):
        shown = []
        for specifier, reason in specifiers.items():
            if reason == "package":
                packages.setdefault(_package_name(importer, specifier), set()).add(importer)
            else:
                shown.append(f"{specifier} ({reason})")
        if shown:
            err.write(f"unresolved in {importer}: {', '.join(shown)}\n")
    if packages:
        named = ", ".join(f"{name} ({len(files)})" for name, files in sorted(packages.items()))
        err.write(f"packages not in the repository (importing files): {named}\n")


def _package_name(importer: str, specifier: str) -> str:
    if importer.endswith(".py"):
        return specifier.split(".", 1)[0]
    parts = specifier.split("/")
    return "/".join(parts[:2 if specifier.startswith("@") else 1])

"""Run every benchmark: ``python -m bench [--quick] [--only NAME ...] [--json FILE]``.

Each benchmark prints its figures beside the baseline measured in the same run and the ratio;
at the end a table sums up every target, and one JSON document holds all results (on stdout,
or in ``--json FILE``). Uses ``ORCHESTRATOR_DATABASE_URL`` / ``ORCHESTRATOR_REDIS_URL`` (the
embedded services when unset). ``--quick`` is a short smoke run (CI runs it; it never fails on
a figure, only on a benchmark that crashes).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
import traceback

from .common import Result, print_result

MODULES = ("bus", "locks", "workflows", "depgraph", "cruiser", "apidocs", "prune", "fencing", "service", "browser", "console", "sse", "llm", "growth", "peers")


async def _run(names: list[str], quick: bool) -> tuple[list[Result], list[str]]:
    results: list[Result] = []
    crashed: list[str] = []
    for name in names:
        print(f"\n## bench.{name}{' (quick)' if quick else ''}", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            found = await module.run(quick=quick)
        except Exception:
            traceback.print_exc()
            crashed.append(name)
            continue
        for result in found:
            print_result(result)
        results.extend(found)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    return results, crashed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only", nargs="+", choices=MODULES, metavar="NAME",
                        help=f"run only these ({', '.join(MODULES)})")
    parser.add_argument("--json", metavar="FILE", help="write the JSON summary to FILE")
    args = parser.parse_args()
    results, crashed = asyncio.run(_run(list(args.only or MODULES), args.quick))
    print("\n## summary")
    width = max((len(r.benchmark) for r in results), default=10)
    for r in results:
        verdict = {True: "met", False: "NOT MET", None: "-"}[r.met]
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        print(f"  {r.benchmark:<{width}}  {verdict:<7}  {ratio:>8}  {r.target}")
    for name in crashed:
        print(f"  bench.{name} CRASHED (traceback above)")
    document = {"quick": args.quick, "results": [r.to_dict() for r in results],
                "crashed": crashed}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2)
        print(f"\nJSON summary written to {args.json}")
    else:
        print(json.dumps(document))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``orchestrator analyze`` against dependency-cruiser on real TypeScript / JavaScript projects.

Each project is an npm package whose tarball ships its TypeScript sources (``src/``): the
tarball is fetched once with ``npm pack`` into the cache folder
(``$ORCHESTRATOR_BENCH_CACHE``, default ``~/.cache/orchestrator-bench/npm``) and unpacked; the
work copy holds its ``package.json``, its top-level ``tsconfig*.json`` and ``src/`` (not the
built ``dist/``). Both tools analyze that copy in the same run; the figures are the files, each
tool's internal edge count, the edges in both / only ours / only theirs (the first few of
each), and each tool's wall time with the ratio ours / theirs. dependency-cruiser runs from
``tests/js`` (``tests/support/cruiser.py``); its time includes starting node.

    python -m bench.cruiser [--quick] [--project NAME@VERSION ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from orchestrator.agents.lib.depgraph import analyze

from tests.support.cruiser import cruise, ensure_tools, node_missing

from .common import Result, print_result

__all__ = ["run", "PROJECTS"]

# npm packages whose tarballs include their TypeScript sources under src/
PROJECTS = ("rxjs@7.8.2", "zod@3.25.76", "effect@3.22.4")
QUICK_PROJECTS = ("rxjs@7.8.2",)
SHOWN = 8  # first few edges of each difference


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "orchestrator-bench" / "npm"
    return Path(os.environ.get("ORCHESTRATOR_BENCH_CACHE", default))


def fetch(spec: str) -> Path:
    """The unpacked package folder of ``spec`` (name@version), downloaded once."""
    folder = cache_dir() / spec.replace("/", "+")
    package = folder / "package"
    if (package / "package.json").is_file():
        return package
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(folder)],
                          capture_output=True, text=True, timeout=300, check=True)
    tarball = folder / json.loads(done.stdout)[0]["filename"].replace("/", "-").lstrip("@")
    if not tarball.is_file():  # scoped names: npm writes scope-name-version.tgz
        tarball = next(folder.glob("*.tgz"))
    with tarfile.open(tarball) as archive:
        archive.extractall(folder, filter="data")
    return package


def _work_copy(package: Path, into: Path) -> Path:
    into.mkdir()
    for config in ("package.json", *sorted(p.name for p in package.glob("tsconfig*.json"))):
        shutil.copy2(package / config, into / config)
    shutil.copytree(package / "src", into / "src", symlinks=True)
    return into


def _project(spec: str) -> Result:
    name = f"dependency_analysis_vs_cruiser[{spec}]"
    target = "the same internal edges as dependency-cruiser; time ratio ours/theirs reported"
    package = fetch(spec)
    with tempfile.TemporaryDirectory(prefix="bench-cruiser-") as tmp:
        root = _work_copy(package, Path(tmp) / "project")
        started = time.perf_counter()
        ours = analyze(root)
        ours_s = time.perf_counter() - started
        theirs = cruise(root, targets=["src"])
    our_edges = {(a, b) for a, b in ours.edges if a.startswith("src/")}
    both = our_edges & theirs.edges
    only_ours, only_theirs = sorted(our_edges - theirs.edges), sorted(theirs.edges - our_edges)
    return Result(
        name, target, not only_ours and not only_theirs,
        {"project": spec, "files_ours": len(ours.files), "files_theirs": len(theirs.files),
         "edges_ours": len(our_edges), "edges_theirs": len(theirs.edges), "both": len(both),
         "only_ours": len(only_ours), "only_theirs": len(only_theirs),
         "only_ours_first": only_ours[:SHOWN], "only_theirs_first": only_theirs[:SHOWN],
         "unresolved_ours": sum(len(v) for v in ours.unresolved.values()),
         "unresolved_theirs": len(theirs.unresolved), "ours_s": round(ours_s, 3)},
        baseline={"cruiser_s": round(theirs.seconds, 3)},
        ratio=round(ours_s / theirs.seconds, 3),
    )


def _all(projects: tuple[str, ...]) -> list[Result]:
    reason = node_missing()
    if reason is not None:
        return [Result("dependency_analysis_vs_cruiser", "the same edges as dependency-cruiser",
                       None, notes=reason)]
    ensure_tools()
    return [_project(spec) for spec in projects]


async def run(quick: bool = False, projects: tuple[str, ...] | None = None) -> list[Result]:
    chosen = projects or (QUICK_PROJECTS if quick else PROJECTS)
    return await asyncio.to_thread(_all, tuple(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description="orchestrator analyze vs dependency-cruiser")
    parser.add_argument("--quick", action="store_true", help="one project only")
    parser.add_argument("--project", nargs="+", metavar="NAME@VERSION",
                        help=f"npm packages shipping src/ (default: {' '.join(PROJECTS)})")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick, tuple(args.project) if args.project else None))
    for result in results:
        print_result(result)
    print(json.dumps([r.to_dict() for r in results]))


if __name__ == "__main__":
    main()

"""Dependency-analysis benchmarks.

* ``dependency_analysis_10k``: a generated 10,000-file Python repository (100 packages of 100
  modules, ~5 imports each: absolute, relative and ``from package import module``); the
  median time of ``analyze()`` over a few runs. Target: ≤ 3 s (there is no baseline).
* ``dependency_analysis_vs_grimp``: an installed package (``--package``, default ``pydantic``)
  analyzed by us and by ``grimp`` (the import-graph library, ``pip install -e ".[bench]"``) in
  the same run: the edges must be the same; the time ratio is reported.

    python -m bench.depgraph [--quick] [--package NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.agents.lib.depgraph import analyze

from .common import Result, print_result

__all__ = ["run", "generate"]


def generate(root: Path, packages: int, modules: int, seed: int = 7) -> int:
    """Write the repository under ``root``; returns the number of files."""
    rng = random.Random(seed)
    count = 0
    for p in range(packages):
        pkg = root / "proj" / f"pkg{p}"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f'"""Package {p}."""\n')
        count += 1
        for m in range(modules):
            lines = [f'"""Module {m} of package {p}."""', "import os", ""]
            if m:
                lines.append(f"from . import mod{rng.randrange(m)}")
                lines.append(f"from .mod{rng.randrange(m)} import value as v{m}")
            if p:
                lines.append(f"import proj.pkg{rng.randrange(p)}.mod{rng.randrange(modules)}")
                lines.append(f"from proj.pkg{rng.randrange(p)} import mod{rng.randrange(modules)}")
            lines += ["", "", "def value():", f"    return {m}", "", "",
                      "class Thing:", "    def run(self):", "        return os.getcwd()", ""]
            lines += [f"# filler line {i}" for i in range(16)]
            (pkg / f"mod{m}.py").write_text("\n".join(lines) + "\n")
            count += 1
    (root / "proj" / "__init__.py").write_text("")
    return count + 1


def _generated(quick: bool) -> Result:
    packages, modules, runs = (20, 50, 2) if quick else (100, 100, 3)
    with tempfile.TemporaryDirectory(prefix="bench-depgraph-") as tmp:
        files = generate(Path(tmp), packages, modules)
        times, edges = [], 0
        for _ in range(runs):
            started = time.perf_counter()
            graph = analyze(tmp)
            times.append(time.perf_counter() - started)
            edges = len(graph.edges)
    median = statistics.median(times)
    met = median <= 3.0 if files >= 10_000 else None
    return Result("dependency_analysis_10k", "≤ 3 s for 10,000 files", met,
                  {"files": files, "edges": edges, "runs_s": [round(t, 3) for t in times],
                   "median_s": round(median, 3)},
                  notes="" if files >= 10_000 else "quick run: too small to judge the target")


def _module(path: str) -> str:
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _versus_grimp(package: str) -> Result:
    target = "the same edges as grimp; time ratio reported"
    try:
        import grimp
    except ImportError:
        return Result("dependency_analysis_vs_grimp", target, None,
                      notes='grimp is not installed: pip install -e ".[bench]"')
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return Result("dependency_analysis_vs_grimp", target, None,
                      notes=f"{package} is not an installed package")
    folder = Path(next(iter(spec.submodule_search_locations)))
    with tempfile.TemporaryDirectory(prefix="bench-grimp-") as tmp:
        # the package alone (its site-packages holds everything else), copied untimed
        shutil.copytree(folder, Path(tmp) / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
        started = time.perf_counter()
        ours = analyze(tmp)
        ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = grimp.build_graph(package, cache_dir=None)
    grimp_s = time.perf_counter() - started
    prefix = f"{package}/"
    our_edges = {(_module(a), _module(b)) for a, b in ours.edges
                 if a.startswith(prefix) and b.startswith(prefix)
                 and a.endswith(".py") and b.endswith(".py")}
    their_edges = {(importer, imported) for importer in theirs.modules
                   for imported in theirs.find_modules_directly_imported_by(importer)}
    only_ours, only_theirs = sorted(our_edges - their_edges), sorted(their_edges - our_edges)
    return Result(
        "dependency_analysis_vs_grimp", target, not only_ours and not only_theirs,
        {"package": package, "modules": len(theirs.modules), "edges": len(our_edges),
         "ours_s": round(ours_s, 3), "only_ours": only_ours[:10], "only_grimp": only_theirs[:10]},
        baseline={"grimp_s": round(grimp_s, 3)}, ratio=round(ours_s / grimp_s, 3),
    )


async def run(quick: bool = False, package: str = "pydantic") -> list[Result]:
    results = [await asyncio.to_thread(_generated, quick)]
    results.append(await asyncio.to_thread(_versus_grimp, package))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="dependency-analysis benchmarks")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--package", default="pydantic", help="installed package to compare")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick, args.package))
    for result in results:
        print_result(result)
    print(json.dumps([r.to_dict() for r in results]))


if __name__ == "__main__":
    main()

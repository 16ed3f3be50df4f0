"""Dependency-analysis benchmark: a generated 10,000-file Python repository (100 packages of
100 modules, ~5 imports each: absolute, relative and ``from package import module``).

    python -m bench.depgraph [--packages 100] [--modules 100] [--runs 3]

Prints the analysis time (the median of ``--runs``), edges found, and a JSON summary. There is
no baseline to divide by: the target (issue 6) is an absolute ≤ 3 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from agents.depgraph import analyze


def generate(root: Path, packages: int, modules: int, seed: int = 7) -> int:
    """Write the repository; returns the number of files."""
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
                q = rng.randrange(p)
                lines.append(f"import proj.pkg{q}.mod{rng.randrange(modules)}")
                lines.append(f"from proj.pkg{rng.randrange(p)} import mod{rng.randrange(modules)}")
            lines += ["", "", "def value():", f"    return {m}", "", "",
                      "class Thing:", "    def run(self):", "        return os.getcwd()", ""]
            lines += [f"# filler line {i}" for i in range(16)]
            (pkg / f"mod{m}.py").write_text("\n".join(lines) + "\n")
            count += 1
    (root / "proj" / "__init__.py").write_text("")
    return count + 1


def main() -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=100)
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-depgraph-") as tmp:
        files = generate(Path(tmp), args.packages, args.modules)
        times, edges = [], 0
        for _ in range(args.runs):
            started = time.perf_counter()
            graph = analyze(tmp)
            times.append(time.perf_counter() - started)
            edges = len(graph.edges)
    result = {"benchmark": "dependency_analysis_generated_python", "files": files,
              "edges": edges, "runs_s": [round(t, 3) for t in times],
              "median_s": round(statistics.median(times), 3), "target_s": 3.0}
    print(f"{files} files, {edges} edges: median {result['median_s']:.2f} s over {args.runs} runs "
          f"(target <= 3 s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

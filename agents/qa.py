"""The ``qa`` agent: checks one file of a repository — lint, then the tests that import it.

Its request type (``check``), payload and result are its contract, :mod:`orchestrator.contracts.qa`.

Lint: Python files with ruff (the repository's configuration applies); JavaScript and
TypeScript files are parsed with tree-sitter, and each syntax error is a finding. Tests: the
test files that import the file, directly or through other files (the import graph of
:mod:`orchestrator.agents.lib.depgraph`): Python tests (``test_*.py``, ``*_test.py``) run with ``test_command``
plus ``--`` and their paths; JavaScript tests (``*.test.js``, ``*.spec.mjs``...) with
``node --test --`` when node is installed. TypeScript tests are listed but not run (node cannot
run them unaided). Test commands get the worker's environment without ``ORCHESTRATOR_*``, and
a pytest they start never loads this project's own pytest plugin (``-p no:orchestrator``).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import sys
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.agents.lib.depgraph import DependencyGraph, analyze
from orchestrator.agents.lib.proc import resolve_repo, run
from orchestrator.agents.lib.ruff import ruff_binary, ruff_findings
from orchestrator.agents.lib.testrun import parse_test_counts, test_failures

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.qa import AGENT_TYPE, CHECK, Check, Checked
from orchestrator.errors import AgentErrorCode

__all__ = ["agent", "is_test_file", "syntax_findings", "tests_importing"]

agent = Agent(
    AGENT_TYPE,
    capabilities=["ruff", "pytest", "tree-sitter", "node-test"],
    version="1",
    description="lint and the importing tests for one file",
)

_JS = (".js", ".jsx", ".mjs", ".cjs")
_TS = (".ts", ".tsx")
_OUTPUT_TAIL = 4000


def is_test_file(path: str) -> bool:
    """Whether ``path`` is a test file by the usual naming conventions."""
    name = PurePosixPath(path).name
    if name.endswith((".py",)):
        return name.startswith("test_") or name.endswith("_test.py")
    stem, _, _ = name.rpartition(".")
    return stem.endswith((".test", ".spec"))


def syntax_findings(path: Path, rel: str) -> list[dict[str, Any]]:
    """Syntax errors of a JavaScript or TypeScript file, as findings (tree-sitter)."""
    import tree_sitter_javascript
    import tree_sitter_typescript
    from tree_sitter import Language, Parser

    if path.suffix == ".tsx":
        language = Language(tree_sitter_typescript.language_tsx())
    elif path.suffix == ".ts":
        language = Language(tree_sitter_typescript.language_typescript())
    else:
        language = Language(tree_sitter_javascript.language())
    tree = Parser(language).parse(path.read_bytes())
    findings = []
    stack = [tree.root_node]
    while stack and len(findings) < 50:
        node = stack.pop()
        if node.is_error or node.is_missing:
            line, column = node.start_point
            what = f"missing {node.type}" if node.is_missing else "unexpected syntax"
            findings.append({"file": rel, "line": line + 1, "column": column + 1,
                             "code": "syntax-error", "message": what})
            continue
        if node.has_error:
            stack.extend(reversed(node.children))
    return sorted(findings, key=lambda f: (f["line"], f["column"]))


async def _ruff(repo: Path, rel: str) -> list[dict[str, Any]]:
    done = await run([ruff_binary(), "check", "--output-format", "json", "--no-cache",
                      "--exit-zero", "--", rel], cwd=repo, timeout=120)
    if done.returncode != 0:
        raise HandlerError(AgentErrorCode.RUFF_FAILED, done.stderr.strip() or f"ruff exited {done.returncode}")
    return await asyncio.to_thread(ruff_findings, json.loads(done.stdout or "[]"), repo)


def tests_importing(graph: DependencyGraph, rel: str) -> list[str]:
    """The test files that import ``rel``, directly or through other files, sorted (what QA
    runs for it; the developer's prompt and ``orchestrator estimate`` show the same tests)."""
    tests, seen, queue = [], {rel}, deque([rel])
    while queue:
        for importer in graph.dependents(queue.popleft()):
            if importer not in seen:
                seen.add(importer)
                queue.append(importer)
                if is_test_file(importer):
                    tests.append(importer)
    return sorted(tests)


def _tests_importing(repo: Path, rel: str, not_ready: set[str]) -> tuple[list[str], list[str]]:
    """(tests to run, tests deferred): the test files importing ``rel``, directly or not.

    A test that also imports (directly or not) a file in ``not_ready`` — work still to be
    done, like the rest of a plan — or a repository module that does not exist yet, is
    deferred: it runs when the last of them is checked.
    """
    graph = analyze(repo)
    found = set(tests_importing(graph, rel))
    if is_test_file(rel):
        found.add(rel)
    runnable, deferred = [], []
    for test in sorted(found):
        needs, stack = set(), [test]
        while stack:
            for dep in graph.dependencies(stack.pop()):
                if dep not in needs:
                    needs.add(dep)
                    stack.append(dep)
        # an import of a file that does not exist yet is work not done either
        missing = any("not_found" in graph.unresolved.get(f, {}).values() for f in needs | {test})
        (deferred if missing or needs & not_ready or test in not_ready else runnable).append(test)
    return runnable, deferred


async def _run_tests(repo: Path, tests: list[str], command: str | list[str],
                     timeout: float) -> dict[str, Any]:
    py = [t for t in tests if t.endswith(".py")]
    js = [t for t in tests if t.endswith(_JS)]
    skipped = [t for t in tests if t.endswith(_TS)]
    outputs, passed, counts, ran = [], True, {}, []
    if py:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        # "--" ends the command's options: a test file may be named like one
        done = await run([*argv, *([] if "--" in argv else ["--"]), *py], cwd=repo,
                         timeout=timeout, test_command=True)
        passed &= done.returncode == 0 and not done.timed_out
        counts = parse_test_counts(done.stdout)
        outputs.append(done.stdout + done.stderr)
        ran += py
    node = await asyncio.to_thread(shutil.which, "node")  # PATH lookups touch the disk
    if js and node:
        done = await run([node, "--test", "--", *js], cwd=repo, timeout=timeout,
                         test_command=True)
        passed &= done.returncode == 0 and not done.timed_out
        outputs.append(done.stdout + done.stderr)
        ran += js
    elif js:
        skipped += js
    output = "\n".join(outputs)
    return {"files": tests, "ran": ran, "skipped": skipped, "passed": passed, "counts": counts,
            "failures": test_failures(output)[:50], "output_tail": output[-_OUTPUT_TAIL:]}


@agent.handler(CHECK)
async def check(payload: Check, ctx: RequestContext) -> Checked | dict[str, Any]:
    repo = await resolve_repo(payload.repo)
    rel = payload.file
    path = (repo / rel).resolve()
    if not path.is_relative_to(repo):
        raise HandlerError(AgentErrorCode.UNSAFE_PATH, f"{rel} is outside the repository {repo}")
    if not await asyncio.to_thread(path.is_file):
        return {"passed": False, "reason": f"{rel} does not exist", "findings": [],
                "tests": {"files": [], "ran": [], "skipped": [], "passed": False, "counts": {}}}
    if path.suffix in (".py", ".pyi"):
        findings = await _ruff(repo, rel)
    elif path.suffix in _JS + _TS:
        findings = await asyncio.to_thread(syntax_findings, path, rel)
    else:
        findings = []
    not_ready = set(payload.not_ready) - {rel}
    runnable, deferred = await asyncio.to_thread(_tests_importing, repo, rel, not_ready)
    tests = await _run_tests(repo, runnable, payload.test_command, payload.timeout)
    tests["deferred"] = deferred
    reasons = []
    if findings:
        reasons.append("; ".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}"
                                 for f in findings[:5]))
    if not tests["passed"]:
        reasons.append("tests failed: " + ("; ".join(tests.get("failures", [])[:5])
                                           or "see the output"))
    ctx.log.info("QA of %s: %d findings, %d test files", rel, len(findings), len(tests["ran"]))
    return {"passed": not reasons, "reason": " | ".join(reasons) or None,
            "findings": findings, "tests": tests}

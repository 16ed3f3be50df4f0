"""The benchmark smoke tests' runs: ``python -m ...`` in a subprocess, as a user runs it,
failing with the end of its output when it fails (never judging a figure)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


async def run_module(env: Mapping[str, str], *argv: str,
                     timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m <argv>``, which must exit 0."""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", *argv], env=env, capture_output=True, text=True,
        timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


async def run_quick(env: Mapping[str, str], summary: Path, only: Iterable[str], *,
                    timeout: float) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``python -m bench --quick --json SUMMARY --only ONLY...``: the run and its summary."""
    done = await run_module(env, "bench", "--quick", "--json", str(summary), "--only", *only,
                            timeout=timeout)
    return done, json.loads(await asyncio.to_thread(summary.read_text))


def assert_every_result_reports(document: dict[str, Any]) -> None:
    """Nothing crashed, and every result measured something or said why not."""
    assert document["crashed"] == []
    for result in document["results"]:
        assert result["figures"] or result["notes"], result

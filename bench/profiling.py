"""Where the time goes in a benchmark's processes: ``py-spy record`` attached for one block,
then the top frames of each process (``python -m bench.growth --profile`` uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from orchestrator.tasks import cancel_and_wait

__all__ = ["Profiler"]


class Profiler:
    """``py-spy record`` (raw collapsed stacks, 50 Hz, non-blocking) attached to this process
    and/or to children whose command line contains a pattern, for one block; then the top frames
    of each process: by own samples, and by samples including callees in our code."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) \
            or shutil.which("py-spy")

    @contextlib.asynccontextmanager
    async def record(self, found: list[dict[str, Any]], me: bool = False,
                     children: tuple[str, ...] = ()) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        if self.exe is None:
            found.append({"error": "py-spy not found (pip install -e '.[bench]')"})
            yield
            return
        with tempfile.TemporaryDirectory(prefix="bench-growth-spy-") as tmp:
            spies: dict[int, tuple[str, asyncio.subprocess.Process, Path]] = {}

            async def attach(pid: int, name: str) -> None:
                out = Path(tmp) / f"{pid}.txt"
                spies[pid] = (name, await asyncio.create_subprocess_exec(
                    self.exe, "record", "--pid", str(pid), "--rate", "50", "--nonblocking",
                    "--format", "raw", "--output", str(out),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL), out)

            async def watch() -> None:  # children matching a pattern, as they start
                while True:
                    for child in psutil.Process().children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            line = " ".join(child.cmdline())
                            hit = any(p in line for p in children)
                            if hit and child.pid not in spies and "py-spy" not in line:
                                await attach(child.pid, " ".join(child.cmdline()[1:4]))
                    await asyncio.sleep(0.5)

            if me:
                await attach(os.getpid(), "this process (python -m bench.growth)")
            watcher = asyncio.create_task(watch()) if children else None
            try:
                yield
            finally:
                if watcher:
                    await cancel_and_wait(watcher)
                for name, proc, out in spies.values():
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGINT)
                    try:
                        await asyncio.wait_for(proc.wait(), 30)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
                    found.append(_summarize(name, out))
        found.sort(key=lambda p: -p.get("samples", 0))


def _frame(text: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``: frames summed per function."""
    head, sep, where = text.rpartition(" (")
    if not sep:
        return text
    return f"{head} ({where.rstrip(')').rsplit(':', 1)[0]})"


#: leaf frames of an event loop waiting for I/O (the non-blocking sampler cannot tell idle
#: threads apart): counted apart, not as work; and the entry points every stack shares
_WAITING = {"EpollSelector.select (selectors.py)", "_worker (concurrent/futures/thread.py)"}
_OUTER = {"<module>", "main"}


def _summarize(name: str, path: Path, top: int = 8) -> dict[str, Any]:
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = waiting = 0
    if not path.exists():
        return {"process": name, "samples": 0, "error": "py-spy wrote nothing"}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        if frames[-1] in _WAITING:
            waiting += n
            continue
        own[frames[-1]] += n
        for f in set(frames):
            if ("(orchestrator/" in f or "(bench/" in f) and f.split(" (")[0] not in _OUTER:
                ours[f] += n

    def share(counter: Counter[str]) -> list[str]:
        return [f"{100 * n / total:.1f}% {f}" for f, n in counter.most_common(top)]

    return {"process": name, "samples": total,
            "waiting_in_select": round(waiting / total, 3) if total else None,
            "top_own": share(own) if total else [],
            "top_ours_inclusive": share(ours) if total else []}

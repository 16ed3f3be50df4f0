"""Chaos: a lock holder killed with SIGKILL loses its lock at the TTL, and its late write is
refused (fencing token)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from orchestrator.contracts.docs import output_lock

from .support.docs import tree
from .support.processes import reaping

pytestmark = pytest.mark.slow

_LOCK_HOLDER = textwrap.dedent("""
    import asyncio, sys
    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings

    async def main(resource):
        async with Runtime.open(Settings.from_env(), agents=[]) as rt:
            async with rt.locks.acquire(resource, "doomed-holder", ttl=2.0, wait_timeout=10) as lease:
                print(lease.token, flush=True)
                await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1]))
""")

LOCK_TTL = 2.0


@pytest.mark.timeout(60)
async def test_killed_lock_holder_loses_the_lock_at_ttl_and_its_late_write_is_refused(
    orchestrator_factory, service_env, tmp_path
) -> None:
    orch = await orchestrator_factory()  # hosts the built-in docs agent (the writer)
    rt = orch.runtime
    out = tmp_path / "fenced"
    resource = output_lock(out)
    procs: list[subprocess.Popen[str]] = []
    with reaping(procs):
        holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, resource], env=service_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(holder)
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
        assert line.strip().isdigit(), holder.stderr.read() if holder.poll() is not None else line
        old_token = int(line)
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(holder.wait)
    # the dead holder's lock is not released by anyone: it expires
    assert await rt.locks.is_locked(resource)
    async with rt.locks.acquire(resource, "successor", ttl=30, wait_timeout=10) as lease:
        waited = time.monotonic() - killed_at
        print(f"\nlock of the killed holder (ttl {LOCK_TTL}s, token {old_token}) taken over "
              f"{waited:.2f}s after the kill, new token {lease.token}")
        assert waited <= LOCK_TTL + 0.5
        assert lease.token > old_token

        new_pages = {"p": "# p\nnew holder\n", "p.a": "# p.a\nnew holder\n"}
        accepted = await rt.bus.request(rt.bus.new_reply_stream_request(
            target="docs", request_type="write_docs", fencing={resource: lease.token},
            payload={"output": str(out), "package": "p", "pages": new_pages}), 10)
        assert accepted.status == "success", accepted.error
        written = tree(out)
        assert sorted(written) == ["index.md", "p.a.md", "p.md"]

        # the killed holder's late write arrives now, with its old token
        stale = await rt.bus.request(rt.bus.new_reply_stream_request(
            target="docs", request_type="write_docs", fencing={resource: old_token},
            payload={"output": str(out), "package": "p",
                     "pages": {"p": "# p\nSTALE\n", "p.a": "# p.a\nSTALE\n",
                               "p.stale": "# p.stale\n"}}), 10)
        assert stale.status == "error" and stale.error is not None
        assert stale.error.code == "stale_fencing_token", stale.error
        assert tree(out) == written  # nothing written by the stale request



"""Owner liveness (workflows, locks, execution claims) across pid namespaces.

A process id proves a pid only within its boot and pid namespace, and only for the process that
started at the recorded time. Processes that share the hostname but not the pid namespace
(host-network containers) must be judged by their lease, never by a pid of this namespace.

The ``foreign`` fixture runs real processes in a new pid namespace (``unshare --pid``), as a
container with host networking would: one whose pid (1) is a live, unrelated process here, and
one whose pid is free here.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import ResourceLocked, WorkflowBusy
from orchestrator.processes import (
    died_on_this_host,
    new_process_id,
    parse_process_id,
    process_alive,
    process_id_of,
)
from orchestrator.runtime import Runtime
from orchestrator.worker import claims as worker

ROOT = Path(__file__).resolve().parents[1]

# In a new pid namespace: print the id of pid 1, then make the next pid ``free`` (a pid no
# process of the test's namespace has) and start a child that prints its id and lives on.
INNER = """
import subprocess, sys, time
from orchestrator.processes import new_process_id
print(new_process_id(), flush=True)
with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
    fh.write(str(int(sys.argv[1]) - 1))
child = subprocess.Popen([sys.executable, "-c",
    "import time; from orchestrator.processes import new_process_id; "
    "print(new_process_id(), flush=True); time.sleep(120)"])
child.wait()
"""


def _free_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    candidates = [p for p in range(pid_max // 2, pid_max) if not Path(f"/proc/{p}").exists()]
    return random.choice(candidates)


@pytest.fixture(scope="module")
def foreign() -> Iterator[tuple[str, str]]:
    """(id of pid 1, id of a live process whose pid is free here), both of another pid
    namespace on this host."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    free = _free_pid()
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", INNER, str(free)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        if not second:
            proc.kill()
            err = proc.communicate(timeout=10)[1]
            if "Operation not permitted" in err:
                pytest.skip(f"cannot create a pid namespace here: {err.strip()}")
            pytest.fail(f"inner processes failed: {err}")
        assert parse_process_id(first).pid == 1
        assert parse_process_id(second).pid == free
        yield first, second
    finally:
        os.killpg(proc.pid, 9)  # the session this fixture started: unshare and its namespace
        proc.communicate(timeout=10)


def test_an_id_proves_its_process_only_in_its_own_pid_namespace(foreign) -> None:
    pid1, free = foreign
    me = new_process_id()
    assert process_alive(me) is True
    gone = subprocess.Popen(["true"])
    gone_id = process_id_of(gone.pid)  # read before it is reaped
    gone.wait()
    assert process_alive(gone_id) is False and died_on_this_host(gone_id)

    # another pid namespace: pid 1 here is init, the free pid is nobody; neither decides
    for other in (pid1, free):
        assert process_alive(other) is None
        assert not died_on_this_host(other)
        assert not worker._owner_dead(f"{other}:w:docs@w")

    # this namespace, but the pid now names a process that started at another time
    ref = parse_process_id(me)
    reused = me.replace(f".{ref.start}", f".{ref.start + 1}")
    assert process_alive(reused) is None and not died_on_this_host(reused)
    # another boot, another host, and ids written by older versions: unknown
    for unknown in (me.replace(ref.boot, "0" * 12), "elsewhere" + me[me.index("-"):],
                    f"{ref.host}-{gone.pid}-deadbeef", f"{ref.host}:{gone.pid}:w:docs@w"):
        assert process_alive(unknown) is None and not died_on_this_host(unknown)
    assert not worker._owner_dead(f"{ref.host}:{gone.pid}:w:docs@w")
    assert worker._owner_dead(f"{gone_id}:w:docs@w")
    assert not worker._owner_dead(f"{me}:w:docs@w")


@pytest.fixture
async def rt(orchestrator_settings):
    async with Runtime.open(orchestrator_settings, agents=[]) as runtime:
        yield runtime


async def test_a_lock_of_another_pid_namespace_is_kept_until_its_ttl(rt, foreign) -> None:
    _, free = foreign  # alive in its namespace; its pid is free in ours
    held = await rt.locks.try_acquire("repo:/ns", f"{free}:thread:task", ttl=1.0)
    assert held is not None
    with pytest.raises(ResourceLocked):  # not taken over at once on a pid that is not its own
        async with rt.locks.acquire("repo:/ns", "successor", wait_timeout=0.3):
            pass
    async with rt.locks.acquire("repo:/ns", "successor", wait_timeout=5) as lease:
        assert lease.token == held.token + 1  # taken over once the TTL ran out


async def _age(rt, thread_id: str, seconds: float) -> None:
    await rt.db.execute(
        "UPDATE workflows SET heartbeat_at = now() - make_interval(secs => %s) "
        "WHERE thread_id = %s", (seconds, thread_id))


@pytest.mark.timeout(90)
async def test_a_workflow_of_another_pid_namespace_goes_by_its_lease(
    orchestrator_factory, fixture_package, tmp_path, foreign
) -> None:
    pid1, free = foreign
    orch = await orchestrator_factory(workflow_lease=5.0)
    threads = {}
    for name, owner in (("pid1", pid1), ("free", free)):
        thread_id = f"pidns-{name}-{uuid.uuid4().hex[:8]}"
        data = {"package": str(fixture_package), "output": str(tmp_path / name)}
        await orch.runtime.workflows.create(thread_id, "parallel_docs", data, owner=owner)
        threads[name] = thread_id

    # a fresh lease: its owner is alive as far as anyone here can tell, whatever pid it names
    assert await orch.recover() == []
    with pytest.raises(WorkflowBusy):
        await orch.resume(threads["free"])

    # silent past the lease: taken over (pid 1 here is alive, and must not keep it forever)
    for thread_id in threads.values():
        await _age(orch.runtime, thread_id, 60)
        result = await orch.resume(thread_id)
        assert result.status == "completed", result.error

"""DBOS Transact's side of ``bench.peers``: a workflow of 10 no-op steps (each a checkpointed
``@DBOS.step()`` bumping a counter), run in the benchmark's own process on a system database of
its own on the same PostgreSQL server.
"""

from __future__ import annotations

from typing import Any

from dbos import DBOS

__all__ = ["STEPS", "ten_steps", "launch", "CONFIG"]

STEPS = 10

#: what the bench prints as DBOS's configuration (its defaults, but for the names)
CONFIG: dict[str, Any] = {"sys_db_pool_size": 20, "use_listen_notify": True,
                          "workflow": "async, 10 async @DBOS.step()"}


@DBOS.step()
async def _bump(counter: int) -> int:
    return counter + 1


@DBOS.workflow()
async def ten_steps(label: str) -> int:
    counter = 0
    for _ in range(STEPS):
        counter = await _bump(counter)
    return counter


def launch(system_database_url: str, name: str) -> None:
    """Configure and launch DBOS on ``system_database_url`` (created by DBOS if missing)."""
    DBOS(config={"name": name, "system_database_url": system_database_url,
                 "sys_db_pool_size": CONFIG["sys_db_pool_size"],
                 "log_level": "WARNING"})
    DBOS.launch()


def destroy() -> None:
    DBOS.destroy(destroy_registry=False)

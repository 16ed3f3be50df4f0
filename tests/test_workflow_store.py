"""The workflows table: optimistic locking, listing, named checkpoints; migrations."""

from __future__ import annotations

import asyncio

import pytest
from orchestrator.state.db import Database
from orchestrator.state.errors import MigrationError, StaleWorkflowVersion, WorkflowNotFound
from orchestrator.state.migrations import load_migrations, migrate
from orchestrator.state.store import WorkflowStateManager


@pytest.fixture
async def db(orchestrator_database_url):
    async with Database.connect(orchestrator_database_url) as database:
        await migrate(database)
        yield database


@pytest.fixture
def store(db, orchestrator_settings):
    return WorkflowStateManager(db, orchestrator_settings.namespace)


async def test_update_bumps_version_and_a_lost_race_raises(store) -> None:
    rec = await store.create(store.namespace + "-wf-1", "demo", {"x": 1}, owner="me")
    assert (rec.version, rec.status) == (1, "running")
    first = await store.update(store.namespace + "-wf-1", 1, current_step="a")
    assert first.version == 2 and first.current_step == "a"
    with pytest.raises(StaleWorkflowVersion) as info:
        await store.update(store.namespace + "-wf-1", 1, current_step="b")  # read version 1, but it is 2 now
    assert info.value.expected == 1 and info.value.actual == 2
    assert (await store.get(store.namespace + "-wf-1")).current_step == "a"  # the loser changed nothing


async def test_concurrent_updates_exactly_one_wins(store) -> None:
    await store.create(store.namespace + "-wf-race", "demo", {}, owner=None)
    results = await asyncio.gather(
        *(store.update(store.namespace + "-wf-race", 1, owner=f"p{i}") for i in range(8)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, StaleWorkflowVersion) for r in results if r not in winners)
    assert (await store.get(store.namespace + "-wf-race")).owner == winners[0].owner


async def test_list_filters_and_namespaces_isolate(db, store) -> None:
    a, b, c = (f"{store.namespace}-{x}" for x in "abc")
    await store.create(a, "docs", {}, owner=None)
    await store.create(b, "pr", {}, owner=None)
    await store.update(b, 1, status="completed", result={"ok": True})
    other = WorkflowStateManager(db, store.namespace + "-other")
    await other.create(c, "docs", {}, owner=None)
    assert {r.thread_id for r in await store.list()} == {a, b}
    assert [r.thread_id for r in await store.list(status="completed")] == [b]
    assert [r.thread_id for r in await store.list(workflow_type="docs")] == [a]
    assert (await store.get(b)).result == {"ok": True}
    with pytest.raises(WorkflowNotFound):
        await store.get(c)  # it exists, but in another namespace


async def test_duplicate_thread_id_is_refused(store) -> None:
    await store.create(store.namespace + "-dup", "demo", {}, owner=None)
    with pytest.raises(ValueError, match="already exists"):
        await store.create(store.namespace + "-dup", "demo", {}, owner=None)


async def test_named_checkpoints_map_labels_to_ids(store) -> None:
    await store.create(store.namespace + "-cp", "demo", {}, owner=None)
    await store.name_checkpoint(store.namespace + "-cp", "before-merge", "ckpt-1")
    await store.name_checkpoint(store.namespace + "-cp", "before-merge", "ckpt-2")  # relabel
    await store.name_checkpoint(store.namespace + "-cp", "start", "ckpt-0")
    names = {c.name: c.checkpoint_id for c in await store.named_checkpoints(store.namespace + "-cp")}
    assert names == {"before-merge": "ckpt-2", "start": "ckpt-0"}
    assert (await store.named_checkpoint(store.namespace + "-cp", "start")).checkpoint_id == "ckpt-0"


async def test_migrations_are_idempotent_and_recorded(db) -> None:
    assert await migrate(db) == []  # the fixture applied them; again is a no-op
    rows = await db.fetch("SELECT version FROM orchestrator_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
    # concurrent migrators serialize on the advisory lock and apply nothing twice
    assert await asyncio.gather(migrate(db), migrate(db)) == [[], []]


async def test_an_edited_applied_migration_is_refused(db, tmp_path) -> None:
    for m in load_migrations():
        (tmp_path / f"{m.version:03d}_{m.name}.sql").write_text(m.sql)
    first = load_migrations()[0]
    (tmp_path / f"{first.version:03d}_{first.name}.sql").write_text(first.sql + "\n-- edited\n")
    with pytest.raises(MigrationError, match="append-only"):
        await migrate(db, tmp_path)


def test_badly_named_migration_file_is_refused(tmp_path) -> None:
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_description"):
        load_migrations(tmp_path)

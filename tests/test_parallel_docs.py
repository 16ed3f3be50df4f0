"""parallel_docs end to end on real PostgreSQL and Redis, through the pytest plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.calls import call_agent
from orchestrator.contracts.docs import output_lock
from orchestrator.errors import AgentError, InvalidInput
from orchestrator.locks.fencing import check_token
from orchestrator.testing import resume, run_until_interrupt, stand_in

from .support.docs import FIXTURE_MODULES as MODULES
from .support.graphs_for_tests import approval


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


async def test_documents_every_public_module_and_writes_an_index(
    orchestrator, fixture_package, tmp_path
) -> None:
    out = tmp_path / "docs"
    result = await orchestrator.run("parallel_docs", {"package": str(fixture_package),
                                                      "output": str(out)})
    assert result.status == "completed", result.error
    assert result.final_result["modules"] == len(MODULES)
    assert sorted(_tree(out)) == sorted([f"{m}.md" for m in MODULES] + ["index.md"])
    page = (out / "fixturepkg.mod3.md").read_text()
    assert page.startswith("# fixturepkg.mod3\n")
    for expected in ("Module number 3.", "class Thing3", "Thing3(size: int = 3)", "grow",
                     "Grow by", "make_3", "fast: bool = False"):
        assert expected in page
    assert "_secret" not in page and "_helper" not in page
    index = (out / "index.md").read_text()
    for module in MODULES:
        assert index.count(f"[{module}]({module}.md)") == 1
    assert "_private" not in index

    record = (await orchestrator.list_workflows(workflow_type="parallel_docs"))[0]
    assert record.status == "completed" and record.thread_id == result.thread_id
    assert any(a.startswith("docs@") for a in record.participating_agents)
    details = await orchestrator.get(result.thread_id)
    assert set(details.values["subtask_status"]) == set(MODULES)
    assert details.values["subtask_status"]["fixturepkg.mod0"] == "done"
    history = await orchestrator.history(result.thread_id)
    assert history[0].step == -1 and history[-1].next == []


async def test_runs_and_agent_calls_are_counted_in_metrics(
    orchestrator, fixture_package, tmp_path
) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    runs = ("orchestrator_workflow_runs_total", {"workflow_type": "parallel_docs",
                                                 "status": "completed"})
    calls = ("orchestrator_bus_requests_total", {"agent_type": "docs", "status": "success"})
    latency = ("orchestrator_bus_request_seconds_count", {"agent_type": "docs",
                                                          "status": "success"})
    before = [sample(*m) for m in (runs, calls, latency)]
    result = await orchestrator.run("parallel_docs", {"package": str(fixture_package),
                                                      "output": str(tmp_path)})
    assert result.status == "completed"
    after = [sample(*m) for m in (runs, calls, latency)]
    # one run; list_modules + one render per module + write_docs
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, len(MODULES) + 2,
                                                                    len(MODULES) + 2]
    assert sample("orchestrator_live_agents", {"agent_type": "docs"}) >= 1


async def test_same_input_gives_byte_identical_output(orchestrator, fixture_package, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        result = await orchestrator.run("parallel_docs", {"package": str(fixture_package),
                                                          "output": str(out)})
        assert result.status == "completed"
    assert _tree(first) == _tree(second)


async def test_importable_package_name_is_resolved(orchestrator, tmp_path) -> None:
    result = await orchestrator.run("parallel_docs", {"package": "json", "output": str(tmp_path)})
    assert result.status == "completed"
    assert (tmp_path / "json.decoder.md").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"package": "/no/such/folder", "output": "x"}, "does not exist"),
        ({"package": "no_such_package_xyz", "output": "x"}, "no importable package"),
        ({"package": "json"}, "missing input field 'output'"),
        ({"package": "json", "output": "x", "extra": 1}, "'extra'"),
    ],
)
async def test_bad_input_is_refused_before_anything_starts(orchestrator, data, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        await orchestrator.run("parallel_docs", data)
    assert await orchestrator.list_workflows() == []


async def test_a_stand_in_replaces_one_request_type(
    orchestrator_factory, fixture_package, tmp_path
) -> None:
    async def fake_render(payload, ctx):
        return {"module": payload["module"], "markdown": f"# {payload['module']}\nfake\n",
                "summary": "stub"}

    orch = await orchestrator_factory(
        stand_ins=[stand_in("docs", {"render_module": fake_render}, keep_builtin=True)])
    result = await orch.run("parallel_docs", {"package": str(fixture_package),
                                              "output": str(tmp_path)})
    assert result.status == "completed"
    assert (tmp_path / "fixturepkg.mod1.md").read_text() == "# fixturepkg.mod1\nfake\n"
    assert "— stub" in (tmp_path / "index.md").read_text()


async def test_run_until_interrupt_then_resume(orchestrator_factory) -> None:
    async def review(payload, ctx):
        return {"verdict": "looks fine", "change": payload["change"]}

    orch = await orchestrator_factory(stand_ins=[stand_in("reviewer", {"review": review})],
                                      workflows={"approval": approval})
    result, question = await run_until_interrupt(orch, "approval", {"change": "PR-7"})
    assert question["kind"] == "approval" and question["question"] == "approve PR-7?"
    assert question["context"] == {"review": {"verdict": "looks fine", "change": "PR-7"}}
    assert question["schema"]["properties"]["approve"]["type"] == "boolean"
    record = (await orch.list_workflows(status="interrupted"))[0]
    assert record.thread_id == result.thread_id
    done = await resume(orch, result.thread_id, {"approve": True, "by": "ana"})
    assert done.status == "completed"
    assert done.final_result == {"status": "completed", "approved": True, "by": "ana"}
    # resuming a completed workflow is a no-op that returns its result
    again = await orch.resume(result.thread_id)
    assert again.status == "completed" and again.final_result == done.final_result


async def test_docs_writer_requires_a_current_fencing_token(orchestrator, tmp_path) -> None:
    out = tmp_path / "fenced"
    payload = {"output": str(out), "package": "p", "pages": {"p.a": "# p.a\n"}}
    rt = orchestrator.runtime
    with pytest.raises(AgentError, match="missing_fencing_token"):
        await call_agent("docs", "write_docs", payload, runtime=rt)
    resource = output_lock(out)
    async with rt.locks.acquire(resource, "old") as old:
        pass
    async with rt.locks.acquire(resource, "new") as new:
        assert new.token > old.token
        await check_token(rt.bus, resource, new.token)  # the writer has seen the new holder
    # the old holder's late write is refused, and nothing was written
    req = rt.bus.new_reply_stream_request(target="docs", request_type="write_docs",
                                          payload=payload, fencing={resource: old.token})
    response = await rt.bus.request(req, 10)
    assert response.status == "error" and response.error.code == "stale_fencing_token"
    assert not out.exists()


async def test_docs_writer_never_writes_outside_output(orchestrator, tmp_path) -> None:
    out = tmp_path / "out"
    resource = output_lock(out)
    payload = {"output": str(out), "package": "p", "pages": {"../../escape": "# x\n"}}
    with pytest.raises(AgentError, match="unsafe_path"):
        await call_agent("docs", "write_docs", payload, locks=[resource],
                         runtime=orchestrator.runtime)
    assert not (tmp_path / "escape.md").exists() and not list(tmp_path.rglob("escape*"))


async def test_workflow_events_are_broadcast_in_order(orchestrator_factory) -> None:
    import asyncio

    async def review(payload, ctx):
        return {"verdict": "fine"}

    orch = await orchestrator_factory(stand_ins=[stand_in("reviewer", {"review": review})],
                                      workflows={"approval": approval})
    paused, _ = await run_until_interrupt(orch, "approval", {"change": "PR-9"})
    await resume(orch, paused.thread_id, {"approve": True, "by": "ana"})
    wanted = ["workflow.started", "workflow.interrupted", "workflow.resumed",
              "workflow.completed"]
    for _ in range(100):  # events go out from a background publisher, in order
        mine = [e.type for e in await orch.runtime.bus.recent_events()
                if (e.data or {}).get("thread_id") == paused.thread_id
                and e.type.startswith("workflow.")]
        if len(mine) >= len(wanted):
            break
        await asyncio.sleep(0.02)
    assert mine == wanted


async def test_resume_after_the_cause_is_fixed_runs_the_failed_write_again(
    orchestrator_factory, fixture_package, tmp_path
) -> None:
    """A failed agent call's stored error is not replayed to a resume (a new attempt), even
    from a new process, whose call indexes start again at 0 (review H3)."""
    out = tmp_path / "docs"
    (out / "index.md").mkdir(parents=True)  # a directory where index.md must go
    first = await orchestrator_factory()
    failed = await first.run("parallel_docs", {"package": str(fixture_package),
                                               "output": str(out)}, "docs-resume")
    assert failed.status == "failed" and "unsafe" in failed.error["message"], failed.error
    (out / "index.md").rmdir()  # the cause is fixed
    second = await orchestrator_factory()  # a new process: its call indexes start at 0
    result = await second.resume("docs-resume")
    assert result.status == "completed", result.error
    assert (out / "index.md").is_file()
    assert sorted(_tree(out)) == sorted([f"{m}.md" for m in MODULES] + ["index.md"])
    assert (await second.runtime.workflows.get("docs-resume")).attempt == 2


async def test_an_unreadable_module_is_skipped_and_listed_not_a_failed_run(
    orchestrator, fixture_package, tmp_path
) -> None:
    secret = tmp_path / "secret.py"
    secret.write_text('TOKEN = "do-not-publish"\n')
    (fixture_package / "leak.py").symlink_to(secret)  # a symlink out of the package
    (fixture_package / "garbled.py").write_bytes(b'"""Caf\xe9."""\n')  # not UTF-8, no coding line
    (fixture_package / "latin.py").write_bytes(b'# -*- coding: latin-1 -*-\n"""Caf\xe9."""\n')
    out = tmp_path / "docs"
    result = await orchestrator.run("parallel_docs", {"package": str(fixture_package),
                                                      "output": str(out)})
    assert result.status == "completed", result.error
    skipped = result.final_result["skipped"]
    assert sorted(skipped) == ["fixturepkg.garbled", "fixturepkg.leak"]
    assert skipped["fixturepkg.leak"] == f"leak.py: a symlink to {secret}, outside the package; " \
        "not followed"
    assert skipped["fixturepkg.garbled"].startswith("garbled.py: does not decode as Python source")
    assert result.final_result["modules"] == len(MODULES) + 1  # latin.py decodes as it declares
    assert "Café." in (out / "fixturepkg.latin.md").read_text()
    assert not (out / "fixturepkg.leak.md").exists() and not (out / "fixturepkg.garbled.md").exists()
    index = (out / "index.md").read_text()
    assert "## Skipped modules" in index
    assert "- fixturepkg.leak — leak.py: a symlink to" in index
    assert "do-not-publish" not in "".join(p.read_text() for p in out.iterdir())


async def test_an_unparsable_module_is_skipped_with_its_reason_in_the_index(
    orchestrator, fixture_package, tmp_path
) -> None:
    (fixture_package / "broken.py").write_text("def broken(:\n    pass\n")
    out = tmp_path / "docs"
    result = await orchestrator.run("parallel_docs", {"package": str(fixture_package),
                                                      "output": str(out)})
    assert result.status == "completed", result.error
    assert result.final_result["skipped"] == {
        "fixturepkg.broken": "broken.py: could not be parsed: invalid syntax (line 1)"}
    assert result.final_result["modules"] == len(MODULES)
    assert "- fixturepkg.broken — broken.py: could not be parsed: invalid syntax (line 1)" in \
        (out / "index.md").read_text()
    assert not (out / "fixturepkg.broken.md").exists()

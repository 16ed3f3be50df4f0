"""The docs agent and the parallel_docs graph keep one contract (orchestrator.contracts.docs):
a malformed payload is refused naming the field, answers keep their wire shape, and the graph
holds the very lock the agent checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from orchestrator.agents import docs as docs_agent
from orchestrator.workflows import parallel_docs

from orchestrator.agent import HandlerError
from orchestrator.calls import call_agent
from orchestrator.contracts import docs as contract
from orchestrator.errors import AgentError


@pytest.mark.parametrize(
    ("request_type", "payload", "field"),
    [
        ("list_modules", {}, "payload.package_dir: Field required"),
        ("list_modules", {"package_dir": ""}, "payload.package_dir: String should have at least"),
        ("list_modules", {"package_dir": 7}, "payload.package_dir: Input should be a valid string"),
        ("list_modules", {"package_dir": "/tmp", "extra": 1}, "payload.extra: Extra inputs"),
        ("render_module", {"package_dir": "/tmp", "path": "m.py"}, "payload.module: Field required"),
        ("render_module", {"package_dir": "/tmp", "module": "m", "path": "../m.py"},
         "payload.path: Value error, ../m.py is not a module of the package"),
        ("render_module", {"package_dir": "/tmp", "module": "m", "path": "/abs/m.py"},
         "payload.path: Value error, /abs/m.py is not a module"),
        ("write_docs", {"output": "/tmp/x", "package": "p", "pages": ["p"]},
         "payload.pages: Input should be a valid dictionary"),
        ("write_docs", {"output": "/tmp/x", "package": "p", "pages": {}, "skipped": {"m": 1}},
         "payload.skipped.m: Input should be a valid string"),
        ("write_docs", {"package": "p", "pages": {}}, "payload.output: Field required"),
    ],
)
async def test_a_malformed_payload_is_answered_invalid_input_naming_the_field(
    orchestrator, request_type, payload, field
) -> None:
    with pytest.raises(AgentError) as caught:
        await call_agent("docs", request_type, payload, runtime=orchestrator.runtime)
    assert caught.value.error_code == "invalid_input"
    assert field in str(caught.value)


async def test_a_missing_package_folder_is_the_handlers_check(tmp_path) -> None:
    with pytest.raises(HandlerError, match=r"package folder \S+ does not exist") as caught:
        await docs_agent.agent.call_locally("list_modules", {"package_dir": str(tmp_path / "no")})
    assert caught.value.code == "invalid_input"


async def test_answers_keep_their_wire_shape(fixture_package, tmp_path) -> None:
    listing = await docs_agent.agent.call_locally("list_modules",
                                                  {"package_dir": str(fixture_package)})
    assert set(listing) == {"package", "modules"} and listing["package"] == "fixturepkg"
    assert listing["modules"][1] == {"name": "fixturepkg.mod0", "path": "mod0.py"}

    page = await docs_agent.agent.call_locally(
        "render_module", {"package_dir": str(fixture_package), "module": "fixturepkg.mod0",
                          "path": "mod0.py"})
    assert set(page) == {"module", "markdown", "summary"}
    (fixture_package / "gone.py").symlink_to(tmp_path / "nowhere.py")
    skipped = await docs_agent.agent.call_locally(
        "render_module", {"package_dir": str(fixture_package), "module": "fixturepkg.gone",
                          "path": "gone.py"})
    assert set(skipped) == {"module", "skipped"}  # no null markdown/summary beside the reason

    parsed = contract.RENDER_MODULE.parse_result(skipped).root
    assert isinstance(parsed, contract.SkippedModule) and parsed.skipped == skipped["skipped"]
    assert isinstance(contract.RENDER_MODULE.parse_result(page).root, contract.RenderedModule)


def test_graph_and_agent_name_the_lock_with_the_contracts_function() -> None:
    assert parallel_docs.output_lock is contract.output_lock
    assert docs_agent.output_lock is contract.output_lock
    assert contract.output_lock("/a/b/../c") == f"docs:{Path('/a/c').resolve()}"


async def test_the_graph_holds_the_lock_the_agent_checks(
    orchestrator, fixture_package, tmp_path, fencing_checks
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)  # the graph is given another spelling of the folder
    result = await orchestrator.run("parallel_docs", {"package": str(fixture_package),
                                                      "output": str(tmp_path / "link")})
    assert result.status == "completed", result.error
    lock = contract.output_lock(real)
    assert fencing_checks == [(lock, [lock])]  # the agent checked the one lock the graph held
    assert (real / "index.md").is_file()

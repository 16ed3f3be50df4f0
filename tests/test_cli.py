"""The CLI: exit codes, messages for bad input, JSON output."""

from __future__ import annotations

import io
import json

import pytest

from orchestrator import cli
from orchestrator.testing import stand_in

from .support.graphs_for_tests import approval


@pytest.fixture
def env(monkeypatch, orchestrator_settings):
    for key in ("DATABASE_URL", "REDIS_URL", "NAMESPACE"):
        monkeypatch.setenv(f"ORCHESTRATOR_{key}",
                           str(getattr(orchestrator_settings, key.lower())))
    return orchestrator_settings


def run_cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "no_such_flow"], "unknown workflow 'no_such_flow'; known workflows: multi_repo_change, "
         "parallel_docs"),
        (["run", "parallel_docs", "--set", "package=json"], "missing input field 'output'"),
        (["run", "parallel_docs", "--set", "package=/does/not/exist", "--set", "output=x"],
         "package folder /does/not/exist does not exist"),
        (["run", "parallel_docs", "--input", "/no/input.json"], "cannot read --input"),
        (["run", "parallel_docs", "--set", "novalue"], "--set expects KEY=VALUE"),
        (["resume", "no-such-thread"], "no workflow with thread id 'no-such-thread'"),
        (["resume", "x", "--value", "{bad"], "--value must be JSON"),
        (["worker", "--agents", "docs,ghost"], "unknown agent type(s) ghost"),
    ],
)
def test_bad_input_exits_2_with_a_message_that_says_what_to_do(env, argv, message) -> None:
    code, out, err = run_cli(*argv)
    assert code == 2, (out, err)
    assert message in err


def test_invalid_json_on_stdin_exits_2(env) -> None:
    code, _, err = run_cli("run", "parallel_docs", "--input", "-", stdin="{nope")
    assert code == 2 and "is not valid JSON" in err


def test_usage_errors_exit_2(env, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 2
    assert run_cli()[0] == 2  # no command: help, exit 2


def test_run_json_then_ls_and_show(env, fixture_package, tmp_path) -> None:
    code, out, err = run_cli("run", "parallel_docs", "--input", "-", "--json",
                             stdin=json.dumps({"package": str(fixture_package),
                                               "output": str(tmp_path / "d")}))
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "completed" and result["final_result"]["modules"] == 12
    thread_id = result["thread_id"]

    code, out, _ = run_cli("ls", "--json")
    listed = json.loads(out)
    assert code == 0 and [w["thread_id"] for w in listed] == [thread_id]
    assert {"thread_id", "workflow_type", "status", "updated_at"} <= set(listed[0])
    assert listed[0]["workflow_type"] == "parallel_docs" and listed[0]["status"] == "completed"

    code, out, _ = run_cli("ls", "--status", "failed", "--json")
    assert json.loads(out) == []

    code, out, _ = run_cli("show", thread_id, "--history")
    assert code == 0 and "status:    completed" in out and "history (oldest first)" in out
    code, out, _ = run_cli("show", thread_id, "--json")
    assert json.loads(out)["values"]["final_result"]["modules"] == 12


def test_an_interrupted_run_exits_3_and_says_how_to_resume(env, monkeypatch) -> None:
    from orchestrator import graphs
    from orchestrator.runtime import Runtime

    monkeypatch.setattr(graphs, "available_workflows", lambda: {"approval": approval})

    async def review(payload, ctx):
        return {"verdict": "ok"}

    real_open = Runtime.open

    def open_with_reviewer(settings, *, agents=None):
        return real_open(settings, agents=[stand_in("reviewer", {"review": review})])

    monkeypatch.setattr(Runtime, "open", open_with_reviewer)
    code, out, err = run_cli("run", "approval", "--set", "change=PR-1")
    assert code == 3, err
    thread_id = out.split("(thread ")[1].split(")")[0]
    assert f"resume with: orchestrator resume {thread_id} --value" in out
    code, out, err = run_cli("resume", thread_id, "--value", '{"approve": false, "by": "bo"}',
                             "--json")
    assert code == 1, err  # the graph finished, reporting a rejection as failed
    assert json.loads(out)["final_result"] == {"status": "failed", "approved": False, "by": "bo"}


def test_a_missing_or_malformed_answer_exits_2_and_the_question_stays(env, monkeypatch) -> None:
    """Review L1/R6 (no --value crashed inside LangGraph and failed the workflow) and H2."""
    from orchestrator import graphs
    from orchestrator.runtime import Runtime

    monkeypatch.setattr(graphs, "available_workflows", lambda: {"approval": approval})

    async def review(payload, ctx):
        return {"verdict": "ok"}

    real_open = Runtime.open
    monkeypatch.setattr(Runtime, "open", lambda settings, *, agents=None: real_open(
        settings, agents=[stand_in("reviewer", {"review": review})]))
    code, out, err = run_cli("run", "approval", "--set", "change=PR-2", "--thread-id", "ask-1")
    assert code == 3, err
    # the pending question is shown with what it expects and how to answer
    assert "question (approval): approve PR-2?" in out
    assert "answer: {approve: boolean, by: string}" in out
    assert """resume with: orchestrator resume ask-1 --value '{"approve": true, "by": "ana"}'""" \
        in out

    def status() -> str:
        code, out, _ = run_cli("show", "ask-1", "--json")
        return json.loads(out)["status"]

    code, out, err = run_cli("resume", "ask-1")
    assert code == 2, (out, err)
    assert "workflow ask-1 waits for an answer" in err and "approve PR-2?" in err
    assert '"approve": {"title": "Approve", "type": "boolean"}' in err  # its schema
    assert err.count("waits for an answer") == 1 and "Traceback" not in err
    assert status() == "interrupted"

    for value, problem in [('{"approve": "false", "by": "bo"}', "approve: 'false' is not of "
                            "type 'boolean'"), ('"yes"', "is not of type 'object'"),
                           ('{"aprove": true, "by": "bo"}', "'aprove' was unexpected"),
                           ("null", "waits for an answer")]:
        code, out, err = run_cli("resume", "ask-1", "--value", value)
        assert code == 2, (value, out, err)
        assert problem in err and err.count("orchestrator: error:") == 1, err
        assert status() == "interrupted"
    code, out, err = run_cli("resume", "ask-1", "--value", '{"approve": true, "by": "bo"}')
    assert code == 0, err
    # answering a workflow that waits for nothing is refused too, not silently ignored
    code, out, err = run_cli("resume", "ask-1", "--value", '{"approve": false, "by": "bo"}')
    assert code == 2 and "waits for no answer" in err
    assert status() == "completed"


def test_graphs_lists_parallel_docs(env) -> None:
    code, out, _ = run_cli("graphs")
    assert code == 0 and "parallel_docs" in out and "input: package, output" in out


def test_db_migrate_is_a_no_op_the_second_time(env) -> None:
    code, out, _ = run_cli("db", "migrate")
    assert code == 0 and "0 by this run" in out


async def test_locks_lists_held_locks(env, orchestrator_settings) -> None:
    import asyncio

    from orchestrator.runtime import Runtime

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        async with rt.locks.acquire("repo:/srv/app", "tester", ttl=30) as lease:
            code, out, _ = await asyncio.to_thread(run_cli, "locks", "--json")
            assert code == 0
            assert [(x["resource"], x["holder"], x["token"]) for x in json.loads(out)] == [
                ("repo:/srv/app", "tester", lease.token)]
        code, out, _ = await asyncio.to_thread(run_cli, "locks")
        assert code == 0 and out == "no locks held\n"


async def test_dlq_ls_show_replay_purge(env, orchestrator_settings) -> None:
    import asyncio

    from orchestrator.runtime import Runtime

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        stream = rt.bus.keys.requests("docs", "normal")
        await rt.bus.ensure_group("docs")
        good = rt.bus.new_reply_stream_request(target="docs", request_type="list_modules",
                                               payload={"package_dir": "/nowhere"})
        await rt.redis.xadd(stream, {b"m": good.model_dump_json().encode()})
        await rt.redis.xadd(stream, {b"m": b"garbage"})
        deliveries = await rt.bus.read_requests("docs", "ghost", count=10, block_ms=100)
        for d in deliveries:
            await rt.bus.dead_letter(d, agent_type="docs", reason="test")

    code, out, _ = await asyncio.to_thread(run_cli, "dlq", "ls", "--json")
    letters = json.loads(out)
    assert code == 0 and [x["reason"] for x in letters] == ["test", "test"]
    code, out, _ = await asyncio.to_thread(run_cli, "dlq", "show", "docs", letters[1]["id"])
    assert code == 0 and json.loads(out)["message"] == "garbage"
    code, out, err = await asyncio.to_thread(run_cli, "dlq", "replay", "docs")
    assert code == 1  # the garbage one cannot be replayed...
    assert f"replayed {letters[0]['id']} as request {good.request_id}" in out
    assert "queued 1 of 2 dead letter(s) for 'docs' again" in out
    assert f"cannot replay {letters[1]['id']}" in err and "purge it instead" in err
    code, out, _ = await asyncio.to_thread(run_cli, "dlq", "purge", "docs")
    assert code == 0 and out == "purged 1 dead letter(s)\n"
    code, out, _ = await asyncio.to_thread(run_cli, "dlq", "ls")
    assert out == "no dead letters\n"
    code, _, err = await asyncio.to_thread(run_cli, "dlq", "show", "docs", "0-1")
    assert code == 2 and "no dead letter 0-1" in err


def test_analyze_prints_edges_cycles_batches_and_the_critical_path(tmp_path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from . import b\n")
    (tmp_path / "pkg" / "b.py").write_text("import pkg.c\n")
    (tmp_path / "pkg" / "c.py").write_text("from pkg import a\n")  # a cycle a -> b -> c -> a
    (tmp_path / "pkg" / "d.py").write_text("import json\nfrom pkg import c\n")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "x.ts").write_text("import { y } from './y';\nexport const x = y;\n")
    (tmp_path / "web" / "y.ts").write_text("export const y = 1;\n")
    code, out, _ = run_cli("analyze", str(tmp_path), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["edges"] == [["pkg/a.py", "pkg/b.py"], ["pkg/b.py", "pkg/c.py"],
                               ["pkg/c.py", "pkg/a.py"], ["pkg/d.py", "pkg/c.py"],
                               ["web/x.ts", "web/y.ts"]]
    assert result["cycles"] == [["pkg/a.py", "pkg/b.py", "pkg/c.py"]]
    assert result["batches"][0] == ["pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/c.py",
                                    "web/y.ts"]
    code, text, _ = run_cli("analyze", str(tmp_path))
    assert code == 0
    assert "pkg/d.py -> pkg/c.py" in text and "cycles: 1" in text
    assert "pkg/a.py -> pkg/b.py -> pkg/c.py -> pkg/a.py" in text
    code, _, err = run_cli("analyze", str(tmp_path / "missing"))
    assert code == 2 and "is not a folder" in err


# -- the edges: every bad input exits 2 naming it, never with the services hint ------------------


def run_cli_any(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """run_cli, also for errors argparse reports itself (SystemExit, on sys.stderr)."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_bad_input_files_and_values_exit_2_naming_them(env, tmp_path) -> None:
    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes(b'{"package": "caf\xe9"}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    deep_object = tmp_path / "deep_object.json"
    deep_object.write_text('{"package": ' + "[" * 500 + "]" * 500 + "}")
    huge_value = tmp_path / "huge.json"
    huge_value.write_text(json.dumps({"package": "a" * 5_000_000, "output": "x"}))
    too_big = tmp_path / "big.json"
    too_big.write_text(json.dumps({"package": "a" * 9_000_000}))
    long_name = tmp_path / "long_name.json"
    long_name.write_text(json.dumps({"package": "a" * 300, "output": "x"}))
    cases = [
        (["--input", str(not_utf8)], f"--input {not_utf8} is not UTF-8 text"),
        (["--input", str(deep)], "nests lists or objects more than 100 levels deep"),
        (["--input", str(deep_object)], "nests lists or objects more than 100 levels deep"),
        (["--set", "package=" + "[" * 100_000], "--set package nests lists or objects more than 100"),
        (["--set", "package=caf\udce9"], "--set is not valid UTF-8 text"),
        (["--input", str(huge_value)], "input field 'package': String should have at most 4096"),
        (["--input", str(too_big)], "is larger than 8 MiB"),
        (["--input", str(long_name)], "cannot use " + "a" * 300 + " as a package folder: "
                                      "File name too long"),
    ]
    for argv, message in cases:
        code, out, err = run_cli_any("run", "parallel_docs", *argv)
        assert (code, message) == (2, message) and message in err, (argv[:2], err[:500])
        assert "ORCHESTRATOR_DATABASE_URL" not in err and len(err) < 2000


def test_non_utf8_on_stdin_exits_2(env) -> None:
    class BinaryStdin(io.StringIO):
        buffer = io.BytesIO(b'{"package": "\xff"}')

    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["run", "parallel_docs", "--input", "-"], stdout=out, stderr=err,
                    stdin=BinaryStdin())
    assert code == 2 and "--input - is not UTF-8 text" in err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ls", "--limit", "-1"], "argument --limit: -1 is not a positive number"),
        (["ls", "--limit", "0"], "argument --limit: 0 is not a positive number"),
        (["run", "parallel_docs", "--thread-id", ""], "argument --thread-id: must not be empty"),
        (["run", "parallel_docs", "--thread-id", "a\nb"], "holds control characters"),
        (["run", "parallel_docs", "--thread-id", "a\x1b[2J"], "holds control characters"),
        (["run", "parallel_docs", "--thread-id", " padded"], "surrounding spaces"),
        (["dlq", "replay", "docs", "bogus-id"], "no dead letter bogus-id for agent type 'docs'"),
        (["dlq", "purge", "docs", "bogus-id"], "no dead letter bogus-id for agent type 'docs'"),
        (["dlq", "show", "docs", "bogus-id"], "no dead letter bogus-id for agent type 'docs'"),
    ],
)
def test_bad_arguments_exit_2_naming_them(env, argv, message) -> None:
    code, out, err = run_cli_any(*argv)
    assert code == 2 and message in err, (out, err)
    assert "ORCHESTRATOR_DATABASE_URL" not in err


async def test_an_empty_thread_id_is_refused_by_the_api_too(orchestrator_factory,
                                                             tmp_path) -> None:
    from orchestrator.errors import InvalidInput

    orch = await orchestrator_factory()
    for bad in ("", "a\x00b"):
        with pytest.raises(InvalidInput, match="must be 1-200 printable characters"):
            await orch.run("parallel_docs", {"package": "json", "output": str(tmp_path / "docs")},
                           bad)


def test_version() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    from importlib.metadata import version

    assert done.returncode == 0
    assert done.stdout == f"orchestrator {version('langgraph-orchestrator')}\n"


# -- the data dir is found the way git finds .git ---------------------------------------------


def test_the_data_dir_is_the_nearest_orchestrator_folder_above(tmp_path) -> None:
    from orchestrator.settings import Settings

    deep = tmp_path / "proj" / "src" / "pkg"
    deep.mkdir(parents=True)
    assert Settings.from_env({}, cwd=deep).data_dir == deep / ".orchestrator"  # none yet
    (tmp_path / "proj" / ".orchestrator").mkdir()
    assert Settings.from_env({}, cwd=deep).data_dir == tmp_path / "proj" / ".orchestrator"
    (tmp_path / "proj" / "src" / ".orchestrator").write_text("a file, not a data dir")
    assert Settings.from_env({}, cwd=deep).data_dir == tmp_path / "proj" / ".orchestrator"
    explicit = {"ORCHESTRATOR_DATA_DIR": str(tmp_path / "elsewhere")}
    assert Settings.from_env(explicit, cwd=deep).data_dir == tmp_path / "elsewhere"


def test_a_command_that_creates_a_data_dir_says_where_and_sub_folders_reuse_it(
    service_env, tmp_path
) -> None:
    import subprocess
    import sys

    from orchestrator.embedded import embedded_status

    env = {k: v for k, v in service_env.items() if k != "ORCHESTRATOR_REDIS_URL"}  # embedded
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)

    def ls(cwd):
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", "ls"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)

    first = ls(project)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("\n") == 1
    assert f"creating a new data dir {project / '.orchestrator'} " in first.stderr
    again = ls(project / "sub")  # found above, not a second one in sub/
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert not (project / "sub" / ".orchestrator").exists()
    assert (project / ".orchestrator" / "redis").is_dir()
    assert not embedded_status(project / ".orchestrator")["redis"]["running"]


# -- output on a terminal -----------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_warning_never_lands_inside_the_progress_line(env, monkeypatch) -> None:
    import logging
    import re

    from langgraph.graph import END, START, StateGraph
    from orchestrator.state.schema import MultiAgentState
    from pydantic import BaseModel

    from orchestrator import graphs
    from orchestrator.graphs import WorkflowSpec

    class Input(BaseModel):
        name: str

    async def first(state):
        return {"updated_at": "x"}

    async def second(state):
        logging.getLogger("tests.noisy").warning("the disk is nearly full")
        return {"final_result": {"status": "completed"}}

    builder = StateGraph(MultiAgentState)
    builder.add_node("first_step", first)
    builder.add_node("second_step", second)
    builder.add_edge(START, "first_step")
    builder.add_edge("first_step", "second_step")
    builder.add_edge("second_step", END)
    spec = WorkflowSpec("noisy", builder, Input, "logs a warning in its second step")
    monkeypatch.setattr(graphs, "available_workflows", lambda: {"noisy": spec})

    out, err = io.StringIO(), _Terminal()
    code = cli.main(["run", "noisy", "--set", "name=x"], stdout=out, stderr=err,
                    stdin=io.StringIO())
    text = err.getvalue()
    assert code == 0, text
    assert "\rfirst_step" in text  # the progress line was drawn...
    # ...and erased before the warning, which starts a line of its own
    assert re.search(r"\rfirst_step\r {10}\r\d{4}-\d\d-\d\d [\d:,]+ WARNING tests.noisy: "
                     r"the disk is nearly full\n\rfirst_step", text), repr(text)
    assert text.endswith("\r" + " " * len("second_step") + "\r")  # and cleared at the end


def test_a_failed_run_reports_its_error_once(service_env, tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "out" / "index.md").mkdir(parents=True)  # the docs cannot write their index
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", "parallel_docs", "--set",
         "package=json", "--set", f"output={tmp_path / 'out'}"],
        env=service_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (done.stdout + done.stderr).count("unsafe output path 'index.md'") == 1, done


# -- Ctrl-C -------------------------------------------------------------------------------------


async def test_ctrl_c_during_run_stops_promptly_and_resume_completes(
    service_env, orchestrator_settings, tmp_path
) -> None:
    import asyncio
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    from orchestrator.runtime import Runtime

    log = tmp_path / "slow.log"
    log.write_text("")
    thread_id = f"ctrl-c-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "tests.support.cli_process", str(log)]
    proc = subprocess.Popen([*command, "run", "slowflow", "--set", "seconds=60",
                             "--thread-id", thread_id], env=service_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "start" not in log.read_text():  # the slow agent call is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            await asyncio.sleep(0.1)
        interrupted_at = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        stopped_after = time.monotonic() - interrupted_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert stopped_after < 10, stopped_after  # the handler sleeps 60 s: it was not awaited
    assert f"continue it with `orchestrator resume {thread_id}`" in err
    assert "WARNING" not in err and err.count("interrupted") == 1, err

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        record = await rt.workflows.get(thread_id)
    assert record.status == "running"  # its owner is gone: resumable

    done = await asyncio.to_thread(
        subprocess.run, [*command, "resume", thread_id], env=service_env,
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"completed: slowflow (thread {thread_id})" in done.stdout
    assert log.read_text().split() == ["start", "start", "done"]  # the cut call ran again


# -- services stop ------------------------------------------------------------------------------


def test_services_stop_names_the_live_users_and_needs_force(monkeypatch) -> None:
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from orchestrator.embedded import embedded_status, stop_embedded

    base = Path(tempfile.mkdtemp(prefix="orch-cli-", dir="/tmp"))  # short: the socket path
    data_dir = base / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom orchestrator.embedded import EmbeddedServices\n"
         f"s = EmbeddedServices({str(data_dir)!r}, postgres=False)\ns.start()\n"
         "print('ready', flush=True)\nsys.stdin.read()\ns.close()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        monkeypatch.setenv("ORCHESTRATOR_DATA_DIR", str(data_dir))
        code, out, err = run_cli("services", "stop")
        assert code == 1 and out == ""
        assert f"in use by 1 live process(es):\n  pid {holder.pid}: " in err
        assert "orchestrator services stop --force" in err
        assert embedded_status(data_dir)["redis"]["running"]  # nothing was stopped

        code, out, err = run_cli("services", "stop", "--force")
        assert code == 0, err
        assert out.startswith("stopped, under 1 live process(es)") and f"pid {holder.pid}" in out
        assert not embedded_status(data_dir)["redis"]["running"]
        holder.communicate("", timeout=30)
        code, out, _ = run_cli("services", "stop")
        assert (code, out) == (0, "nothing was running\n")
    finally:
        if holder.poll() is None:
            holder.kill()
        stop_embedded(data_dir)
        shutil.rmtree(base, ignore_errors=True)

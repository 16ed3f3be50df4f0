"""Follow-up issues of multi_repo_change: Markdown files written once per key, and a real
command run without a shell with the placeholders filled in."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from orchestrator.workflows.followup import IssueSink, issue_slug, write_issue
from pydantic import ValidationError

from tests.support.processes import wait_until

# -- the sink's validation --------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    ({}, "exactly one of 'folder'"),
    ({"folder": "/tmp/x", "command": ["echo"]}, "exactly one of 'folder'"),
    ({"command": []}, "non-empty argv list"),
    ({"command": ["gh", "--title", "{titel}"]}, "unknown placeholder {titel}"),
    ({"folder": "/tmp/x", "url": "https://example.com"}, "Extra inputs are not permitted"),
    ({"folder": "/tmp/x", "timeout": 0}, "greater than 0"),
])
def test_a_bad_sink_is_refused_saying_what_is_wrong(data, message) -> None:
    with pytest.raises(ValidationError, match=message):
        IssueSink.model_validate(data)


def test_braces_that_are_no_placeholder_are_kept() -> None:
    sink = IssueSink(command=["gh", "--jq", "{number: .number}", "{title}"])
    assert sink.command == ["gh", "--jq", "{number: .number}", "{title}"]


# -- folder ------------------------------------------------------------------------------------


def test_a_file_per_key_written_once(tmp_path) -> None:
    sink = IssueSink(folder=tmp_path / "issues" / "new")  # created when missing
    first = write_issue(sink, key="thread-1:lib", title="lib blocks\nthe change",
                        body="Tests failed:\n\n- tests/test_a.py::test_x\n", repo="/r/lib",
                        name="lib")
    path = Path(first["path"])
    assert first == {"kind": "file", "path": str(path), "created": True, "error": None}
    assert path.parent == tmp_path / "issues" / "new" and path.suffix == ".md"
    assert path.name.startswith("thread-1-lib-")
    assert path.read_text() == ("# lib blocks the change\n\nTests failed:\n\n"
                                "- tests/test_a.py::test_x\n")

    path.write_text("edited by a person\n")
    again = write_issue(sink, key="thread-1:lib", title="other", body="other", repo="/r/lib",
                        name="lib")
    assert again == {**first, "created": False}
    assert path.read_text() == "edited by a person\n"  # never rewritten

    other = write_issue(sink, key="thread-1/lib", title="t", body="b", repo="/r", name="lib")
    assert other["created"] and other["path"] != first["path"]  # same words, other key
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, Path(other["path"]).name])  # no scratch file left


def test_slugs_are_readable_and_distinct() -> None:
    assert issue_slug("Thread 7: App!").startswith("thread-7-app-")
    assert issue_slug("a:b") != issue_slug("a/b")
    assert len(issue_slug("x" * 500)) <= 69
    assert len(issue_slug("::")) == 8  # no words: the hash alone


def test_a_folder_that_cannot_be_written_is_reported_not_raised(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = write_issue(IssueSink(folder=blocker / "issues"), key="k", title="t", body="b",
                         repo="/r", name="n")
    assert result["kind"] == "file" and result["created"] is False
    assert result["error"].startswith(f"cannot write {blocker / 'issues'}")


def test_an_empty_key_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="non-empty key"):
        write_issue(IssueSink(folder=tmp_path), key="", title="t", body="b", repo="r", name="n")


# -- command -----------------------------------------------------------------------------------


def _script(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "tool.py"
    path.write_text(textwrap.dedent(code))
    return path


def test_the_command_gets_every_placeholder_without_a_shell(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_BUS_SECRET", "do-not-leak")
    monkeypatch.setenv("FOLLOWUP_TEST_VISIBLE", "yes")
    record = tmp_path / "record.json"
    tool = _script(tmp_path, f"""
        import json, os, sys
        body_file = sys.argv[sys.argv.index("--body-file") + 1]
        with open({str(record)!r}, "w") as fh:
            json.dump({{"argv": sys.argv[1:], "body_file": body_file,
                        "body_from_file": open(body_file).read(),
                        "secret": os.environ.get("ORCHESTRATOR_BUS_SECRET"),
                        "visible": os.environ.get("FOLLOWUP_TEST_VISIBLE")}}, fh)
        print("created issue #12")
    """)
    body = "app fails: `$(rm -rf /)` ; echo {title} \"quoted\""
    sink = IssueSink(command=[sys.executable, str(tool), "--title", "[{name}] {title}",
                              "--body", "{body}", "--body-file", "{body_file}",
                              "--repo={repo}"])
    result = write_issue(sink, key="t:app", title="app blocks", body=body,
                         repo="/src/app dir", name="app")
    seen = json.loads(record.read_text())
    # one word per template word, values inserted once (no re-substitution), no shell
    assert seen["argv"] == ["--title", "[app] app blocks", "--body", body, "--body-file",
                            seen["body_file"], "--repo=/src/app dir"]
    assert seen["body_from_file"] == body
    assert not os.path.exists(seen["body_file"])  # removed afterwards
    assert seen["secret"] is None and seen["visible"] == "yes"  # orchestrator.childenv
    assert result == {"kind": "command", "argv": [sys.executable, str(tool), *seen["argv"]],
                      "exit_code": 0, "output_tail": "created issue #12\n",
                      "timed_out": False, "error": None}


def test_a_failing_command_is_reported_with_its_output(tmp_path) -> None:
    tool = _script(tmp_path, """
        import sys
        print("x" * 10000)
        print("gh: not logged in", file=sys.stderr)
        sys.exit(4)
    """)
    result = write_issue(IssueSink(command=[sys.executable, str(tool), "{title}"]), key="k",
                         title="t", body="b", repo="/r", name="n")
    assert result["exit_code"] == 4 and result["timed_out"] is False
    assert result["error"] == f"{sys.executable} exited with 4"
    assert result["output_tail"].endswith("gh: not logged in\n")
    assert len(result["output_tail"]) == 4000


def test_a_missing_program_is_reported(tmp_path) -> None:
    result = write_issue(IssueSink(command=[str(tmp_path / "no-such-cli"), "{title}"]),
                         key="k", title="t", body="b", repo="/r", name="n")
    assert result["exit_code"] is None
    assert result["error"].startswith(f"cannot start '{tmp_path / 'no-such-cli'}'")


def test_a_command_that_hangs_is_killed_with_its_children(tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    tool = _script(tmp_path, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("waiting", flush=True)
        time.sleep(600)
    """)
    result = write_issue(IssueSink(command=[sys.executable, str(tool)], timeout=5), key="k",
                         title="t", body="b", repo="/r", name="n")
    assert result["timed_out"] is True and result["exit_code"] is None
    assert "did not finish within 5 s" in result["error"]
    assert result["output_tail"] == "waiting\n"
    grandchild = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, 10, "the command's child killed")

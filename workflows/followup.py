"""Follow-up issues: when a repository blocks a change, write an issue for it somewhere a
person will see it.

:class:`IssueSink` is the configured destination, one of:

* ``folder``: a Markdown file ``<folder>/<slug>.md`` per issue (``# title``, a blank line,
  the body), the slug made from the caller's key; a file already there is kept as it is, so
  writing the same key twice (a resumed run) leaves one file;
* ``command``: an argv template run without a shell (a code host's CLI, a script), with the
  placeholders ``{title}``, ``{body}``, ``{body_file}`` (a temporary file holding the body,
  removed afterwards), ``{repo}`` and ``{name}`` replaced inside each word.  A command cannot
  be made idempotent from here: the caller records the returned dict in its state and never
  calls twice for one key.

:func:`write_issue` never raises for a failure of the destination (a folder it cannot write,
a command that is missing, fails or times out): the failure is in the returned dict, because
a follow-up that cannot be filed must not turn a finished change into a failed one.  It
blocks (file I/O, a child process): call it from an async node with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.agents.lib.proc import kill_group
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.childenv import child_environment

__all__ = ["PLACEHOLDERS", "IssueSink", "issue_slug", "write_issue"]

PLACEHOLDERS = ("title", "body", "body_file", "repo", "name")
"""What a command template may use, as ``{title}`` etc."""

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_LOOKS_LIKE_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_OUTPUT_TAIL = 4000  # characters of the command's output kept in the result


class IssueSink(BaseModel):
    """Where follow-up issues go: exactly one of ``folder`` and ``command``.

    Attributes:
        folder: a folder for one Markdown file per issue (created when missing).
        command: an argv template, no shell; see :data:`PLACEHOLDERS`.
        timeout: seconds the command may run before its process group is killed.
    """

    model_config = ConfigDict(extra="forbid")

    folder: Path | None = None
    command: list[str] | None = None
    timeout: float = Field(default=60, gt=0)

    @field_validator("command")
    @classmethod
    def _command_words(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value or not value[0].strip():
            raise ValueError("command must be a non-empty argv list, its first word the "
                             "program (no shell), e.g. [\"gh\", \"issue\", \"create\", "
                             "\"--title\", \"{title}\", \"--body-file\", \"{body_file}\"]")
        for word in value:
            for match in _LOOKS_LIKE_PLACEHOLDER.finditer(word):
                if match[1] not in PLACEHOLDERS:
                    raise ValueError(
                        f"command word {word!r} uses the unknown placeholder {match[0]}; "
                        f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> IssueSink:
        if (self.folder is None) == (self.command is None):
            raise ValueError("issues needs exactly one of 'folder' (a folder for Markdown "
                             "files) and 'command' (an argv template)")
        return self


def issue_slug(key: str) -> str:
    """The file name stem for ``key``: its words (lowercase, ``-`` between) and a short hash
    of the whole key, so two keys never share a file."""
    words = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:60].rstrip("-")
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    return f"{words}-{digest}" if words else digest


def write_issue(sink: IssueSink, *, key: str, title: str, body: str, repo: str,
                name: str) -> dict[str, Any]:
    """Write one follow-up issue to ``sink``.

    Args:
        sink: the destination.
        key: identifies the issue across resumes (for example ``<thread id>:<name>``); the
            file name is made from it.
        title: one line (newlines are turned into spaces).
        body: Markdown.
        repo: the repository's path; name: the repository's name in the change.

    Returns:
        ``{"kind": "file", "path", "created", "error"}`` (``created`` false when the file
        was already there or could not be written; ``error`` None or why not), or
        ``{"kind": "command", "argv", "exit_code", "output_tail", "timed_out", "error"}``
        (``exit_code`` None when the command did not start or timed out).

    Raises:
        ValueError: ``key`` is empty.
    """
    if not key:
        raise ValueError("write_issue needs a non-empty key")
    title = " ".join(title.split())
    if sink.folder is not None:
        return _write_file(sink.folder, key, title, body)
    assert sink.command is not None  # the model guarantees one of the two
    return _run_command(sink, title=title, body=body, repo=repo, name=name)


def _write_file(folder: Path, key: str, title: str, body: str) -> dict[str, Any]:
    path = folder.expanduser() / f"{issue_slug(key)}.md"
    result: dict[str, Any] = {"kind": "file", "path": str(path), "created": False,
                              "error": None}
    if path.exists():
        return result
    text = f"# {title}\n\n{body.rstrip()}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write aside, then link into place: a crash never leaves half a file under the
        # final name, and link() refuses to replace a file written meanwhile
        fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".issue-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.link(scratch, path)
            result["created"] = True
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(scratch)
    except OSError as exc:
        result["error"] = f"cannot write {path}: {exc.strerror or exc}"
    return result


def _run_command(sink: IssueSink, *, title: str, body: str, repo: str,
                 name: str) -> dict[str, Any]:
    assert sink.command is not None
    uses_file = any("{body_file}" in word for word in sink.command)
    body_file = None
    if uses_file:
        fd, body_file = tempfile.mkstemp(prefix="orchestrator-issue-", suffix=".md")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
    values = {"title": title, "body": body, "body_file": body_file or "", "repo": repo,
              "name": name}
    argv = [_PLACEHOLDER.sub(lambda m: values[m[1]], word) for word in sink.command]
    result: dict[str, Any] = {"kind": "command", "argv": argv, "exit_code": None,
                              "output_tail": "", "timed_out": False, "error": None}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=child_environment(),
                                start_new_session=True)
    except OSError as exc:
        result["error"] = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
        _remove(body_file)
        return result
    try:
        out, _ = proc.communicate(timeout=sink.timeout)
        result["exit_code"] = proc.returncode
        if proc.returncode != 0:
            result["error"] = f"{argv[0]} exited with {proc.returncode}"
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, _ = proc.communicate()
        result["timed_out"] = True
        result["error"] = f"{argv[0]} did not finish within {sink.timeout:g} s; killed"
    finally:
        if proc.poll() is None:  # interrupted while waiting: leave no child behind
            kill_group(proc.pid)
            proc.wait()
        _remove(body_file)
    result["output_tail"] = out.decode("utf-8", "replace")[-_OUTPUT_TAIL:]
    return result


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)

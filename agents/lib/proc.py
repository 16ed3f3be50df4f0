"""Running tools (git, ruff, test commands) for the built-in agents, without a shell.

Every run has a timeout; on expiry the whole process group is killed, so a hung test
command cannot leave grandchildren behind. Every child gets the environment of
:func:`orchestrator.childenv.child_environment` (never ``ORCHESTRATOR_*``, so never the bus
secret or the database and Redis URLs), plus what the call adds.

The rules a repository path or a ref must obey live in :mod:`orchestrator.contracts.repos`,
shared with the graphs; :func:`repo_rule` runs one of them for a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.agent import HandlerError
from orchestrator.childenv import child_environment
from orchestrator.contracts.repos import GIT_ENV, RepositoryError, repository_top
from orchestrator.errors import AgentErrorCode

__all__ = ["Completed", "run", "git", "repo_rule", "resolve_repo", "resolve_folder", "kill_group",
           "child_env", "NO_OWN_PLUGIN"]

T = TypeVar("T")

_OUTPUT_LIMIT = 200_000  # characters of each stream kept; test output can be huge

# pytest option keeping this project's own plugin (entry point ``pytest11 = orchestrator``)
# out of the tests under review; the repository's own conftest.py files still load
NO_OWN_PLUGIN = "-p no:orchestrator"


def child_env(extra: Mapping[str, str] | None = None, *, test_command: bool = False) -> dict[str, str]:
    """The environment of a child process: see :mod:`orchestrator.childenv`; ``extra`` on top.

    With ``test_command`` (tests of the code under review), ``PYTEST_ADDOPTS`` also gets
    ``-p no:orchestrator``, so a pytest started by the command never loads this project's
    plugin (its fixtures and side effects), whatever wraps it.
    """
    env = child_environment(extra)
    if test_command:
        env["PYTEST_ADDOPTS"] = f"{env.get('PYTEST_ADDOPTS', '')} {NO_OWN_PLUGIN}".strip()
    return env


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False


async def run(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    test_command: bool = False,
) -> Completed:
    """Run ``argv`` and collect its output; a timeout kills its process group.

    The child's environment is :func:`child_env` with ``env`` added (never the parent's whole
    environment); ``test_command`` marks tests of the code under review.

    Raises:
        HandlerError: ``command_not_found`` when the program does not exist.
    """
    started = time.perf_counter()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=child_env(env, test_command=test_command),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise HandlerError(AgentErrorCode.COMMAND_NOT_FOUND,
                           f"{argv[0]!r} was not found (cwd {cwd}); install it or fix the command") from None
    timed_out = False
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        timed_out = True
        kill_group(proc.pid)
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        kill_group(proc.pid)
        raise
    return Completed(
        list(argv), proc.returncode if proc.returncode is not None else -9,
        out.decode("utf-8", "replace")[-_OUTPUT_LIMIT:],
        err.decode("utf-8", "replace")[-_OUTPUT_LIMIT:],
        time.perf_counter() - started, timed_out,
    )


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (started with ``start_new_session``), if any."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def git(repo: str | Path, *args: str, timeout: float = 60.0, check: bool = True) -> Completed:
    """``git -C repo args...``; with ``check``, a failure raises naming the command."""
    done = await run(["git", "-C", str(repo), *args], timeout=timeout, env=GIT_ENV)
    if check and (done.returncode != 0 or done.timed_out):
        detail = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        raise HandlerError(AgentErrorCode.GIT_FAILED, f"git {' '.join(args)} failed in {repo}: {detail}",
                           blames_input=True)
    return done


async def repo_rule(rule: Callable[..., T], *args: Any) -> T:
    """``rule(*args)``, a check of :mod:`orchestrator.contracts.repos` (the one home of the
    repository and ref rules a graph checks too), in a thread: it runs git, blocking.

    Raises:
        HandlerError: ``invalid_input`` with the rule's message when it refuses (or the
            system refuses the path); ``git_failed`` (retryable) when git did not answer in
            time; ``command_not_found`` without git.
    """
    try:
        return await asyncio.to_thread(rule, *args)
    except RepositoryError as exc:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, str(exc)) from None
    except OSError as exc:
        if exc.filename == "git":
            raise HandlerError(AgentErrorCode.COMMAND_NOT_FOUND,
                               "'git' was not found; install it") from None
        # the system refuses the path itself (a name too long...)
        raise HandlerError(AgentErrorCode.INVALID_INPUT,
                           f"{args[0] if args else ''}: the system refuses the path "
                           f"({exc.strerror or exc})") from None
    except subprocess.TimeoutExpired as exc:
        raise HandlerError(AgentErrorCode.GIT_FAILED, f"{shlex.join(exc.cmd)} timed out",
                           retryable=True) from None


async def resolve_repo(raw: object) -> Path:
    """The top folder of the git repository ``raw`` names
    (:func:`~orchestrator.contracts.repos.repository_top`), for handlers whose payload is not
    yet a contract model.

    Raises:
        HandlerError: ``invalid_input`` when it is not a path to a git repository.
    """
    if not isinstance(raw, str) or not raw:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'repo', the path of a git repository")
    return await repo_rule(repository_top, raw)


async def resolve_folder(raw: object) -> Path:
    """The absolute path of the folder ``raw`` names (a repository or not).

    Raises:
        HandlerError: ``invalid_input`` when it is not a folder.
    """
    if not isinstance(raw, str) or not raw:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'repo', the path of a folder")
    path = await asyncio.to_thread(lambda: Path(raw).expanduser().resolve())
    if not await asyncio.to_thread(path.is_dir):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"{raw} is not a folder")
    return path

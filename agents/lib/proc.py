"""Running tools (git, ruff, test commands) for the built-in agents, without a shell.

Every run has a timeout; on expiry the whole process group is killed, so a hung test
command cannot leave grandchildren behind. Every child gets the environment of
:func:`orchestrator.childenv.child_environment` (never ``ORCHESTRATOR_*``, so never the bus
secret or the database and Redis URLs), plus what the call adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.agent import HandlerError
from orchestrator.childenv import child_environment
from orchestrator.errors import AgentErrorCode

__all__ = ["Completed", "run", "git", "resolve_repo", "resolve_folder", "ref_arg", "commit_of",
           "child_env", "NO_OWN_PLUGIN"]

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
        _kill_group(proc.pid)
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    return Completed(
        list(argv), proc.returncode if proc.returncode is not None else -9,
        out.decode("utf-8", "replace")[-_OUTPUT_LIMIT:],
        err.decode("utf-8", "replace")[-_OUTPUT_LIMIT:],
        time.perf_counter() - started, timed_out,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def git(repo: str | Path, *args: str, timeout: float = 60.0, check: bool = True) -> Completed:
    """``git -C repo args...``; with ``check``, a failure raises naming the command."""
    done = await run(["git", "-C", str(repo), *args], timeout=timeout,
                     env={"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    if check and (done.returncode != 0 or done.timed_out):
        detail = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        raise HandlerError(AgentErrorCode.GIT_FAILED, f"git {' '.join(args)} failed in {repo}: {detail}",
                           blames_input=True)
    return done


async def resolve_repo(raw: object) -> Path:
    """The top folder of the git repository ``raw`` names.

    Raises:
        HandlerError: ``invalid_input`` when it is not a path to a git repository.
    """
    if not isinstance(raw, str) or not raw:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'repo', the path of a git repository")
    path = await asyncio.to_thread(os.path.expanduser, raw)
    if not await asyncio.to_thread(os.path.isdir, path):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"repository folder {raw} does not exist")
    done = await git(path, "rev-parse", "--show-toplevel", check=False)
    if done.returncode != 0:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"{raw} is not a git repository")
    # absolute, symbolic links resolved by git; only git's newline goes (a name may end in " ")
    return Path(done.stdout.removesuffix("\n"))


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


def ref_arg(payload: dict[str, Any], key: str, default: str | None = None) -> str:
    """The branch or commit named by ``payload[key]`` (never an option-like ``-x``).

    Raises:
        HandlerError: ``invalid_input`` when it is missing or not a plausible ref.
    """
    value = payload.get(key, default)
    if not isinstance(value, str) or not value or value.startswith("-"):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"payload needs {key!r}, a branch or commit")
    return value


async def commit_of(repo: str | Path, ref: str) -> str:
    """The commit ``ref`` names in ``repo``.

    Raises:
        HandlerError: ``invalid_input`` when it names none.
    """
    done = await git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if done.returncode != 0:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"{ref!r} is not a branch or commit of {repo}")
    return done.stdout.removesuffix("\n")


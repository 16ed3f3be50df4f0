"""The environment of the processes agents start: test commands of the code under review,
plan commands, traffic and rollback commands, runbook actions, git and ruff.

A child gets the worker's own environment minus:

* every ``ORCHESTRATOR_*`` variable (the bus secret, the database and Redis URLs, ...), always;
* the names or shell patterns (``AWS_*``) listed in the ``child_env_withhold`` setting
  (``ORCHESTRATOR_CHILD_ENV_WITHHOLD``, comma separated).

plus what the request itself asks for (a restart's ``env``; ``GIT_TERMINAL_PROMPT=0`` and
``LC_ALL=C`` for git). The worker applies its setting to every handler it runs
(:func:`withholding`), so no agent has to pass it along; code that runs outside a worker gets
the fixed part only.
"""

from __future__ import annotations

import contextvars
import fnmatch
import os
from collections.abc import Iterable, Mapping
from types import TracebackType

__all__ = ["ALWAYS_WITHHELD", "child_environment", "withholding", "withheld_patterns"]

ALWAYS_WITHHELD: tuple[str, ...] = ("ORCHESTRATOR_*",)

_withhold: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "orchestrator_child_env_withhold", default=())


def withheld_patterns() -> tuple[str, ...]:
    """The patterns withheld from children started now (fixed ones, then configured ones)."""
    return ALWAYS_WITHHELD + _withhold.get()


def _withheld(name: str, patterns: Iterable[str]) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def child_environment(
    extra: Mapping[str, str] | None = None,
    *,
    base: Mapping[str, str] | None = None,
    withhold: Iterable[str] | None = None,
) -> dict[str, str]:
    """The environment for a child process: ``base`` (default: this process's environment)
    without the withheld variables, then ``extra`` (asked for by the request) on top.

    ``withhold`` replaces the configured patterns (:func:`withholding`); ``ORCHESTRATOR_*``
    is withheld in every case.
    """
    source = os.environ if base is None else base
    patterns = ALWAYS_WITHHELD + (tuple(withhold) if withhold is not None else _withhold.get())
    env = {k: v for k, v in source.items() if not _withheld(k, patterns)}
    env.update(extra or {})
    return env


class withholding:  # noqa: N801 - used like a function: ``with withholding(...):``
    """Within this block (sync or async; tasks and threads started in it inherit it), child
    processes are also denied the variables matching ``patterns``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = tuple(patterns)
        self._token: contextvars.Token[tuple[str, ...]] | None = None

    def __enter__(self) -> None:
        self._token = _withhold.set(self._patterns)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            _withhold.reset(self._token)
            self._token = None

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(kind, exc, tb)

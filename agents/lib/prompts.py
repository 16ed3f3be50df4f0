"""Prompts as versioned templates: ``agents/prompts/NAME.md``.

A template's first line is ``version: N``; after it, the system message, a line ``---``,
and the human message, whose ``{fields}`` are filled with :meth:`str.format` (a literal
brace is doubled). The version travels with every model call (``PromptRef``), so the ledger
says which wording produced each answer: change the wording, raise the version.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from orchestrator.errors import InvalidConfiguration
from orchestrator.llm import PromptRef

__all__ = ["render_prompt"]

_FOLDER = Path(__file__).resolve().parent.parent / "prompts"
_VERSION = re.compile(r"version:\s*(\S+)\s*")


@functools.cache
def _template(name: str) -> tuple[str, str, str]:
    """(version, system, human template) of ``name``, read once per process."""
    path = _FOLDER / f"{name}.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfiguration(f"prompt template {path} cannot be read: {exc}") from None
    first, _, rest = text.partition("\n")
    version = _VERSION.fullmatch(first)
    system, separator, human = rest.partition("\n---\n")
    if version is None or not separator:
        raise InvalidConfiguration(f"prompt template {path}: the first line must be "
                                   "'version: N', and a line '---' must end the system message")
    return version.group(1), system.strip(), human.strip()


def render_prompt(name: str, **fields: Any) -> tuple[PromptRef, list[BaseMessage]]:
    """The messages of template ``name`` with ``fields`` filled in, and its reference."""
    version, system, human = _template(name)
    return PromptRef(name, version), [SystemMessage(system), HumanMessage(human.format(**fields))]


def fenced_file(rel: str, text: str | None) -> str:
    """A file as the prompts show it: fenced under its name; "(none)" when it does not exist
    (``None``). The developer and ``orchestrator estimate`` show files the same way."""
    return "(none)" if text is None else f"`{rel}`:\n```\n{text}\n```"

"""ruff, the linter installed with the orchestrator: where it is and what its JSON says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ruff_binary", "ruff_findings"]


def ruff_binary() -> str:
    """The ruff executable installed with the orchestrator."""
    from ruff.__main__ import find_ruff_bin

    return str(find_ruff_bin())


def ruff_findings(raw: list[dict[str, Any]], root: str | Path) -> list[dict[str, Any]]:
    """ruff's JSON output as findings with paths relative to ``root``, sorted."""
    root = Path(root).resolve()
    findings = [
        {
            "file": Path(item["filename"]).resolve().relative_to(root).as_posix(),
            "line": item["location"]["row"],
            "column": item["location"]["column"],
            "code": item.get("code") or "syntax-error",
            "message": item["message"],
        }
        for item in raw
    ]
    return sorted(findings, key=lambda f: (f["file"], f["line"], f["column"], f["code"]))

"""The exit codes of ``orchestrator`` and the error that means bad usage (exit 2)."""

from __future__ import annotations

from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PARTIAL = 0, 1, 2, 3, 4
_STATUS_EXIT = {"completed": EXIT_OK, "interrupted": EXIT_INTERRUPTED, "failed": EXIT_FAILED,
                "running": EXIT_FAILED}


def exit_code(result: Any) -> int:
    """The exit code of a run: by its status; a completed run whose result says ``partial``
    (a plan that finished with tasks skipped) is not a clean success."""
    final = result.final_result
    if result.status == "completed" and isinstance(final, dict) and final.get("status") == "partial":
        return EXIT_PARTIAL
    return _STATUS_EXIT.get(result.status, EXIT_FAILED)


class UsageError(Exception):
    """Bad command-line usage: exit 2 with the message."""

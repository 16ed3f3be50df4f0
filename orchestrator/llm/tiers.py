"""Model tier of a task from what is known about it before it runs.

Bigger files, files many others depend on (a mistake spreads), files that need much context
(many dependencies) and fixes (an existing file to understand) score higher; the score picks
small, medium or large. A retry after a failed attempt moves up one tier: the cheaper model
already had its chance.
"""

from __future__ import annotations

from orchestrator.llm.config import TIERS, Tier

__all__ = ["choose_tier"]


def choose_tier(size_lines: int, fan_in: int, fan_out: int, is_new: bool,
                attempt: int = 1) -> tuple[Tier, str]:
    """(tier, reason) for a task.

    Args:
        size_lines: lines of the file (expected lines for a new one, if known; 0 if not).
        fan_in: files that import it; fan_out: files it imports.
        is_new: written from a description (True) or a fix of an existing file.
        attempt: 1 for the first try; each retry after a failure moves up one tier.
    """
    points = [
        (2 if size_lines > 300 else 1 if size_lines > 80 else 0, f"{size_lines} lines"),
        (2 if fan_in >= 5 else 1 if fan_in >= 2 else 0, f"{fan_in} dependents"),
        (1 if fan_out >= 5 else 0, f"{fan_out} dependencies"),
        (0 if is_new else 1, "a fix of an existing file"),
    ]
    score = sum(p for p, _ in points)
    why = [what for p, what in points if p]
    base = 0 if score <= 1 else 1 if score <= 3 else 2
    level = min(base + max(attempt - 1, 0), len(TIERS) - 1)
    reason = f"score {score} ({', '.join(why) or 'small, self-contained, new'})"
    if level != base:
        reason += f"; attempt {attempt} after a failure: up from {TIERS[base]}"
    return TIERS[level], reason

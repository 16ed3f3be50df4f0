"""The peer systems ``bench.peers`` measures ours against (Celery, arq, Dramatiq, DBOS): each
module defines the same no-op work in that system's own terms, and the worker side of it.

Settings come from the environment ``bench.peers`` gives the worker processes it starts:
``BENCH_PEER_REDIS_URL`` (the Redis the run uses) and ``BENCH_PEER_TAG`` (the run's own key
prefix, so runs never see each other's queues or results).
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["redis_url", "tag", "Counter"]


def redis_url() -> str:
    """The Redis the run uses (``BENCH_PEER_REDIS_URL``)."""
    return os.environ.get("BENCH_PEER_REDIS_URL", "redis://127.0.0.1:6379/0")


def tag() -> str:
    """The run's key prefix (``BENCH_PEER_TAG``): read when a peer's module is imported."""
    return os.environ.get("BENCH_PEER_TAG", "local")


class Counter:
    """Executions of the no-op task in a worker process, and the distinct tokens executed:
    ``executions - unique`` is the number of duplicated executions (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.executions = 0
        self.tokens: set[str] = set()

    def add(self, token: str) -> str:
        with self._lock:
            self.executions += 1
            self.tokens.add(token)
        return token

    def report(self, reset: bool) -> dict[str, Any]:
        with self._lock:
            answer = {"executions": self.executions, "unique": len(self.tokens)}
            if reset:
                self.executions = 0
                self.tokens.clear()
        return answer

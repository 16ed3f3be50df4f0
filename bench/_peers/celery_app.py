"""Celery's side of ``bench.peers``: the no-op task and the execution counter, on Redis as
broker and result backend.

    python -m celery -A bench._peers.celery_app worker --pool=solo ...   (bench.peers starts it)

Every key the run makes starts with ``bench-peers-<tag>:celery:`` (kombu's and the result
backend's ``global_keyprefix``), and the tasks go to a queue of the run's own.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from . import Counter, redis_url, tag

REDIS_URL, TAG = redis_url(), tag()

__all__ = ["app", "noop", "stats", "CONFIG", "PREFIX"]

PREFIX = f"bench-peers-{TAG}:celery:"
QUEUE = f"bench-peers-{TAG}"

#: what the bench prints as Celery's configuration (besides the worker's command line)
CONFIG: dict[str, Any] = {
    "broker": "redis", "result_backend": "redis (pub/sub result consumer)",
    "worker_prefetch_multiplier": 16, "task_acks_late": False,
    "serializer": "json",
}

app = Celery("bench_peers", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    worker_prefetch_multiplier=CONFIG["worker_prefetch_multiplier"],
    task_acks_late=CONFIG["task_acks_late"],
    task_serializer="json", result_serializer="json", accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_counter = Counter()


@app.task(name="bench.noop")
def noop(token: str) -> str:
    """The no-op: counts the execution and answers its token."""
    return _counter.add(token)


@app.task(name="bench.stats")
def stats(reset: bool = False) -> dict[str, Any]:
    """``{"executions", "unique"}`` since the last reset."""
    return _counter.report(reset)

"""Dramatiq's side of ``bench.peers``: the no-op actor and the execution counter, on the Redis
broker with the Results middleware (Redis backend).

    python -m dramatiq bench._peers.dramatiq_app --processes 1 --queues <variant> ...

Two variants, each on a queue of its own so each worker only takes its own messages: ``fast``
(the worker started with ``dramatiq_worker_timeout=2``: an idle worker looks for messages again
after ~1 ms) and ``default`` (Dramatiq's 1,000 ms cap on that back-off). Keys start with
``bench-peers-<tag>:dramatiq``.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from . import Counter, redis_url, tag

REDIS_URL, TAG = redis_url(), tag()

__all__ = ["broker", "backend", "ACTORS", "VARIANTS"]

VARIANTS = {"fast": {"dramatiq_worker_timeout": "2"}, "default": {}}

broker = RedisBroker(url=REDIS_URL, namespace=f"bench-peers-{TAG}:dramatiq")
backend = RedisBackend(url=REDIS_URL, namespace=f"bench-peers-{TAG}:dramatiq-results")
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)

_counter = Counter()


def _actors(variant: str) -> tuple[Any, Any]:
    @dramatiq.actor(actor_name=f"noop_{variant}", queue_name=variant, store_results=True,
                    max_retries=0)
    def noop(token: str) -> str:
        return _counter.add(token)

    @dramatiq.actor(actor_name=f"stats_{variant}", queue_name=variant, store_results=True,
                    max_retries=0)
    def stats(reset: bool = False) -> dict[str, Any]:
        return _counter.report(reset)

    return noop, stats


#: variant -> (noop actor, stats actor)
ACTORS = {variant: _actors(variant) for variant in VARIANTS}

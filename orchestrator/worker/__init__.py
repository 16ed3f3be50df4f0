"""The worker runtime: hosts agents, consumes their request streams, answers every request.

A worker registers each agent instance in the registry, heartbeats, reads requests (higher
priority first) with bounded concurrency, and answers each one: a handler's exception becomes
an ``error`` response, never a dead worker. Responses are stored by ``request_id`` before they
are acknowledged, so a redelivered or re-sent request is answered from the store, and an
``inflight`` claim keeps two consumers from executing the same request at once.

On :meth:`Worker.stop` (SIGTERM in ``orchestrator worker``) it stops reading, lets in-flight
handlers finish within a grace period, and deregisters; a handler still running after that is
cancelled and its message stays pending for another consumer.

Its parts, one mechanism each, are mixins of :class:`Worker` over the state they share
(``state``): ``lifecycle`` (start, graceful stop; the class itself), ``dispatch`` (reading and
reclaiming requests, a task each), ``answer`` (one delivery: dead-letter, replay or execute),
``claims`` (execution claims and their renewal), ``execute`` (a handler under the deadline,
errors mapped to responses), ``autoscale`` and ``capacity`` (concurrency on the backlog),
``heartbeat`` (registry rows).
"""

from .lifecycle import Worker

__all__ = ["Worker"]

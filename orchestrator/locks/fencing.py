"""Fencing tokens: where they are issued, how they travel, and how an agent checks one.

A lock held for some work can be lost while the work still runs (its holder hung past the
lock's expiry, or was taken for dead): a newer holder may then change the resource too. Every
holding gets a fencing token, strictly increasing per resource, and whoever changes the
resource refuses a token older than the newest it has seen, so a stale holder's late write is
refused.

* Issued, in PostgreSQL: each statement that takes a lock (the ``token`` of its
  ``resource_locks`` row) hands out the next token: :data:`TAKE`, :data:`ACQUIRE` and
  :data:`TAKE_OVER`, used by :class:`~orchestrator.locks.ResourceLockManager` to acquire a lock
  for a block of code, and :data:`HOLD`, for locks a workflow holds across steps
  (:mod:`orchestrator.locks.held`), which keeps the token while the same workflow takes it
  again. Acquisitions commit durably: a token handed out must never be handed out again, even
  after a PostgreSQL crash.
* Carried, in the request: :func:`~orchestrator.calls.call_agent` puts the token of each lock
  it holds for the call, and those given with ``fencing=`` (locks the workflow holds), into
  ``AgentRequest.fencing`` (resource -> token); a handler reads them as
  ``RequestContext.fencing``.
* Checked, by the agent, before it changes a resource: :func:`check_fencing`
  (``RequestContext.check_fencing``) refuses a request that holds no token for the resource,
  and one whose token is older than the newest seen for it. The newest token seen per resource
  is a high-water mark in Redis, next to the bus's keys (``ns:fence:<resource>``), shared by
  every agent of the namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..agent import HandlerError
from ..errors import AgentErrorCode
from ..messages import AgentRequest

if TYPE_CHECKING:
    from ..bus import EventBus

__all__ = ["ACQUIRE", "HOLD", "TAKE", "TAKE_OVER", "check_fencing", "check_token", "fence_key"]

# -- issued: the statements that take a lock and hand out its next token ---------------------

# The first attempt of an acquisition: take the lock if its row exists and it is free or
# expired. Nothing returned: it is held (or new): look again with ACQUIRE.
TAKE = """
UPDATE resource_locks
SET holder = %(holder)s, token = token + 1, acquired_at = now(),
    expires_at = now() + make_interval(secs => %(ttl)s)
WHERE namespace = %(ns)s AND resource = %(resource)s AND (holder IS NULL OR expires_at < now())
RETURNING token, expires_at"""

# One attempt: take the lock if it is free or expired (creating its row the first time),
# else report who holds it and for how long. The UPDATE locks only a row it takes; a refused
# attempt of a waiter (``wait`` > 0: seconds it will wait at most) writes only
# ``wanted_until`` (its deadline, so that releases before then send their NOTIFY), and a
# refused attempt that will not wait writes nothing. A refused attempt's commit need not wait
# for the disk (it hands out no token).
ACQUIRE = """
WITH taken AS (
    UPDATE resource_locks
    SET holder = %(holder)s, token = token + 1, acquired_at = now(),
        expires_at = now() + make_interval(secs => %(ttl)s)
    WHERE namespace = %(ns)s AND resource = %(resource)s
      AND (holder IS NULL OR expires_at < now())
    RETURNING token, expires_at
), created AS (
    INSERT INTO resource_locks (namespace, resource, holder, token, acquired_at, expires_at)
    SELECT %(ns)s, %(resource)s, %(holder)s, 1, now(), now() + make_interval(secs => %(ttl)s)
    WHERE NOT EXISTS (
        SELECT 1 FROM resource_locks WHERE namespace = %(ns)s AND resource = %(resource)s)
    ON CONFLICT (namespace, resource) DO NOTHING
    RETURNING token, expires_at
), wanted AS (
    UPDATE resource_locks
    SET wanted_until = GREATEST(wanted_until, now() + make_interval(secs => %(wait)s))
    WHERE namespace = %(ns)s AND resource = %(resource)s AND %(wait)s > 0
      AND NOT EXISTS (SELECT 1 FROM taken) AND NOT EXISTS (SELECT 1 FROM created)
    RETURNING holder, expires_at
)
SELECT token, expires_at, NULL::text AS holder, NULL::float8 AS left_s, NULL::text AS sc
FROM taken
UNION ALL
SELECT token, expires_at, NULL::text, NULL::float8, NULL::text FROM created
UNION ALL
SELECT NULL::bigint, NULL::timestamptz, holder,
       GREATEST(EXTRACT(EPOCH FROM expires_at - now()), 0)::float8,
       set_config('synchronous_commit', 'off', true)
FROM wanted
UNION ALL
SELECT NULL::bigint, NULL::timestamptz, holder,
       GREATEST(EXTRACT(EPOCH FROM expires_at - now()), 0)::float8,
       set_config('synchronous_commit', 'off', true)
FROM resource_locks
WHERE namespace = %(ns)s AND resource = %(resource)s AND %(wait)s <= 0
  AND NOT EXISTS (SELECT 1 FROM taken) AND NOT EXISTS (SELECT 1 FROM created)"""

# Take a lock from a holder whose process is known to be dead, if it still holds it.
TAKE_OVER = """
UPDATE resource_locks SET holder = %s, token = token + 1, acquired_at = now(),
                          expires_at = now() + make_interval(secs => %s)
WHERE namespace = %s AND resource = %s AND holder = %s
RETURNING token, expires_at"""

# Take (or extend) a lock a workflow holds across steps: the same holder taking it again
# before its expiry keeps its token and acquisition time; anyone else gets it only when it
# is free or expired, with the next token. Nothing returned: someone else holds it.
HOLD = """
INSERT INTO resource_locks AS l (namespace, resource, holder, token, acquired_at,
                                 expires_at)
VALUES (%s, %s, %s, 1, now(), now() + make_interval(secs => %s))
ON CONFLICT (namespace, resource) DO UPDATE
SET holder = EXCLUDED.holder,
    token = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at >= now()
                 THEN l.token ELSE l.token + 1 END,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at >= now()
                       THEN l.acquired_at ELSE now() END,
    expires_at = EXCLUDED.expires_at
WHERE l.holder IS NULL OR l.expires_at < now() OR l.holder = EXCLUDED.holder
RETURNING token, expires_at, acquired_at = now() AS fresh"""

# -- checked: the newest token seen per resource, in Redis -----------------------------------

# Accept a fencing token unless a newer one was already seen for the resource; remember it.
_FENCE_LUA = """
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < seen then return seen end
redis.call('SET', KEYS[1], ARGV[1])
return -1
"""


def fence_key(namespace: str, resource: str) -> str:
    """The Redis key of the newest token seen for ``resource`` in ``namespace``."""
    return f"{namespace}:fence:{resource}"


async def check_token(bus: EventBus, resource: str, token: int) -> int | None:
    """Record ``token`` as seen for ``resource``; returns the newer token that makes it
    stale, or None when it is current."""
    newest = int(await bus.redis.eval(_FENCE_LUA, 1, fence_key(bus.keys.namespace, resource),
                                      token))
    return None if newest < 0 else newest


async def check_fencing(request: AgentRequest, resource: str, bus: EventBus | None) -> int:
    """Call before changing ``resource``: returns the request's fencing token for it.

    Without a bus (a handler run locally) only the token's presence is checked.

    Raises:
        HandlerError: ``missing_fencing_token`` when the requester did not hold the lock,
            ``stale_fencing_token`` when a newer holder has already been seen.
    """
    token = request.fencing.get(resource)
    if token is None:
        raise HandlerError(
            AgentErrorCode.MISSING_FENCING_TOKEN,
            f"changing {resource!r} requires holding its lock (call with locks=[{resource!r}])",
        )
    if bus is not None:
        newer = await check_token(bus, resource, token)
        if newer is not None:
            raise HandlerError(
                AgentErrorCode.STALE_FENCING_TOKEN,
                f"fencing token {token} for {resource!r} is older than {newer}: the lock "
                "was lost to a newer holder, so this write is refused",
            )
    return token

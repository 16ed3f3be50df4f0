"""LangGraph's result cache (``CachePolicy``) in PostgreSQL.

Compile a graph with ``cache=PostgresCache(db, namespace)`` and give a node or a ``@task``
a ``CachePolicy``: LangGraph looks results up by the policy's key before running it and stores
what it returned after. Entries are per namespace (like everything else) and expire with the
policy's ``ttl``. Only the async methods are supported: the orchestrator runs graphs with
``astream``/``ainvoke``.

A cache cannot know whether what it holds is still true outside it (a task's result in a
working tree that was since reset): a graph that finds out forgets the entry with
:meth:`PostgresCache.aforget`, and calling the task again then runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.cache.base import BaseCache, FullKey, Namespace
from orchestrator.state.db import Database
from xxhash import xxh3_128_hexdigest

__all__ = ["PostgresCache", "stored_key"]

_SEP = "\x1f"


def stored_key(policy_key: str | bytes) -> str:
    """The key LangGraph stores for what a ``CachePolicy.key_func`` returned (its xxh3-128
    digest, as ``langgraph.pregel._algo`` computes it)."""
    return xxh3_128_hexdigest(policy_key.encode() if isinstance(policy_key, str) else policy_key)


class PostgresCache(BaseCache[Any]):
    def __init__(self, db: Database, namespace: str) -> None:
        super().__init__()
        self.db = db
        self.namespace = namespace

    @staticmethod
    def _ns(ns: Namespace) -> str:
        return _SEP.join(ns)

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        raise NotImplementedError("PostgresCache is async: run the graph with ainvoke/astream")

    def set(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        raise NotImplementedError("PostgresCache is async: run the graph with ainvoke/astream")

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        raise NotImplementedError("PostgresCache is async: use aclear")

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        if not keys:
            return {}
        wanted = {(self._ns(ns), key): (ns, key) for ns, key in keys}
        rows = await self.db.fetch(
            """
            SELECT c.cache_ns, c.key, c.encoding, c.value
            FROM graph_cache c
            JOIN unnest(%s::text[], %s::text[]) AS w(cache_ns, key)
              ON c.cache_ns = w.cache_ns AND c.key = w.key
            WHERE c.namespace = %s AND (c.expires_at IS NULL OR c.expires_at > now())""",
            ([ns for ns, _ in wanted], [key for _, key in wanted], self.namespace),
        )
        return {wanted[(r["cache_ns"], r["key"])]:
                self.serde.loads_typed((r["encoding"], bytes(r["value"]))) for r in rows}

    async def aset(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        rows = []
        for (ns, key), (value, ttl) in pairs.items():
            encoding, data = self.serde.dumps_typed(value)
            rows.append((self.namespace, self._ns(ns), key, encoding, data, ttl))
        if not rows:
            return
        async with self.db.transaction() as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    """
                    INSERT INTO graph_cache (namespace, cache_ns, key, encoding, value, expires_at)
                    VALUES (%s, %s, %s, %s, %s,
                            CASE WHEN %s::float IS NULL THEN NULL
                                 ELSE now() + make_interval(secs => %s::float) END)
                    ON CONFLICT (namespace, cache_ns, key) DO UPDATE
                    SET encoding = EXCLUDED.encoding, value = EXCLUDED.value,
                        created_at = now(), expires_at = EXCLUDED.expires_at""",
                    [(n, c, k, e, d, t, t) for n, c, k, e, d, t in rows],
                )

    async def aforget(self, policy_keys: Sequence[str | bytes]) -> int:
        """Delete the entries of these ``CachePolicy`` keys (what ``key_func`` returned), in
        every cache namespace of this namespace; returns how many were deleted."""
        if not policy_keys:
            return 0
        return await self.db.execute(
            "DELETE FROM graph_cache WHERE namespace = %s AND key = ANY(%s)",
            (self.namespace, [stored_key(k) for k in policy_keys]))

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        if namespaces is None:
            await self.db.execute("DELETE FROM graph_cache WHERE namespace = %s",
                                  (self.namespace,))
        else:
            await self.db.execute(
                "DELETE FROM graph_cache WHERE namespace = %s AND cache_ns = ANY(%s)",
                (self.namespace, [self._ns(ns) for ns in namespaces]),
            )

-- LangGraph's node/task result cache (CachePolicy), kept in PostgreSQL: plan_execution uses
-- it so a task whose inputs were already done successfully is not redone.
CREATE TABLE IF NOT EXISTS graph_cache (
    namespace   text NOT NULL,
    cache_ns    text NOT NULL,
    key         text NOT NULL,
    encoding    text NOT NULL,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (namespace, cache_ns, key)
);
CREATE INDEX IF NOT EXISTS graph_cache_expiry ON graph_cache (expires_at)
    WHERE expires_at IS NOT NULL;

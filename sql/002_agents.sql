-- Agent registry: each live agent instance registers, heartbeats and deregisters.
CREATE TABLE IF NOT EXISTS agents (
    agent_id     text PRIMARY KEY,
    namespace    text NOT NULL,
    agent_type   text NOT NULL,
    capabilities text[] NOT NULL DEFAULT '{}',
    version      text NOT NULL DEFAULT '',
    host         text NOT NULL,
    pid          integer NOT NULL,
    status       text NOT NULL DEFAULT 'online'
        CHECK (status IN ('online', 'offline', 'draining')),
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS agents_ns_type_heartbeat
    ON agents (namespace, agent_type, heartbeat_at DESC);

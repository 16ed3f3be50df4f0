-- Index of every workflow run. LangGraph's checkpoint tables hold the graph state itself;
-- this table says what exists, its status, who runs it, and carries the optimistic lock.
CREATE TABLE IF NOT EXISTS workflows (
    thread_id            text PRIMARY KEY,
    namespace            text NOT NULL,
    workflow_type        text NOT NULL,
    status               text NOT NULL
        CHECK (status IN ('running', 'interrupted', 'completed', 'failed')),
    current_step         text,
    participating_agents text[] NOT NULL DEFAULT '{}',
    input                jsonb NOT NULL DEFAULT '{}'::jsonb,
    result               jsonb,
    error                jsonb,
    owner                text,
    heartbeat_at         timestamptz,
    version              bigint NOT NULL DEFAULT 1,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS workflows_ns_status_updated
    ON workflows (namespace, status, updated_at DESC);

CREATE INDEX IF NOT EXISTS workflows_owner_running
    ON workflows (owner) WHERE status = 'running';

-- A label for a LangGraph checkpoint id: "restore X" is time travel, not a copy of the state.
CREATE TABLE IF NOT EXISTS workflow_checkpoints (
    thread_id     text NOT NULL REFERENCES workflows (thread_id) ON DELETE CASCADE,
    name          text NOT NULL,
    checkpoint_ns text NOT NULL DEFAULT '',
    checkpoint_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, name)
);

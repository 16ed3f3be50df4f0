-- Sign-in sessions of the console (orchestrator/service/console/session.py). The browser holds
-- a random session id in an HttpOnly cookie; only its SHA-256 is kept here, with the token it
-- was opened with (by that token's hash: a revoked token, or its name given to a new token,
-- ends the session at its next request), the role it acts with, the CSRF token every console
-- POST must carry, and when it expires.
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash    text PRIMARY KEY,
    namespace  text NOT NULL,
    token_name text NOT NULL,
    token_hash text NOT NULL,
    role       text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS console_sessions_expires ON console_sessions (expires_at);

-- The console's runs list (orchestrator/service/console/listing.py): the runs that flag a
-- workflow as needing attention (dead, or queued again after a failed attempt) are few; this
-- finds them without reading the others.
CREATE INDEX IF NOT EXISTS runs_attention ON runs (namespace, thread_id, run_id DESC)
    WHERE status = 'dead' OR (status = 'queued' AND attempts >= 1);

-- A thread's runs in order (the run page's attempts, "was this dead run replayed since").
CREATE INDEX IF NOT EXISTS runs_by_thread ON runs (thread_id, run_id);

-- The runs list of one workflow type, most recently changed first.
CREATE INDEX IF NOT EXISTS workflows_ns_type_updated
    ON workflows (namespace, workflow_type, updated_at DESC);

-- The runs list's rows that need no attention, most recently changed first.
CREATE INDEX IF NOT EXISTS workflows_ns_updated ON workflows (namespace, updated_at DESC);

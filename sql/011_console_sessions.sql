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

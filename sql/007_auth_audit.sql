-- Bearer tokens of `orchestrator serve`. Only the SHA-256 of a token is kept: the token itself
-- is printed once by `orchestrator token create` and cannot be read back from here.
CREATE TABLE IF NOT EXISTS api_tokens (
    namespace  text NOT NULL,
    name       text NOT NULL,
    token_hash text NOT NULL UNIQUE,
    role       text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (namespace, name)
);

-- Who changed what, when, and from where: every change made through the HTTP API, the CLI or
-- a webhook. Append-only; `orchestrator audit` shows it.
CREATE TABLE IF NOT EXISTS audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace text,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb,
    source    text NOT NULL
);

CREATE INDEX IF NOT EXISTS audit_log_ns_id ON audit_log (namespace, id DESC);

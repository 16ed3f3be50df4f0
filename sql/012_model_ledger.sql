-- Model calls and budgets (orchestrator/llm). One row per model call really made: a handler
-- answered from the response store calls no model and records nothing; one re-executed after
-- a crash (a new execution of the same request) called the model again and is recorded again.
-- Tokens and cost are NULL when unknown (no usage reported, no price known), never 0.
CREATE TABLE IF NOT EXISTS model_calls (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    thread_id       text,
    workflow_type   text,
    node            text,
    agent_type      text NOT NULL,
    request_id      text NOT NULL,
    execution       text NOT NULL,
    sequence        integer NOT NULL,
    model           text NOT NULL,
    provider        text NOT NULL,
    input_tokens    integer,
    cached_tokens   integer,
    output_tokens   integer,
    reasoning_tokens integer,
    cost_usd        numeric(20, 10),
    price_source    text,
    latency_ms      double precision NOT NULL,
    prompt          text,
    tier            text,
    purpose         text NOT NULL,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, execution, sequence)
);

CREATE INDEX IF NOT EXISTS model_calls_ns_created ON model_calls (namespace, created_at);
CREATE INDEX IF NOT EXISTS model_calls_thread ON model_calls (thread_id) WHERE thread_id IS NOT NULL;

-- A budget scope: a workflow (thread:<id>), the namespace's day (namespace:<YYYY-MM-DD>) or an
-- agent type's day (agent:<type>:<YYYY-MM-DD>). A call reserves its worst-case cost on every
-- scope it falls in with one conditional UPDATE (spent + reserved + estimate <= limit), and
-- settles to its real cost after (reservation released, cost added, in one statement).
CREATE TABLE IF NOT EXISTS model_budgets (
    namespace    text NOT NULL,
    scope        text NOT NULL,
    limit_usd    numeric(20, 10) NOT NULL,
    reserved_usd numeric(20, 10) NOT NULL DEFAULT 0 CHECK (reserved_usd >= 0),
    spent_usd    numeric(20, 10) NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, scope)
);

-- The reservations in flight: a caller that dies never settles, so its reservation is
-- released once it expires (by the next reservation that finds a scope full).
CREATE TABLE IF NOT EXISTS model_reservations (
    id         bigserial PRIMARY KEY,
    namespace  text NOT NULL,
    scopes     text[] NOT NULL,
    amount_usd numeric(20, 10) NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS model_reservations_expiry ON model_reservations (namespace, expires_at);

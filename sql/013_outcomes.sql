-- Outcome records (orchestrator/learning/store.py). Each row is one attempt of something,
-- under a natural key, written with INSERT ... ON CONFLICT DO NOTHING: a node re-run after a
-- crash or a resume writes the same key again and adds nothing. Rows carry the settings
-- namespace, the workflow's thread and when the outcome was known (recorded_at).

-- A healing attempt of self_healing: the n-th fix of a thread (attempt), the issue it treated
-- (the diagnosis; manual: a person's action after an escalation), the action (action_key names
-- it: a runbook action's "name", else its type, e.g. "restart", "wait 5s", "command: argv"),
-- whether the fix ran (fix_ok) and whether verification then found the service healthy
-- (verified), and the seconds from detection to that health (recover_s; NULL when not healed).
-- What runbooks.py orders the runbook's actions by: verified per (service, issue, action_key).
CREATE TABLE IF NOT EXISTS learn_healing (
    id          bigserial PRIMARY KEY,
    namespace   text NOT NULL,
    thread_id   text NOT NULL,
    attempt     integer NOT NULL,
    service     text NOT NULL,
    issue       text NOT NULL,
    action_key  text NOT NULL,
    action      jsonb NOT NULL,
    manual      boolean NOT NULL DEFAULT false,
    fix_ok      boolean NOT NULL,
    verified    boolean NOT NULL,
    recover_s   double precision,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, thread_id, attempt)
);

CREATE INDEX IF NOT EXISTS learn_healing_action
    ON learn_healing (namespace, service, issue, action_key);

-- An agent call (call_agent): its target agent type, request type, status (success, error,
-- timeout, rejected, dead_lettered, cancelled) and round trip (ms). Written off the call's path
-- by a background batched writer. Key: the request id and the workflow attempt that sent it
-- (a resume sends the same request ids again under a new attempt), and the status, so a call
-- that timed out and was sent again with the same id keeps both outcomes.
CREATE TABLE IF NOT EXISTS learn_calls (
    id           bigserial PRIMARY KEY,
    namespace    text NOT NULL,
    thread_id    text,
    agent_type   text NOT NULL,
    request_type text NOT NULL,
    request_id   text NOT NULL,
    attempt      integer NOT NULL,
    status       text NOT NULL,
    ms           double precision NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, request_id, attempt, status)
);

CREATE INDEX IF NOT EXISTS learn_calls_type
    ON learn_calls (namespace, agent_type, request_type, recorded_at);

-- A canary rollout: one 'stage' row per observation of a stage (seq: its number in the
-- rollout, from 0; verdict healthy | degraded | unhealthy; holds so far at that stage), and one
-- 'end' row (seq 0) when it ends: verdict completed | rolled_back, mode automatic | manual, and
-- the rollback's cause (reason).
CREATE TABLE IF NOT EXISTS learn_canary (
    id            bigserial PRIMARY KEY,
    namespace     text NOT NULL,
    thread_id     text NOT NULL,
    workflow_type text,
    deployment    text NOT NULL,
    event         text NOT NULL CHECK (event IN ('stage', 'end')),
    seq           integer NOT NULL,
    percent       integer,
    verdict       text NOT NULL,
    reason        text,
    mode          text,
    holds         integer,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, thread_id, deployment, event, seq)
);

CREATE INDEX IF NOT EXISTS learn_canary_deployment ON learn_canary (namespace, deployment);

-- A review answer of pr_deployment's approval: one row per review rule seen on the branch put
-- to the person (ruff's rule codes, "comment:<severity>" for the model's comments, '' when the
-- review found nothing), with its count and the answer: approved (the person merged in spite
-- of it: the rule was overridden) or not (it was upheld).
CREATE TABLE IF NOT EXISTS learn_reviews (
    id          bigserial PRIMARY KEY,
    namespace   text NOT NULL,
    thread_id   text NOT NULL,
    repo        text NOT NULL,
    branch      text NOT NULL,
    rule        text NOT NULL,
    findings    integer NOT NULL,
    approved    boolean NOT NULL,
    answered_by text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, thread_id, branch, rule)
);

CREATE INDEX IF NOT EXISTS learn_reviews_rule ON learn_reviews (namespace, rule);

-- Each time the orchestrator runs a workflow's graph (run, resume, recover) is one attempt.
-- Agent calls carry it: a stored *success* answers every attempt, a stored *error* only its
-- own, so a resume after a failure runs the failed work again.
ALTER TABLE workflows ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 1;

-- With a bus secret: every signed request message a worker started, by its signature. Kept
-- where a Redis writer cannot erase it, so a captured message copied back into a stream after
-- its stored response was deleted is refused instead of run again. Rows are pruned once their
-- request can no longer run (its deadline, or the response retention when it has none).
CREATE TABLE IF NOT EXISTS bus_executions (
    namespace  text NOT NULL,
    signature  text NOT NULL,
    request_id text NOT NULL,
    attempt    integer NOT NULL,
    owner      text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (namespace, signature)
);

CREATE INDEX IF NOT EXISTS bus_executions_expires ON bus_executions (expires_at);

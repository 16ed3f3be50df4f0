-- The run queue of `orchestrator serve` (orchestrator/service/queue.py). A run is one thing to
-- do to a workflow (start, resume with an answer, recover, cancel); runners claim runs with
-- FOR UPDATE SKIP LOCKED under a lease, and every write a runner makes for the run's thread is
-- fenced by orchestrator_fence() below.

-- A submitted workflow waits `queued` until a runner starts it; `cancelled` is where cancel
-- leaves one.
ALTER TABLE workflows DROP CONSTRAINT IF EXISTS workflows_status_check;
ALTER TABLE workflows ADD CONSTRAINT workflows_status_check
    CHECK (status IN ('queued', 'running', 'interrupted', 'completed', 'failed', 'cancelled'));

CREATE TABLE IF NOT EXISTS runs (
    run_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace        text NOT NULL,
    thread_id        text NOT NULL REFERENCES workflows (thread_id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('start', 'resume', 'recover', 'cancel')),
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    priority         integer NOT NULL DEFAULT 0,
    not_before       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    runner           text,
    -- incremented by every claim: the fence a runner's writes are checked against
    lease_epoch      bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    requested_by     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    error            jsonb,
    outcome          text
);

-- The guard of "at most one running run per thread": a claim that would make a second one
-- fails on this index (the claim query's filter only makes that rare).
CREATE UNIQUE INDEX IF NOT EXISTS runs_one_running_per_thread
    ON runs (thread_id) WHERE status = 'running';

-- The claim's order, over queued runs only.
CREATE INDEX IF NOT EXISTS runs_claim_order
    ON runs (namespace, priority DESC, not_before, run_id) WHERE status = 'queued';

-- A thread's open runs (the claim's per-thread order, cancel, "is it busy").
CREATE INDEX IF NOT EXISTS runs_open_by_thread
    ON runs (thread_id, run_id) WHERE status IN ('queued', 'running');

-- The sweeper's scan for expired leases.
CREATE INDEX IF NOT EXISTS runs_running_lease
    ON runs (lease_expires_at) WHERE status = 'running';

CREATE INDEX IF NOT EXISTS runs_ns_status_created ON runs (namespace, status, created_at DESC);

-- The fence: raises SQLSTATE 'OF001' unless run p_run is still running under runner p_runner
-- and lease epoch p_epoch with an unexpired lease. It takes a FOR SHARE lock on the run's row,
-- so a sweep or a claim that would take the lease over waits until the fenced transaction
-- ends: a write that passed the check commits before any other holder exists.
CREATE OR REPLACE FUNCTION orchestrator_fence(p_run bigint, p_epoch bigint, p_runner text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs
    WHERE run_id = p_run AND status = 'running' AND runner = p_runner
      AND lease_epoch = p_epoch AND lease_expires_at > clock_timestamp()
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease of run % (epoch %) is no longer held by %', p_run, p_epoch, p_runner
            USING ERRCODE = 'OF001';
    END IF;
END
$$;

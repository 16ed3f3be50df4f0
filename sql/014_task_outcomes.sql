-- Plan task outcomes (orchestrator/learning/tasks.py): one row per attempt of a plan_execution
-- task, written when the attempt ends (passed QA, failed, or taken from the result cache). The
-- key (namespace, thread_id, task_id, attempt) makes the write idempotent: a work node run
-- again after a crash or a resume finds its row there and adds nothing.
-- Durations learned from it (orchestrator/learning/durations.py) use the passed attempts that
-- really did the work (status 'passed'); a cache hit did none ('cached').
CREATE TABLE IF NOT EXISTS learn_tasks (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    thread_id       text NOT NULL,
    task_id         text NOT NULL,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    repo            text NOT NULL,
    kind            text NOT NULL,
    file            text NOT NULL,
    size            integer NOT NULL CHECK (size >= 0),    -- lines the plan gives; 0: unknown
    dependencies    integer NOT NULL CHECK (dependencies >= 0),
    tier            text,
    prompt_version  text,                                   -- e.g. developer_write@2; NULL: no model
    seconds         double precision NOT NULL CHECK (seconds >= 0),
    status          text NOT NULL CHECK (status IN ('passed', 'failed', 'cached')),
    qa_first_time   boolean NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, thread_id, task_id, attempt)
);

-- the estimator's read: the latest successes of one (repo, kind, file), and of a kind in a repo
CREATE INDEX IF NOT EXISTS learn_tasks_key
    ON learn_tasks (namespace, repo, kind, file, recorded_at DESC) WHERE status = 'passed';

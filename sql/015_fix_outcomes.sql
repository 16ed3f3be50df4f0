-- Fix outcomes (orchestrator/learning/fixes.py): one row per fix attempt of a plan task whose
-- QA result is known. A fix attempt is a developer attempt after QA failed the file: it works
-- from QA's evidence (failure), changes the file (fix: the diff, bounded) with a prompt version
-- on a tier, and QA then passes it (fixed) or not. first_time: fixed by the first fix attempt
-- after the failure. failure_key is the failure normalised for similarity (lower case, no
-- numbers, no repository path): orchestrator.learning.similar compares trigram sets of it
-- (and pg_trgm's similarity() gives the same figure where that extension is installed).
-- The natural key (namespace, thread_id, task_id, attempt) makes a re-run node record once.
CREATE TABLE IF NOT EXISTS learn_fixes (
    id          bigserial PRIMARY KEY,
    namespace   text NOT NULL,
    thread_id   text NOT NULL,
    task_id     text NOT NULL,
    attempt     integer NOT NULL,
    repo        text NOT NULL,
    file        text NOT NULL,
    kind        text,
    failure     text NOT NULL,
    failure_key text NOT NULL,
    fix         text NOT NULL,
    action      text,
    prompt      text,
    tier        text,
    model       text,
    fixed       boolean NOT NULL,
    first_time  boolean NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, thread_id, task_id, attempt)
);

CREATE INDEX IF NOT EXISTS learn_fixes_repo ON learn_fixes (namespace, repo, recorded_at DESC);

-- Webhook deliveries taken by `orchestrator serve` (orchestrator/service/hooks.py).
-- GitHub redelivers a delivery with the same X-GitHub-Delivery id (on a timeout, or by hand
-- from the hook's settings): the row is claimed before anything starts, so a redelivery finds
-- it and starts nothing. `response` is what the first delivery was answered (a redelivery gets
-- it again); `subject` names the pull request ("owner/name#42") and `thread_id` the workflow a
-- delivery started, which is how a later `/approve` comment finds the run it answers.
CREATE TABLE IF NOT EXISTS hook_deliveries (
    namespace    text NOT NULL,
    source       text NOT NULL,  -- github | generic
    delivery_id  text NOT NULL,
    event        text NOT NULL,
    subject      text,
    thread_id    text,
    status       integer,        -- the HTTP status answered; NULL while the first is in flight
    response     jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, source, delivery_id)
);

CREATE INDEX IF NOT EXISTS hook_deliveries_subject
    ON hook_deliveries (namespace, subject, received_at DESC) WHERE thread_id IS NOT NULL;

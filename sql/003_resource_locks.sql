-- Named resource locks. The row outlives each holding so that the fencing token keeps
-- increasing per resource: a release clears the holder, it never deletes the row.
CREATE TABLE IF NOT EXISTS resource_locks (
    namespace   text NOT NULL,
    resource    text NOT NULL,
    holder      text,
    token       bigint NOT NULL DEFAULT 0,
    acquired_at timestamptz,
    expires_at  timestamptz,
    PRIMARY KEY (namespace, resource)
);

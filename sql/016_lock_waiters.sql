-- Until when someone may be waiting for a lock in another process: a refused attempt of a
-- waiter sets it to that waiter's deadline (never earlier than it was). A release sends its
-- NOTIFY only while it is in the future, so a lock nobody waits for is taken and released
-- without waking every lock listener of the cluster.
ALTER TABLE resource_locks ADD COLUMN IF NOT EXISTS wanted_until timestamptz;

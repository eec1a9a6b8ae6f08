-- The latest cancel event applied per rule and user. An entry event that
-- occurred no later than it but is applied after it (out of order: through
-- the outbox relay, `herald recover`, a cluster's backlog returning, or a
-- client's late batch with its own `occurred_at`) starts its timer already
-- cancelled: order follows the events' own time, not their arrival.
CREATE TABLE trigger_cancels (
    trigger_id      uuid NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    user_key        text NOT NULL,
    cancelled_until timestamptz NOT NULL,
    PRIMARY KEY (trigger_id, user_key)
);

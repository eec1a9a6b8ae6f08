-- The highest write sequence of the Redis ledger, per scope, that reached
-- PostgreSQL with an outcome: a Redis showing less has lost writes.
CREATE TABLE ledger_watermarks (
    scope       text PRIMARY KEY,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The ledger rebuild pages settled deliveries by id.
CREATE INDEX deliveries_settled ON deliveries (settled_at) WHERE status <> 'pending';

-- Kafka failover: the cluster producers write to, shared by every process
-- (one row, absent until the first switch: the most preferred cluster), and
-- the history of switches. Events remember when the trigger engine applied
-- them, so that `herald recover` republishes only those a lost cluster held.

CREATE TABLE kafka_active_cluster (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    name        text NOT NULL,
    reason      text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kafka_failovers (
    id            bigserial PRIMARY KEY,
    from_cluster  text,
    to_cluster    text NOT NULL,
    reason        text NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE events ADD COLUMN applied_at timestamptz;
CREATE INDEX events_unapplied ON events (received_at) WHERE applied_at IS NULL;

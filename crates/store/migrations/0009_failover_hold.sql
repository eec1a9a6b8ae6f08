-- Who chose the active Kafka cluster. An operator's choice holds: automatic
-- failback does not undo it until `held_until` (NULL: until an operator
-- changes it or hands it back with `herald cluster release`).
ALTER TABLE kafka_active_cluster
    ADD COLUMN chosen_by text NOT NULL DEFAULT 'automatic' CHECK (chosen_by IN ('automatic', 'operator')),
    ADD COLUMN held_until timestamptz;

ALTER TABLE kafka_failovers
    ADD COLUMN chosen_by text NOT NULL DEFAULT 'automatic' CHECK (chosen_by IN ('automatic', 'operator')),
    ADD COLUMN held_until timestamptz;

-- The id each configured Kafka cluster's brokers report, by name, as first
-- seen by any process. A new id under a known name means the cluster was
-- replaced at the same address (wiped and started again): what it held is
-- gone. Such a row waits for recovery (`recovered_at` NULL): once every
-- process has had time to replace its old clients, one process claims it
-- (`claimed_until`, a lease another process takes over if it dies), puts back
-- from PostgreSQL everything accepted and not settled, and marks it done.
CREATE TABLE kafka_cluster_ids (
    name           text NOT NULL,
    cluster_id     text NOT NULL,
    first_seen     timestamptz NOT NULL DEFAULT now(),
    recovered_at   timestamptz,
    claimed_until  timestamptz,
    PRIMARY KEY (name, cluster_id)
);
CREATE INDEX kafka_cluster_ids_unrecovered ON kafka_cluster_ids (first_seen) WHERE recovered_at IS NULL;

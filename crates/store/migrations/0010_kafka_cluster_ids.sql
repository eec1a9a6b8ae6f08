-- The id each configured Kafka cluster's brokers report, by name, as first
-- seen by any process. A new id under a known name means the cluster was
-- replaced at the same address (wiped and started again): what it held is
-- gone, and the one process whose insert is first republishes from
-- PostgreSQL everything accepted and not settled.
CREATE TABLE kafka_cluster_ids (
    name        text NOT NULL,
    cluster_id  text NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, cluster_id)
);

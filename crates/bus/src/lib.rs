//! Kafka: the idempotent producer, batch consumers that commit only settled
//! work, and the embedded Kafka-protocol broker used by `herald dev` and tests.
//!
//! Nothing here decides about duplicates: offsets, partitions and producer ids
//! mean nothing on another cluster, so dedupe lives in the ledger.

mod admin;
mod consumer;
mod embedded;
mod producer;

pub use admin::{create_topics, TopicCreation};

pub use consumer::{commit_mode, BatchConsumer, BatchEnd, Committer};
pub use embedded::{BrokerCommand, EmbeddedBroker};

use futures::future::join_all;
use herald_config::{KafkaConfig, TopicsConfig};
use herald_core::{DeadLetter, DeliveryJob, DeliveryOutcome};
use producer::ClusterProducer;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Security(String),
    #[error("{0}")]
    Admin(String),
    #[error("no Kafka bootstrap servers configured (set kafka.bootstrap_servers or HERALD_KAFKA__BOOTSTRAP_SERVERS)")]
    NotConfigured,
    #[error("embedded broker: {0}")]
    Embedded(String),
    #[error("producers left Kafka cluster {0} while this publish waited on it")]
    Switched(String),
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

impl BusError {
    /// The record itself is refused (too large, malformed), wherever and
    /// however often it is sent: retrying it can never succeed.
    pub fn is_record_refused(&self) -> bool {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
        matches!(
            self,
            BusError::Kafka(KafkaError::MessageProduction(
                Code::MessageSizeTooLarge
                    | Code::InvalidMessageSize
                    | Code::InvalidMessage
                    | Code::InvalidRecord
                    | Code::MessageBatchTooLarge
            ))
        )
    }
}

/// A client of one cluster: consumers and probes are given a configuration
/// narrowed with `KafkaConfig::for_cluster`; otherwise the most preferred.
fn base_config(kafka: &KafkaConfig) -> Result<ClientConfig> {
    let cluster = kafka
        .clusters()
        .into_iter()
        .next()
        .ok_or(BusError::NotConfigured)?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cluster.bootstrap_servers);
    for (key, value) in kafka
        .security
        .client_settings()
        .map_err(BusError::Security)?
    {
        c.set(key, value);
    }
    Ok(c)
}

/// The idempotent producer (`enable.idempotence`, `acks=all`), one per
/// configured cluster, writing to the active one. Its dedupe only covers
/// librdkafka's own retries within one session; everything else is the
/// ledger's job. Clones share the producers and the choice of cluster.
#[derive(Clone)]
pub struct Publisher {
    clusters: Arc<Vec<ClusterProducer>>,
    /// The active cluster's index; every switch is also announced, so that
    /// publishes waiting on the old cluster give up at once.
    active: Arc<tokio::sync::watch::Sender<usize>>,
    topics: TopicsConfig,
}

impl Publisher {
    /// Producers for every configured cluster; the most preferred is active.
    pub fn new(kafka: &KafkaConfig) -> Result<Self> {
        let clusters = kafka.clusters();
        if clusters.is_empty() {
            return Err(BusError::NotConfigured);
        }
        let clusters = clusters
            .iter()
            .map(|c| {
                let mut settings = base_config(&kafka.for_cluster(c))?;
                settings
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", "5")
                    .set("message.timeout.ms", kafka.message_timeout_ms.to_string());
                ClusterProducer::new(c.name.clone(), settings)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            clusters: Arc::new(clusters),
            active: Arc::new(tokio::sync::watch::Sender::new(0)),
            topics: kafka.topics.clone(),
        })
    }

    /// The clusters' names, most preferred first.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.iter().map(|c| c.name.clone()).collect()
    }

    /// The cluster producers write to now.
    pub fn active_cluster(&self) -> &str {
        &self.clusters[self.active_index()].name
    }

    fn active_index(&self) -> usize {
        (*self.active.borrow()).min(self.clusters.len() - 1)
    }

    /// Moves every clone of this publisher to the named cluster; false if no
    /// such cluster is configured. Records already handed to the old
    /// cluster's producer finish there or fail, and their callers retry.
    pub fn switch_to(&self, name: &str) -> bool {
        match self.clusters.iter().position(|c| c.name == name) {
            Some(i) => {
                self.active.send_if_modified(|current| {
                    let changed = *current != i;
                    *current = i;
                    changed
                });
                true
            }
            None => false,
        }
    }

    /// Whether the named cluster can take every Herald topic now: it answers
    /// a metadata request within `timeout`, each topic exists, and every
    /// partition has a leader. Blocking: call it off the async threads.
    pub fn cluster_health(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let cluster = self.cluster(name)?;
        self.health_through(&cluster.current(), timeout)
    }

    fn health_through(
        &self,
        generation: &producer::ProducerGeneration,
        timeout: Duration,
    ) -> Result<(), String> {
        let metadata = generation
            .producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|e| e.to_string())?;
        for topic in self.topics.all() {
            let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(format!("topic {topic} does not exist"));
            };
            if t.partitions().is_empty() {
                return Err(format!("topic {topic} has no partitions"));
            }
            if let Some(p) = t.partitions().iter().find(|p| p.leader() < 0) {
                return Err(format!("partition {topic}/{} has no leader", p.id()));
            }
        }
        Ok(())
    }

    /// The health check every process runs on each cluster (the failover
    /// controller's): `cluster_health`, with what it says about the
    /// cluster's producer recorded, so that a producer that went fatal, whose
    /// cluster was replaced under it, or that has delivered nothing for
    /// `stuck_after` to a healthy cluster is rebuilt. Blocking.
    pub fn check_cluster(
        &self,
        name: &str,
        timeout: Duration,
        stuck_after: Duration,
    ) -> Result<(), String> {
        let cluster = self.cluster(name)?;
        // What the check finds is about the client it went through: a
        // rebuild meanwhile must not be judged by it.
        let generation = cluster.current();
        let health = self.health_through(&generation, timeout);
        let cluster_id = match health {
            Ok(()) => generation.producer.client().fetch_cluster_id(timeout),
            Err(_) => None,
        };
        cluster.observe_health(&generation, health.is_ok(), cluster_id, stuck_after);
        cluster.release(generation);
        health
    }

    /// The id the named cluster's brokers reported at the last health check.
    pub fn cluster_id(&self, name: &str) -> Option<String> {
        self.cluster(name).ok()?.cluster_id()
    }

    /// Why the active cluster's producer cannot deliver now, if it cannot
    /// though the cluster is healthy: for `/readyz`.
    pub fn wedged(&self, after: Duration) -> Result<(), String> {
        match self.clusters[self.active_index()].wedged(after) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn cluster(&self, name: &str) -> Result<&ClusterProducer, String> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("no cluster named {name}"))
    }

    /// Publishes delivery jobs and returns once every one is acknowledged by
    /// the cluster, or with the first error (the caller keeps the work and retries).
    pub async fn publish_jobs(&self, jobs: &[DeliveryJob]) -> Result<()> {
        self.publish_jobs_to(&self.topics.deliveries, jobs).await
    }

    /// A campaign's delivery jobs, in the campaigns' own lane.
    pub async fn publish_campaign_jobs(&self, jobs: &[DeliveryJob]) -> Result<()> {
        self.publish_jobs_to(&self.topics.campaigns, jobs).await
    }

    /// Jobs waiting for a later attempt (`not_before`).
    pub async fn publish_retries(&self, jobs: &[DeliveryJob]) -> Result<()> {
        self.publish_jobs_to(&self.topics.retries, jobs).await
    }

    async fn publish_jobs_to(&self, topic: &str, jobs: &[DeliveryJob]) -> Result<()> {
        // A job made outside any trace joins the one it is published in.
        let current = herald_telemetry::trace_parent();
        let records: Vec<(String, Vec<u8>)> = jobs
            .iter()
            .map(|j| {
                let payload = match (&j.trace_parent, &current) {
                    (None, Some(trace_parent)) => DeliveryJob {
                        trace_parent: Some(trace_parent.clone()),
                        ..j.clone()
                    }
                    .to_json(),
                    _ => j.to_json(),
                };
                (j.delivery_id.to_string(), payload)
            })
            .collect();
        self.publish(topic, &records).await
    }

    pub async fn publish_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<()> {
        let records: Vec<(String, Vec<u8>)> = outcomes
            .iter()
            .map(|o| (o.delivery_id.to_string(), o.to_json()))
            .collect();
        self.publish(&self.topics.outcomes, &records).await
    }

    /// App events, keyed by user so that each user's stay in order.
    pub async fn publish_events(&self, events: &[herald_core::trigger::EventRecord]) -> Result<()> {
        let records: Vec<(String, Vec<u8>)> =
            events.iter().map(|e| (e.key(), e.to_json())).collect();
        self.publish(&self.topics.events, &records).await
    }

    pub async fn publish_dead_letters(&self, letters: &[DeadLetter]) -> Result<()> {
        let records: Vec<(String, Vec<u8>)> = letters
            .iter()
            .map(|l| {
                let key = l
                    .job
                    .as_ref()
                    .map(|j| j.delivery_id.to_string())
                    .unwrap_or_default();
                (key, l.to_json())
            })
            .collect();
        self.publish(&self.topics.dead_letters, &records).await
    }

    /// Returns once the active cluster acknowledged every record. If the
    /// active cluster changes meanwhile, gives up with `Switched` rather than
    /// wait out the message timeout on a cluster being left: the caller
    /// publishes again, to the new one (records the old one still takes are
    /// duplicates that the ledger drops).
    async fn publish(&self, topic: &str, records: &[(String, Vec<u8>)]) -> Result<()> {
        let mut switched = self.active.subscribe();
        let index = (*switched.borrow_and_update()).min(self.clusters.len() - 1);
        let cluster = &self.clusters[index];
        let generation = producer::InUse::new(cluster);
        let sends = records.iter().map(|(key, payload)| {
            generation.producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Timeout::Never,
            )
        });
        let outcome = tokio::select! {
            results = join_all(sends) => results
                .into_iter()
                .try_for_each(|r| r.map(drop).map_err(|(e, _)| BusError::from(e))),
            _ = switched.changed() => return Err(BusError::Switched(cluster.name.clone())),
        };
        match &outcome {
            Ok(()) => cluster.delivered(),
            Err(e) => cluster.failed(&generation, &e.to_string()),
        }
        outcome
    }

    /// Whether the active cluster answers a metadata request within `timeout`.
    pub fn is_reachable(&self, timeout: Duration) -> bool {
        self.clusters[self.active_index()]
            .current()
            .producer
            .client()
            .fetch_metadata(Some(&self.topics.deliveries), timeout)
            .is_ok()
    }

    pub fn flush(&self, timeout: Duration) {
        for c in self.clusters.iter() {
            let _ = c.current().producer.flush(timeout);
        }
    }
}

/// How far a consumer group is behind on a topic: records produced and not
/// yet committed, over every partition. Reads offsets only; never joins the
/// group.
pub struct LagProbe {
    consumer: rdkafka::consumer::BaseConsumer,
}

impl LagProbe {
    pub fn new(kafka: &KafkaConfig, group_id: &str) -> Result<Self> {
        let consumer = base_config(kafka)?
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(Self { consumer })
    }

    /// Blocking (metadata and offset requests): call it off the async threads.
    pub fn lag(&self, topic: &str, timeout: Duration) -> Result<i64> {
        let highs = self.high_watermarks(topic, timeout)?;
        let committed = self.committed(topic, &highs, timeout)?;
        Ok(highs
            .iter()
            .map(|(p, high)| (high - committed.get(p).copied().unwrap_or(0)).max(0))
            .sum())
    }

    /// The end offset of each partition of `topic` now. Blocking.
    pub fn high_watermarks(&self, topic: &str, timeout: Duration) -> Result<HashMap<i32, i64>> {
        let metadata = self.consumer.fetch_metadata(Some(topic), timeout)?;
        let mut highs = HashMap::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = self.consumer.fetch_watermarks(topic, p.id(), timeout)?;
                highs.insert(p.id(), high);
            }
        }
        Ok(highs)
    }

    /// Whether the group has committed every record of `topic` below
    /// `marks` (from [`Self::high_watermarks`]). Blocking.
    pub fn caught_up_to(
        &self,
        topic: &str,
        marks: &HashMap<i32, i64>,
        timeout: Duration,
    ) -> Result<bool> {
        let committed = self.committed(topic, marks, timeout)?;
        Ok(marks
            .iter()
            .all(|(p, mark)| committed.get(p).copied().unwrap_or(0) >= *mark))
    }

    fn committed(
        &self,
        topic: &str,
        partitions: &HashMap<i32, i64>,
        timeout: Duration,
    ) -> Result<HashMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions.keys() {
            tpl.add_partition(topic, *p);
        }
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let done = match e.offset() {
                    Offset::Offset(o) => o,
                    // Nothing committed yet: the group starts at the beginning.
                    _ => 0,
                };
                (e.partition(), done)
            })
            .collect())
    }
}

/// Every record of `topic`, from the beginning to the end it has now, without
/// joining a consumer group (for `herald dlq list`).
pub fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = base_config(kafka)?
        .set("group.id", "herald-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            if high > low {
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                remaining.insert(p.id(), high);
            }
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    while !remaining.is_empty() && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m?.detach();
            if let Some(&high) = remaining.get(&m.partition()) {
                if m.offset() + 1 >= high {
                    remaining.remove(&m.partition());
                }
            }
            out.push(m);
        }
    }
    Ok(out)
}

//! Batch consumers, and what keeps each one able to consume.
//!
//! librdkafka's consumer recovers from most broker trouble by itself, but
//! not from all of it: a fatal error ends it, and after its cluster is
//! replaced at the same address (wiped and started again, topics recreated)
//! it may keep a leader epoch the new cluster will never reach and wait for
//! it forever. Each consumer therefore has a watcher that looks at the
//! cluster's id and at the group's progress, builds the consumer anew when
//! the cluster was replaced or the consumer has sat idle while records wait
//! for `kafka.rebuild_after_ms`, and tells `/readyz` (through the loop
//! health registry) while it makes no progress. A new consumer rejoins the
//! group and reads from the committed offsets: the ledger drops what was
//! settled.

use crate::{base_config, Result};
use herald_config::KafkaConfig;
use herald_telemetry::health::LoopHealth;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long one of the watcher's requests may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A consumer that hands out batches and commits a batch's offsets only when
/// the caller says its work is settled.
pub struct BatchConsumer {
    consumer: Arc<StreamConsumer>,
    settings: ClientConfig,
    topics: Vec<String>,
    cluster: String,
    label: String,
    shared: Arc<Shared>,
    /// Why the watcher wants the consumer built anew; None once the watcher
    /// is gone.
    rebuild: Option<watch::Receiver<Option<String>>>,
}

/// What the consumer and its watcher share.
struct Shared {
    /// Weak: the consumer is closed (it leaves its group) where its owner
    /// drops it, not later on the watcher's thread.
    current: Mutex<Weak<StreamConsumer>>,
    /// Batches handed out and not yet committed. While the caller holds one
    /// (a sender keeps two in flight, and waits for records meanwhile), its
    /// loop, not the consumer, is what has to move, and reports on itself.
    held: AtomicUsize,
    /// Clients built anew so far.
    rebuilds: AtomicU64,
}

impl Shared {
    /// A batch's commit, whatever came of it: the caller is done with it.
    fn released(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

impl BatchConsumer {
    pub fn new(kafka: &KafkaConfig, group_id: &str, topics: &[&str]) -> Result<Self> {
        let mut settings = base_config(kafka)?;
        settings
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string())
            .set(
                "queued.max.messages.kbytes",
                kafka.consumer_queue_kbytes.max(1).to_string(),
            )
            // librdkafka refuses more than 300,000 ms (and the client with
            // it); a longer backoff than that would starve the consumer anyway.
            .set(
                "fetch.queue.backoff.ms",
                kafka.fetch_queue_backoff_ms.min(300_000).to_string(),
            );
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let cluster = kafka
            .clusters()
            .into_iter()
            .next()
            .map(|c| c.name)
            .unwrap_or_default();
        let label = format!("consumer group {group_id} on cluster {cluster}");
        let consumer = Arc::new(subscribed(&settings, &topics)?);
        let shared = Arc::new(Shared {
            current: Mutex::new(Arc::downgrade(&consumer)),
            held: AtomicUsize::new(0),
            rebuilds: AtomicU64::new(0),
        });
        let (tx, rx) = watch::channel(None);
        let watcher = Watcher {
            stalled: metrics::gauge!("herald_kafka_consumer_stalled",
                "cluster" => cluster.clone(), "group" => group_id.to_string()),
            shared: shared.clone(),
            topics: topics.clone(),
            rebuild: tx,
            health: herald_telemetry::health::register(format!("the {label}")),
            interval: Duration::from_millis(kafka.health_check_interval_ms.max(1_000)),
            rebuild_after: Duration::from_millis(kafka.rebuild_after_ms),
            unready_after: Duration::from_millis(kafka.unready_after_ms),
        };
        let rebuild = std::thread::Builder::new()
            .name("kafka-consumer-watch".into())
            .spawn(move || watcher.run())
            .ok()
            .map(|_| rx);
        Ok(Self {
            consumer,
            settings,
            topics,
            cluster,
            label,
            shared,
            rebuild,
        })
    }

    /// "consumer group G on cluster C", for logs and `/readyz`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Waits for one record, then gathers up to `max` within `linger`.
    pub async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Vec<OwnedMessage>> {
        let first = loop {
            let received = match &mut self.rebuild {
                Some(rebuild) => tokio::select! {
                    changed = rebuild.changed() => {
                        let cause = rebuild.borrow_and_update().clone();
                        match (changed, cause) {
                            (Ok(()), Some(cause)) => self.rebuild_consumer(&cause),
                            (Ok(()), None) => {}
                            (Err(_), _) => self.rebuild = None,
                        }
                        continue;
                    }
                    r = self.consumer.recv() => r,
                },
                None => self.consumer.recv().await,
            };
            match received {
                Ok(m) => break m.detach(),
                Err(e) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        self.rebuild_consumer(&format!("fatal error {code:?}: {reason}"));
                    }
                    return Err(e.into());
                }
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                // What was gathered is handed out; an error that lasts comes
                // back on the next call.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        self.shared.held.fetch_add(1, Ordering::SeqCst);
        Ok(batch)
    }

    /// Replaces the client with a new one from the same settings. Records
    /// the old one handed out and that were not committed are read again by
    /// whoever owns their partitions next.
    fn rebuild_consumer(&mut self, cause: &str) {
        match subscribed(&self.settings, &self.topics) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                let old = std::mem::replace(&mut self.consumer, fresh.clone());
                if let Ok(mut current) = self.shared.current.lock() {
                    *current = Arc::downgrade(&fresh);
                }
                tracing::warn!(consumer = %self.label, %cause, "rebuilt the Kafka consumer");
                self.shared.rebuilds.fetch_add(1, Ordering::SeqCst);
                metrics::counter!("herald_kafka_clients_rebuilt_total",
                    "cluster" => self.cluster.clone(), "client" => "consumer")
                .increment(1);
                // Dropping a consumer leaves its group: not on an async thread.
                let _ = std::thread::Builder::new()
                    .name("kafka-retire".into())
                    .spawn(move || drop(old));
            }
            Err(e) => {
                tracing::error!(consumer = %self.label, %cause, error = %e, "cannot build a new Kafka consumer")
            }
        }
    }

    /// Commits the offsets after every record of `batch`. A failure (the
    /// partitions were revoked by a rebalance, the broker is away) is not
    /// fatal: the records come back and the ledger drops what was settled.
    pub fn commit(&self, batch: &[OwnedMessage], mode: CommitMode) -> Result<()> {
        self.shared.released();
        commit(&self.consumer, &BatchEnd::of(batch), mode)
    }

    /// How many times the client was built anew (each is also counted in
    /// `herald_kafka_clients_rebuilt_total`).
    pub fn rebuilds(&self) -> u64 {
        self.shared.rebuilds.load(Ordering::SeqCst)
    }

    /// Commits for this consumer from elsewhere, while it waits for records:
    /// a caller with batches in flight commits each as it settles (in the
    /// order they were handed out), through whichever client is current.
    pub fn committer(&self) -> Committer {
        Committer {
            shared: self.shared.clone(),
        }
    }

    pub fn unsubscribe(&self) {
        self.consumer.unsubscribe();
    }
}

/// How a batch's offsets are committed: in the background while running;
/// on shutdown, waited for, since the commit must land before the process
/// exits.
pub fn commit_mode(shutting_down: bool) -> CommitMode {
    if shutting_down {
        CommitMode::Sync
    } else {
        CommitMode::Async
    }
}

/// See [`BatchConsumer::committer`].
#[derive(Clone)]
pub struct Committer {
    shared: Arc<Shared>,
}

impl Committer {
    /// As [`BatchConsumer::commit`], for a batch's end; nothing is
    /// committed once the consumer is gone (its records are read again by
    /// whoever owns them next).
    pub fn commit(&self, end: &BatchEnd, mode: CommitMode) -> Result<()> {
        self.shared.released();
        let current = self.shared.current.lock().ok().and_then(|c| c.upgrade());
        match current {
            Some(consumer) => commit(&consumer, end, mode),
            None => Ok(()),
        }
    }
}

/// Where a batch ends on each of its partitions: all that committing it
/// needs, so a caller can let go of the records' payloads once it has read
/// them instead of holding them until the batch is settled.
#[derive(Debug, Clone, Default)]
pub struct BatchEnd {
    next: HashMap<(String, i32), i64>,
}

impl BatchEnd {
    pub fn of(batch: &[OwnedMessage]) -> Self {
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for m in batch {
            let e = next
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        Self { next }
    }
}

fn commit(consumer: &StreamConsumer, end: &BatchEnd, mode: CommitMode) -> Result<()> {
    if end.next.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &end.next {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.commit(&tpl, mode)?;
    Ok(())
}

fn subscribed(settings: &ClientConfig, topics: &[String]) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = settings.create()?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Looks at one consumer's cluster and progress from a thread of its own
/// (every request here blocks), until the consumer is dropped.
struct Watcher {
    /// 1 while the consumer has made no progress with records waiting for
    /// `unready_after`: when `/readyz` says so too.
    stalled: metrics::Gauge,
    shared: Arc<Shared>,
    topics: Vec<String>,
    rebuild: watch::Sender<Option<String>>,
    health: Arc<LoopHealth>,
    interval: Duration,
    rebuild_after: Duration,
    unready_after: Duration,
}

/// The group's position on the partitions that matter to this consumer.
struct Progress {
    /// Records produced and not committed.
    waiting: i64,
    /// The committed offsets, summed: it moves when the group moves.
    committed: i64,
    assigned: usize,
}

impl Watcher {
    fn run(self) {
        let mut cluster_id: Option<String> = None;
        let mut last_committed: Option<i64> = None;
        let mut idle_since: Option<Instant> = None;
        // Since when metadata requests through the consumer's client have
        // failed, and how long to let them before the next rebuild.
        let mut unanswered: Option<(Instant, Duration)> = None;
        loop {
            let wake = Instant::now() + self.interval;
            while Instant::now() < wake {
                if self.rebuild.is_closed() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let Some(consumer) = self.shared.current.lock().ok().and_then(|c| c.upgrade()) else {
                continue;
            };
            // A fresh metadata answer updates the id the client knows. Failing
            // ones may be the client's fault (one that knew a cluster wiped
            // since can fail every request to the new one): a new client
            // looks afresh, less and less often while they last.
            if consumer.fetch_metadata(None, PROBE_TIMEOUT).is_err() {
                // A cluster that does not answer is reported by the health
                // checks; whether records wait cannot be told.
                (last_committed, idle_since) = (None, None);
                self.progressing();
                let (since, wait) = *unanswered.get_or_insert((Instant::now(), self.rebuild_after));
                if since.elapsed() >= wait {
                    unanswered = Some((Instant::now(), (wait * 2).min(self.rebuild_after * 8)));
                    let _ = self.rebuild.send(Some(format!(
                        "its metadata requests have failed for {} s: a new client looks afresh",
                        since.elapsed().as_secs()
                    )));
                }
                continue;
            }
            unanswered = None;
            if let Some(id) = consumer.client().fetch_cluster_id(Duration::ZERO) {
                if let Some(known) = cluster_id.as_ref().filter(|k| **k != id) {
                    let cause = format!(
                        "the cluster's id changed from {known} to {id}: it was replaced at the same address"
                    );
                    cluster_id = Some(id);
                    (last_committed, idle_since) = (None, None);
                    self.progressing();
                    let _ = self.rebuild.send(Some(cause));
                    continue;
                }
                cluster_id = Some(id);
            }
            if self.shared.held.load(Ordering::SeqCst) > 0 {
                // The caller's loop has the batch; it reports on itself.
                (last_committed, idle_since) = (None, None);
                self.progressing();
                continue;
            }
            let Ok(p) = progress(&consumer, &self.topics) else {
                (last_committed, idle_since) = (None, None);
                self.progressing();
                continue;
            };
            let moved = last_committed.is_none_or(|c| c != p.committed);
            last_committed = Some(p.committed);
            if p.waiting == 0 || moved {
                idle_since = None;
                self.progressing();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            let what = if p.assigned == 0 {
                format!(
                    "has no partition assigned and the group has not moved while {} records wait",
                    p.waiting
                )
            } else {
                format!(
                    "has not moved on its {} partitions while {} records wait",
                    p.assigned, p.waiting
                )
            };
            self.health.failed(&what);
            // The gauge waits as long as `/readyz` does, on the same clock
            // (which a rebuild does not restart): a consumer between two
            // fetches for one probe (a busy machine, a backlog being caught
            // up after an outage) is not reported stuck by one and healthy
            // by the other.
            if self
                .health
                .failed_for()
                .is_some_and(|d| d >= self.unready_after)
            {
                self.stalled.set(1.0);
            }
            // A consumer with partitions that sits idle while records wait
            // on them is broken; one with none may only be watching a slow
            // or stuck peer, whom a rebalance would take partitions from
            // mid-batch: it reports, and leaves the group alone.
            if p.assigned > 0 && since.elapsed() >= self.rebuild_after {
                idle_since = None;
                let _ = self.rebuild.send(Some(format!(
                    "it {what}, for {} s",
                    since.elapsed().as_secs()
                )));
            }
        }
    }
}

impl Watcher {
    fn progressing(&self) {
        self.health.ok();
        self.stalled.set(0.0);
    }
}

/// The group's progress on this consumer's partitions, or on every
/// partition of its topics when it has none assigned.
fn progress(consumer: &StreamConsumer, topics: &[String]) -> Result<Progress> {
    let assignment = consumer.assignment()?;
    let mut tpl = TopicPartitionList::new();
    let assigned = assignment.count();
    if assigned > 0 {
        tpl = assignment;
    } else {
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), PROBE_TIMEOUT)?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition(topic, p.id());
                }
            }
        }
    }
    let mut ends = HashMap::new();
    for e in tpl.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), PROBE_TIMEOUT)?;
        ends.insert((e.topic().to_string(), e.partition()), (low, high));
    }
    let committed = consumer.committed_offsets(tpl, PROBE_TIMEOUT)?;
    let mut p = Progress {
        waiting: 0,
        committed: 0,
        assigned,
    };
    for e in committed.elements() {
        let (low, high) = ends
            .get(&(e.topic().to_string(), e.partition()))
            .copied()
            .unwrap_or_default();
        // Nothing committed: the group starts at the earliest record.
        let at = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        p.waiting += (high - at).max(0);
        p.committed += at;
    }
    Ok(p)
}

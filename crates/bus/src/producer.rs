//! One cluster's producer, and what keeps it able to deliver.
//!
//! librdkafka's idempotent producer can fail for good: a broker that forgot
//! its producer id or its sequence numbers (a cluster wiped and started again
//! at the same address, a topic recreated) raises a fatal error, after which
//! every produce fails at once. Nothing in that client ever recovers, so a
//! process that kept it would retry forever. A producer is therefore built
//! anew, from the same settings, when it goes fatal, when the cluster's
//! identity changes under it, or when it has not delivered anything for a
//! while to a cluster that passes its health checks. Re-publishing through
//! the new producer is safe: the outbox and the ledger drop what the old one
//! had already delivered.

use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::ClientConfig;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// A producer is not rebuilt more often than this: a fault that makes every
/// new producer fatal too would otherwise churn clients as fast as callers
/// retry.
const MIN_REBUILD_INTERVAL: Duration = Duration::from_secs(1);

/// One generation of a cluster's producer. Clones share the client.
#[derive(Clone)]
pub(crate) struct ProducerGeneration {
    pub producer: FutureProducer,
    number: u64,
    built: Instant,
}

/// What the process has seen of its producer's deliveries to one cluster.
#[derive(Debug, Default)]
struct DeliveryState {
    /// Since when publishes have failed with no success between, and the
    /// latest error.
    failing: Option<(Instant, String)>,
    /// The latest health check's answer (None: not checked yet).
    healthy: Option<bool>,
    /// The cluster id the brokers reported last.
    cluster_id: Option<String>,
    /// Since when the health checks through this producer's client have
    /// failed, and how long to let them fail before the next rebuild.
    unhealthy: Option<(Instant, Duration)>,
}

pub(crate) struct ClusterProducer {
    pub name: String,
    settings: ClientConfig,
    current: RwLock<ProducerGeneration>,
    state: Mutex<DeliveryState>,
}

impl ClusterProducer {
    pub fn new(name: String, settings: ClientConfig) -> crate::Result<Self> {
        let producer: FutureProducer = settings.create()?;
        Ok(Self {
            name,
            settings,
            current: RwLock::new(ProducerGeneration {
                producer,
                number: 0,
                built: Instant::now(),
            }),
            state: Mutex::new(DeliveryState::default()),
        })
    }

    /// The producer to use now.
    pub fn current(&self) -> ProducerGeneration {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Hands back a generation taken with `current`. The last clone of a
    /// replaced client must not be dropped on an async thread: dropping it
    /// waits on its threads.
    pub fn release(&self, generation: ProducerGeneration) {
        let stale = self
            .current
            .read()
            .map_or(true, |g| g.number != generation.number);
        if stale {
            retire(generation);
        }
    }

    /// Every record of a publish was acknowledged.
    pub fn delivered(&self) {
        self.with_state(|s| s.failing = None);
    }

    /// A publish through `generation` failed with `error`. A fatal client is
    /// replaced at once; the caller retries through the new one.
    pub fn failed(&self, generation: &ProducerGeneration, error: &str) {
        self.with_state(|s| match &mut s.failing {
            Some((_, last)) => *last = error.to_string(),
            None => s.failing = Some((Instant::now(), error.to_string())),
        });
        if let Some((code, reason)) = generation.producer.client().fatal_error() {
            self.rebuild(
                generation.number,
                &format!("fatal error {code:?}: {reason}"),
            );
        }
    }

    /// Records a health check, and what it says about the producer: a
    /// cluster whose id changed was replaced (its brokers know nothing of
    /// this producer's id and sequences); a producer that has not delivered
    /// for `stuck_after` to a healthy cluster is broken; and checks that have
    /// failed for `stuck_after` may be the client's fault, not the
    /// cluster's (a client that knew a cluster wiped since can fail every
    /// request to the new one), so a new client looks afresh, less and less
    /// often while the failures last.
    pub fn observe_health(
        &self,
        generation: &ProducerGeneration,
        healthy: bool,
        cluster_id: Option<String>,
        stuck_after: Duration,
    ) {
        let mut cause = None;
        self.with_state(|s| {
            s.healthy = Some(healthy);
            if let Some(id) = cluster_id {
                match &s.cluster_id {
                    Some(known) if *known != id => {
                        cause = Some(format!(
                            "the cluster's id changed from {known} to {id}: it was replaced at the same address"
                        ));
                        s.cluster_id = Some(id);
                    }
                    Some(_) => {}
                    None => s.cluster_id = Some(id),
                }
            }
            if healthy {
                s.unhealthy = None;
                if let (None, Some((since, error))) = (&cause, &s.failing) {
                    if since.elapsed() >= stuck_after {
                        cause = Some(format!(
                            "no record delivered for {} s to a cluster that passes its health checks (last error: {error})",
                            since.elapsed().as_secs()
                        ));
                    }
                }
            } else {
                let (since, wait) = *s.unhealthy.get_or_insert((Instant::now(), stuck_after));
                if since.elapsed() >= wait {
                    cause = Some(format!(
                        "its health checks have failed for {} s: a new client looks afresh",
                        since.elapsed().as_secs()
                    ));
                    s.unhealthy = Some((Instant::now(), (wait * 2).min(stuck_after * 8)));
                }
            }
        });
        if let Some(cause) = cause {
            self.rebuild(generation.number, &cause);
        }
    }

    /// The id the brokers reported at the last health check.
    pub fn cluster_id(&self) -> Option<String> {
        self.with_state(|s| s.cluster_id.clone())
    }

    /// Why this producer cannot do its job now, if it cannot: its client is
    /// fatal, or it has failed for `after` while the cluster is healthy. A
    /// cluster that is away is reported by the health checks, not here.
    pub fn wedged(&self, after: Duration) -> Option<String> {
        if let Some((code, reason)) = self.current().producer.client().fatal_error() {
            return Some(format!(
                "producer for cluster {} failed fatally ({code:?}: {reason}); it is being rebuilt",
                self.name
            ));
        }
        self.with_state(|s| match (&s.failing, s.healthy) {
            (Some((since, error)), Some(true)) if since.elapsed() >= after => Some(format!(
                "producer for cluster {} has delivered nothing for {} s though the cluster is healthy: {error}",
                self.name,
                since.elapsed().as_secs()
            )),
            _ => None,
        })
    }

    /// Replaces generation `seen` with a new client, unless another caller
    /// already did (or did less than a second ago).
    fn rebuild(&self, seen: u64, cause: &str) {
        let mut current = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.number != seen || current.built.elapsed() < MIN_REBUILD_INTERVAL {
            return;
        }
        match self.settings.create::<FutureProducer>() {
            Ok(producer) => {
                let old = std::mem::replace(
                    &mut *current,
                    ProducerGeneration {
                        producer,
                        number: seen + 1,
                        built: Instant::now(),
                    },
                );
                drop(current);
                // A new client starts with a clean slate: what the old one
                // failed says nothing of it (and an idle process would
                // otherwise look wedged until its next publish).
                self.with_state(|s| s.failing = None);
                tracing::warn!(cluster = %self.name, %cause, generation = seen + 1, "rebuilt the Kafka producer; unacknowledged records are published again through the new one");
                metrics::counter!("herald_kafka_clients_rebuilt_total",
                    "cluster" => self.name.clone(), "client" => "producer")
                .increment(1);
                retire(old);
            }
            Err(e) => {
                tracing::error!(cluster = %self.name, %cause, error = %e, "cannot build a new Kafka producer; keeping the old one")
            }
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut DeliveryState) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// Drops a replaced client off the async threads: dropping a producer
/// purges its queue and waits for its threads. The wait first lets every
/// other clone, dropped where it stands, go before this last one.
fn retire<T: Send + 'static>(client: T) {
    let _ = std::thread::Builder::new()
        .name("kafka-retire".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(client)
        });
}

/// A generation in use by one publish: handed back when the publish ends,
/// however it ends (a switch of cluster, a cancelled future), so that the
/// last clone of a replaced client is never dropped on an async thread.
pub(crate) struct InUse<'a> {
    cluster: &'a ClusterProducer,
    generation: ProducerGeneration,
}

impl<'a> InUse<'a> {
    pub fn new(cluster: &'a ClusterProducer) -> Self {
        Self {
            cluster,
            generation: cluster.current(),
        }
    }
}

impl std::ops::Deref for InUse<'_> {
    type Target = ProducerGeneration;

    fn deref(&self) -> &ProducerGeneration {
        &self.generation
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        // The clone handed on outlives this one (`retire` waits first).
        self.cluster.release(self.generation.clone());
    }
}

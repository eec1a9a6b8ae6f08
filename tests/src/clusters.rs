//! The two Kafka-protocol clusters of an incident, real or embedded, and
//! the faults a scenario or the chaos run injects into the primary, the
//! same way whichever they are.

use crate::incident::Incident;
use crate::kafka::RealKafka;
use crate::set_cluster_available;
use std::path::Path;

/// Which Kafka-protocol clusters a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaKind {
    /// Two single-node Apache Kafka clusters (KRaft), from Maven Central.
    Real,
    /// librdkafka's mock clusters, in the test process.
    Mock,
}

/// One broker a cluster: one replica. The fast rebuild docs/operations.md
/// recommends where a minute of outage matters more than a client built
/// anew in vain.
pub const ONE_BROKER: &[(&str, &str)] = &[
    ("HERALD_KAFKA__REPLICATION_FACTOR", "1"),
    ("HERALD_KAFKA__MIN_INSYNC_REPLICAS", "1"),
    ("HERALD_KAFKA__UNREADY_AFTER_MS", "3000"),
    ("HERALD_KAFKA__REBUILD_AFTER_MS", "5000"),
];

/// [`ONE_BROKER`], with health checks a Java broker on a busy two-core
/// machine passes: each may take a second (not the harness's 300 ms), so a
/// broker that stalls for a second or two (a collection, a starved JVM) is
/// not failed over from before the fault a scenario injects.
pub const ONE_BROKER_FAILOVER: &[(&str, &str)] = &[
    ("HERALD_KAFKA__REPLICATION_FACTOR", "1"),
    ("HERALD_KAFKA__MIN_INSYNC_REPLICAS", "1"),
    ("HERALD_KAFKA__UNREADY_AFTER_MS", "3000"),
    ("HERALD_KAFKA__REBUILD_AFTER_MS", "5000"),
    ("HERALD_KAFKA__HEALTH_CHECK_INTERVAL_MS", "1000"),
];

pub enum Clusters {
    /// The test environment's embedded broker is the primary, and the
    /// incident starts an embedded standby.
    Mock,
    Real {
        primary: Box<RealKafka>,
        standby: Box<RealKafka>,
    },
}

impl Clusters {
    /// Starts the clusters (real ones in parallel), their data under `dir`.
    pub async fn start(kind: KafkaKind, dir: &Path) -> Self {
        match kind {
            KafkaKind::Mock => Clusters::Mock,
            KafkaKind::Real => {
                let (primary_dir, standby_dir) = (dir.join("primary"), dir.join("standby"));
                let (primary, standby) = tokio::join!(
                    RealKafka::start(1, &primary_dir),
                    RealKafka::start(1, &standby_dir)
                );
                tokio::join!(primary.create_topics(1, 1), standby.create_topics(1, 1));
                Clusters::Real {
                    primary: Box::new(primary),
                    standby: Box::new(standby),
                }
            }
        }
    }

    /// The incident's primary and standby addresses (None: embedded).
    pub fn addresses(&self) -> (Option<String>, Option<String>) {
        match self {
            Clusters::Mock => (None, None),
            Clusters::Real { primary, standby } => (
                Some(primary.bootstrap_servers().to_string()),
                Some(standby.bootstrap_servers().to_string()),
            ),
        }
    }

    /// Settings these clusters need on every process.
    pub fn settings(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Clusters::Mock => &[],
            Clusters::Real { .. } => ONE_BROKER,
        }
    }

    /// Settings for a scenario whose fault is the failover's trigger: no
    /// failover may come before it.
    pub fn failover_settings(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Clusters::Mock => &[],
            Clusters::Real { .. } => ONE_BROKER_FAILOVER,
        }
    }

    /// How long the primary may fail its checks before producers leave it,
    /// in such a scenario: a real broker on a loaded machine has stalled
    /// for two seconds and more (a failover before the fault, seen in CI).
    pub fn failover_after_ms(&self) -> u64 {
        match self {
            Clusters::Mock => 1_500,
            Clusters::Real { .. } => 4_000,
        }
    }

    /// The primary unreachable (real: its broker frozen with SIGSTOP, so
    /// connections stay open and nothing answers), or back.
    pub fn set_primary_reachable(&self, inc: &Incident, reachable: bool) {
        match (self, reachable) {
            (Clusters::Mock, _) => set_cluster_available(&inc.env.broker, reachable),
            (Clusters::Real { primary, .. }, true) => primary.resume(),
            (Clusters::Real { primary, .. }, false) => primary.pause(),
        }
    }

    /// The primary gone for good, with everything it held (real: kill -9;
    /// embedded: a new, unused broker takes its handle).
    pub async fn destroy_primary(&mut self, inc: &mut Incident) {
        match self {
            Clusters::Mock => inc.env.replace_broker(),
            Clusters::Real { primary, .. } => primary.kill().await,
        }
    }

    /// A destroyed primary started again, empty, at the same address, with
    /// Herald's topics (real clusters only: an embedded one cannot).
    pub async fn reborn_primary(&mut self, inc: &Incident) {
        if let Clusters::Real { primary, .. } = self {
            primary.start_wiped().await;
            create_topics(inc, "primary").await;
        }
    }
}

pub async fn create_topics(inc: &Incident, cluster: &str) {
    let out = inc.cli(&["topics", "create", "--cluster", cluster]).await;
    assert!(out.contains("herald.deliveries"), "{out}");
}

//! Keeps this process's producers on the agreed Kafka cluster: follows a
//! switch made by another process or by `herald cluster failover`, checks
//! every cluster's health, and switches (for every process, through
//! PostgreSQL) when the core's rules say so. Also exports each cluster's
//! health and its consumer groups' lag as metrics.

use herald_bus::{LagProbe, Publisher};
use herald_config::Config;
use herald_core::failover::{decide, ClusterHealth, Decision, FailoverPolicy};
use herald_store::{Chooser, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct FailoverController {
    pub publisher: Publisher,
    pub store: Store,
    pub policy: FailoverPolicy,
    pub interval: Duration,
    /// For the lag gauges.
    pub lag_probes: LagProbes,
    /// A producer that delivers nothing this long to a healthy cluster is rebuilt.
    pub rebuild_after: Duration,
    /// How far back recovery looks after a cluster was replaced.
    pub dedupe_horizon: chrono::Duration,
    /// How long after a replaced cluster is first seen its recovery waits.
    pub recovery_settle: Duration,
    /// Set while this process recovers a replaced cluster.
    recovering: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a process may take to recover a replaced cluster before another
/// takes the work over.
const RECOVERY_LEASE: Duration = Duration::from_secs(300);

impl FailoverController {
    pub fn new(config: &Config, publisher: Publisher, store: Store, lag_probes: LagProbes) -> Self {
        let kafka = &config.kafka;
        Self {
            publisher,
            store,
            policy: FailoverPolicy {
                failover_after: Duration::from_millis(kafka.failover_after_ms),
                failback_after: (kafka.failback_after_ms > 0)
                    .then(|| Duration::from_millis(kafka.failback_after_ms)),
            },
            interval: Duration::from_millis(kafka.health_check_interval_ms.max(100)),
            lag_probes,
            rebuild_after: Duration::from_millis(kafka.rebuild_after_ms),
            dedupe_horizon: chrono::Duration::hours(config.sender.dedupe_horizon_hours as i64),
            recovery_settle: Duration::from_millis(
                kafka
                    .rebuild_after_ms
                    .max(kafka.health_check_interval_ms * 3)
                    .max(kafka.message_timeout_ms),
            ),
            recovering: Arc::default(),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let names = self.publisher.cluster_names();
        let started = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        let mut health: Vec<ClusterHealth> =
            names.iter().map(|_| ClusterHealth::unknown(0)).collect();
        // The cluster ids this process has recorded, by cluster.
        let mut known_ids: Vec<Option<String>> = names.iter().map(|_| None).collect();
        self.follow(&names).await;
        tracing::info!(cluster = %self.publisher.active_cluster(), clusters = ?names, "producing to Kafka");
        self.export_active(&names);
        loop {
            let held = self.follow(&names).await;
            let checks = futures::future::join_all(names.iter().map(|name| {
                let publisher = self.publisher.clone();
                let name = name.clone();
                let timeout = self.interval.min(Duration::from_secs(2));
                let rebuild_after = self.rebuild_after;
                tokio::task::spawn_blocking(move || {
                    publisher.check_cluster(&name, timeout, rebuild_after)
                })
            }))
            .await;
            let now = now_ms();
            for ((name, h), check) in names.iter().zip(health.iter_mut()).zip(checks) {
                let result = check.unwrap_or_else(|e| Err(e.to_string()));
                if h.healthy != result.is_ok() {
                    match &result {
                        Ok(()) => tracing::info!(cluster = %name, "Kafka cluster healthy"),
                        Err(e) => {
                            tracing::warn!(cluster = %name, error = %e, "Kafka cluster unhealthy")
                        }
                    }
                }
                *h = h.observe(result.is_ok(), now);
                metrics::gauge!("herald_kafka_cluster_healthy", "cluster" => name.clone())
                    .set(if h.healthy { 1.0 } else { 0.0 });
            }
            for (name, known) in names.iter().zip(known_ids.iter_mut()) {
                self.notice_replacement(name, known).await;
            }
            self.recover_replaced();
            let active = self.publisher.active_cluster().to_string();
            let index = names.iter().position(|n| *n == active).unwrap_or(0);
            let view: Vec<(&str, ClusterHealth)> = names
                .iter()
                .map(String::as_str)
                .zip(health.iter().copied())
                .collect();
            if let Decision::SwitchTo { index: to, reason } =
                decide(&view, index, now, self.policy, held)
            {
                self.switch(&names, &active, &names[to], &reason).await;
            }
            self.export_lag().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Records the id a healthy cluster reports (a cluster that is not
    /// healthy, its topics missing, reports none). A new id under a known
    /// name means the cluster was replaced at the same address: whatever it
    /// held is gone, and it now waits in PostgreSQL for recovery.
    async fn notice_replacement(&self, name: &str, known: &mut Option<String>) {
        let Some(id) = self.publisher.cluster_id(name) else {
            return;
        };
        if known.as_deref() == Some(id.as_str()) {
            return;
        }
        match self.store.record_kafka_cluster_id(name, &id).await {
            Ok(replaced) => {
                *known = Some(id.clone());
                if replaced {
                    tracing::warn!(cluster = %name, cluster_id = %id, settle = ?self.recovery_settle, "Kafka cluster replaced at the same address: what it held is republished from PostgreSQL once every process has replaced its old clients");
                    metrics::counter!("herald_kafka_clusters_replaced_total", "cluster" => name.to_string())
                        .increment(1);
                }
            }
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "cannot record the Kafka cluster's id")
            }
        }
    }

    /// Recovers a replaced cluster whose settle time has passed, if this
    /// process claims it: republishes from PostgreSQL everything accepted and
    /// not settled, as `herald recover` does, and marks it done. Any process
    /// may do it, and another takes over if this one dies (the claim is a
    /// lease). Nobody has to run `herald recover`; the ledger drops what was
    /// already sent.
    ///
    /// Why the wait: Kafka hands out producer ids from 0 again on the new
    /// cluster, so a process still producing through a client of the old one
    /// can collide with a new producer, and the broker may drop a record as
    /// that one's duplicate. Every old client is gone once each process has
    /// seen the new id (a health interval) or given up on its client
    /// (`rebuild_after`), and its last records have timed out; recovery runs
    /// after that, so it republishes whatever such a collision dropped too.
    fn recover_replaced(&self) {
        if self.recovering.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let (publisher, store) = (self.publisher.clone(), self.store.clone());
        let (settle, horizon) = (self.recovery_settle, self.dedupe_horizon);
        let recovering = self.recovering.clone();
        recovering.store(true, std::sync::atomic::Ordering::SeqCst);
        // Off the health loop: recovery may publish a lot, and the checks
        // must go on meanwhile.
        tokio::spawn(async move {
            if let Ok(Some((name, id))) = store.claim_cluster_recovery(settle, RECOVERY_LEASE).await
            {
                let since = chrono::Utc::now() - horizon;
                loop {
                    match crate::recovery::recover_into(&publisher, &store, since).await {
                        Ok(r) => {
                            tracing::warn!(cluster = %name, cluster_id = %id, deliveries = r.deliveries, events = r.events, campaigns = r.campaigns, "recovered after the cluster was replaced");
                            if let Err(e) = store.finish_cluster_recovery(&name, &id).await {
                                // The lease runs out and recovery is done
                                // again: harmless.
                                tracing::warn!(cluster = %name, error = %e, "cannot mark the recovery done");
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(cluster = %name, error = %e, "recovering after the cluster was replaced failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            recovering.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Adopts the cluster recorded in PostgreSQL, if it differs; true while
    /// an operator's choice of it holds (no automatic failback then).
    async fn follow(&self, names: &[String]) -> bool {
        match self.store.active_kafka_cluster().await {
            Ok(Some(agreed)) => {
                if agreed.to != self.publisher.active_cluster() {
                    if self.publisher.switch_to(&agreed.to) {
                        tracing::warn!(reason = %agreed.reason, "Kafka failover: now producing to {}", agreed.to);
                        metrics::counter!("herald_kafka_failovers_total", "to" => agreed.to.clone())
                            .increment(1);
                        self.export_active(names);
                    } else {
                        tracing::error!(cluster = %agreed.to, "the agreed Kafka cluster is not configured here; staying");
                    }
                }
                agreed.held(chrono::Utc::now())
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agreed Kafka cluster");
                // Unknown: failing back without knowing could undo an operator.
                true
            }
        }
    }

    async fn switch(&self, names: &[String], from: &str, to: &str, reason: &str) {
        match self
            .store
            .switch_kafka_cluster(Some(from), &names[0], to, reason, Chooser::Automatic)
            .await
        {
            Ok(true) => {
                self.publisher.switch_to(to);
                tracing::warn!(%from, %reason, "Kafka failover: now producing to {to}");
                metrics::counter!("herald_kafka_failovers_total", "to" => to.to_string())
                    .increment(1);
                self.export_active(names);
            }
            // Another process switched first: the next round follows it.
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, %to, "cannot record the Kafka failover; staying"),
        }
    }

    fn export_active(&self, names: &[String]) {
        let active = self.publisher.active_cluster();
        for name in names {
            metrics::gauge!("herald_kafka_active_cluster", "cluster" => name.clone())
                .set(if name == active { 1.0 } else { 0.0 });
        }
    }

    async fn export_lag(&self) {
        let reads = futures::future::join_all(self.lag_probes.iter().map(|p| {
            let (p, topic) = (p.probe.clone(), p.topic.clone());
            tokio::task::spawn_blocking(move || p.lag(&topic, Duration::from_secs(1)))
        }))
        .await;
        for (p, lag) in self.lag_probes.iter().zip(reads) {
            if let Ok(Ok(lag)) = lag {
                metrics::gauge!("herald_kafka_consumer_lag",
                    "cluster" => p.cluster.clone(), "group" => p.group.clone(), "topic" => p.topic.clone())
                .set(lag as f64);
            }
        }
    }
}

/// A lag probe of one consumer group's topic on one cluster.
pub struct GroupLagProbe {
    pub cluster: String,
    pub group: String,
    pub topic: String,
    pub probe: Arc<LagProbe>,
}

/// A probe for every consumer group Herald runs, on every cluster.
pub type LagProbes = Arc<Vec<GroupLagProbe>>;

/// A probe for every consumer group Herald runs, on every cluster: what the
/// lag gauges and the dashboard report. A process makes them once
/// (`Roles::lag_probes`).
pub fn lag_probes(config: &Config) -> LagProbes {
    let kafka = &config.kafka;
    let groups = config.consumer_groups();
    let mut lag_probes = Vec::new();
    for cluster in kafka.clusters() {
        for (group, topic) in &groups {
            match LagProbe::new(&kafka.for_cluster(&cluster), group) {
                Ok(p) => lag_probes.push(GroupLagProbe {
                    cluster: cluster.name.clone(),
                    group: group.clone(),
                    topic: topic.to_string(),
                    probe: Arc::new(p),
                }),
                Err(e) => tracing::warn!(cluster = %cluster.name, error = %e, "no lag probe"),
            }
        }
    }
    Arc::new(lag_probes)
}

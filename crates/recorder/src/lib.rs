//! The recorder role: consumes delivery outcomes into PostgreSQL in batches
//! (per-device status, token invalidation) and commits offsets only after the
//! batch is written. Writing an outcome twice changes nothing.

mod webhooks;

pub use webhooks::{sign, WebhookDispatcher};

use herald_bus::BatchConsumer;
use herald_config::RecorderConfig;
use herald_core::DeliveryOutcome;
use herald_store::Store;
use rdkafka::Message;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Recorder {
    pub consumer: BatchConsumer,
    pub store: Store,
    pub config: RecorderConfig,
}

impl Recorder {
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), herald_bus::BusError> {
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let health =
            herald_telemetry::health::register(format!("the recorder ({})", self.consumer.label()));
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = self.consumer.next_batch(self.config.batch_size, linger) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "consuming outcomes");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let outcomes: Vec<DeliveryOutcome> = batch
                .iter()
                .filter_map(|m| match m.payload().map(DeliveryOutcome::from_json) {
                    Some(Ok(o)) => Some(o),
                    other => {
                        tracing::error!(offset = m.offset(), error = ?other.map(|r| r.err()), "undecodable outcome skipped");
                        None
                    }
                })
                .collect();
            while let Err(e) = self.store.record_outcomes(&outcomes).await {
                health.failed(&e);
                tracing::warn!(error = %e, "recording outcomes failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            health.ok();
            metrics::counter!("herald_outcomes_recorded_total").increment(outcomes.len() as u64);
            let mode = herald_bus::commit_mode(shutdown.is_cancelled());
            if let Err(e) = self.consumer.commit(&batch, mode) {
                tracing::warn!(error = %e, "committing outcome offsets failed; they will be recorded again, harmlessly");
            }
        }
        self.consumer.unsubscribe();
        Ok(())
    }
}

/// Keeps the outcome log's partitions ready ahead of time and drops what has
/// passed the retention, once at start and then every hour. Several recorders
/// may run it: they take turns on a lock.
pub struct OutcomeLogKeeper {
    pub store: Store,
    pub config: RecorderConfig,
}

/// Partitions kept ready ahead of today: a recorder down for a week still
/// finds the days it writes into.
const PARTITION_DAYS_AHEAD: u32 = 14;

impl OutcomeLogKeeper {
    pub async fn run(self, shutdown: CancellationToken) {
        let health = herald_telemetry::health::register("the outcome log's upkeep".to_string());
        loop {
            let every = match self
                .store
                .keep_outcome_log(
                    chrono::Utc::now(),
                    PARTITION_DAYS_AHEAD,
                    self.config.outcome_retention_days,
                )
                .await
            {
                Ok(upkeep) => {
                    health.ok();
                    if upkeep != herald_store::OutcomeLogUpkeep::default() {
                        tracing::info!(
                            created = ?upkeep.partitions_created,
                            dropped = ?upkeep.partitions_dropped,
                            messages_deleted = upkeep.messages_deleted,
                            "outcome log kept"
                        );
                    }
                    Duration::from_secs(3600)
                }
                Err(e) => {
                    health.failed(&e);
                    tracing::warn!(error = %e, "keeping the outcome log failed; trying again in a minute");
                    Duration::from_secs(60)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

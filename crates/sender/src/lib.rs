//! The sender role: consumes delivery jobs, claims each delivery in the
//! ledger, sends it through APNs or FCM, settles it, publishes its outcome, and
//! commits the batch's offsets only once every delivery in it is settled.

mod credentials;

pub use credentials::CredentialsCache;

use futures::stream::{self, StreamExt};
use herald_bus::{BatchConsumer, Publisher};
use herald_config::SenderConfig;
use herald_core::dedupe::{action, Claim, ClaimAction};
use herald_core::{DeliveryJob, DeliveryOutcome, DeliveryPolicy, DeliveryStatus, OutcomeClass};
use herald_ledger::{Ledger, Settle};
use herald_providers::Providers;
use rand::Rng;
use rdkafka::consumer::CommitMode;
use rdkafka::Message;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most settled deliveries written to the ledger in one pipeline.
const SETTLE_CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Bus(#[from] herald_bus::BusError),
    #[error(transparent)]
    Ledger(#[from] herald_ledger::LedgerError),
}

pub struct Sender {
    pub consumer: BatchConsumer,
    pub ledger: Ledger,
    pub providers: Providers,
    pub publisher: Publisher,
    pub credentials: CredentialsCache,
    pub config: SenderConfig,
}

/// A job on its way through one batch.
struct Pending {
    job: DeliveryJob,
    attempts: u32,
    /// Not before this instant (backoff, or another owner's live lease).
    due: Instant,
}

/// How one send attempt ended, before the ledger is told.
enum Step {
    Settle {
        status: DeliveryStatus,
        reason: Option<String>,
        provider_id: Option<String>,
        invalid_token: bool,
    },
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl Sender {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SenderError> {
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = self.consumer.next_batch(self.config.batch_size, linger) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "consuming delivery jobs");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut jobs = Vec::with_capacity(batch.len());
            for m in &batch {
                match m.payload().map(DeliveryJob::from_json) {
                    Some(Ok(job)) => jobs.push(job),
                    // Dead-lettering arrives with the delivery protocol (issue 3);
                    // until then an undecodable record is logged and skipped.
                    other => tracing::error!(
                        topic = m.topic(), partition = m.partition(), offset = m.offset(),
                        error = ?other.map(|r| r.err()), "undecodable delivery job skipped"
                    ),
                }
            }
            // A batch is settled before its offsets are committed; a failure
            // here leaves them uncommitted, so the jobs come back.
            loop {
                match self.process(&jobs).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "settling a batch failed; retrying it");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            self.consumer.commit(&batch, CommitMode::Async)?;
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Runs every job of a batch to a settled state (or to the retry path).
    pub async fn process(&self, jobs: &[DeliveryJob]) -> Result<(), SenderError> {
        let now = Instant::now();
        let mut pending: Vec<Pending> = jobs
            .iter()
            .map(|job| Pending {
                job: job.clone(),
                attempts: 0,
                due: now,
            })
            .collect();
        while !pending.is_empty() {
            let next_due = pending.iter().map(|p| p.due).min().unwrap_or(now);
            tokio::time::sleep_until(next_due).await;
            let now = Instant::now();
            let (ready, waiting): (Vec<Pending>, Vec<Pending>) =
                pending.into_iter().partition(|p| p.due <= now);
            pending = waiting;
            pending.extend(self.round(ready).await?);
        }
        Ok(())
    }

    /// One claim-send-settle round; returns the jobs to try again later.
    async fn round(&self, ready: Vec<Pending>) -> Result<Vec<Pending>, SenderError> {
        let ids: Vec<_> = ready.iter().map(|p| p.job.delivery_id).collect();
        let claims = self.ledger.claim_batch(&ids).await?;
        let mut later = Vec::new();
        let mut to_send = Vec::new();
        let mut settled: Vec<(Pending, u64, Step)> = Vec::new();
        let mut outcomes = Vec::new();
        for (p, claim) in ready.into_iter().zip(claims) {
            let epoch = match &claim {
                Claim::Claimed { epoch } | Claim::TakenOver { epoch, .. } => *epoch,
                _ => 0,
            };
            let resend = matches!(claim, Claim::TakenOver { .. });
            if let Claim::TakenOver { takeovers, .. } = claim {
                tracing::info!(
                    delivery_id = %p.job.delivery_id, takeovers, policy = p.job.policy.as_str(),
                    "lease expired: the previous owner died mid-send; the policy decides"
                );
            }
            match action(&claim, p.job.policy) {
                ClaimAction::Send if p.job.is_expired(chrono::Utc::now()) => {
                    settled.push((
                        p,
                        epoch,
                        settle(DeliveryStatus::Expired, "expired before it could be sent"),
                    ));
                }
                ClaimAction::Send => to_send.push((p, epoch, resend)),
                ClaimAction::RecordUnknown => {
                    let reason = "a sender died mid-send; whether the provider got it is unknown";
                    settled.push((p, epoch, settle(DeliveryStatus::Unknown, reason)));
                }
                ClaimAction::RetryLater => {
                    let wait = match claim {
                        Claim::Busy { retry_in_ms } => retry_in_ms.max(1).unsigned_abs(),
                        _ => 100,
                    };
                    later.push(Pending {
                        due: Instant::now() + Duration::from_millis(wait + 50),
                        ..p
                    });
                }
                ClaimAction::SkipDuplicate => {
                    // The first owner settled it; its outcome may not have reached
                    // Kafka if it died right after, so say it again (the recorder
                    // keeps the first).
                    if let Claim::Settled { state } = &claim {
                        if let Some(status) = DeliveryStatus::parse(state) {
                            tracing::debug!(delivery_id = %p.job.delivery_id, %state, "duplicate job dropped");
                            outcomes.push(outcome(&p, status, None, None, false));
                        }
                    }
                }
            }
        }

        let mut later_sends = self.settle(settled, outcomes).await?;
        later.append(&mut later_sends);

        // Settle sends as they finish, a ready chunk at a time: one slow
        // request does not hold back the others, and the window between the
        // provider's answer and the ledger's record stays as short as it can.
        let mut finished = stream::iter(to_send)
            .map(|(p, epoch, resend)| async move {
                let step = self.attempt(&p.job, resend).await;
                (p, epoch, step)
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .ready_chunks(SETTLE_CHUNK);
        while let Some(chunk) = finished.next().await {
            later.append(&mut self.settle(chunk, Vec::new()).await?);
        }
        Ok(later)
    }

    /// Records steps in the ledger (fenced by epoch), publishes the outcomes of
    /// those still ours, and returns the jobs to retry.
    async fn settle(
        &self,
        settled: Vec<(Pending, u64, Step)>,
        mut outcomes: Vec<DeliveryOutcome>,
    ) -> Result<Vec<Pending>, SenderError> {
        let mut later = Vec::new();
        let mut ledger_steps = Vec::with_capacity(settled.len());
        for (p, epoch, step) in &settled {
            let s = match step {
                Step::Settle { status, .. } => Settle::Complete {
                    state: status.as_str().to_string(),
                },
                Step::Retry { .. } if p.attempts + 1 >= self.config.max_attempts => {
                    Settle::Complete {
                        state: DeliveryStatus::Failed.as_str().to_string(),
                    }
                }
                Step::Retry { .. } => Settle::Release,
            };
            ledger_steps.push((p.job.delivery_id, *epoch, s));
        }
        let accepted = self.ledger.complete_batch(&ledger_steps).await?;
        for ((p, _, step), ours) in settled.into_iter().zip(accepted) {
            if !ours {
                // A newer owner holds this delivery; its outcome stands.
                tracing::warn!(delivery_id = %p.job.delivery_id, "lease lost before settling; outcome left to the new owner");
                continue;
            }
            match step {
                Step::Settle {
                    status,
                    reason,
                    provider_id,
                    invalid_token,
                } => outcomes.push(outcome(&p, status, reason, provider_id, invalid_token)),
                Step::Retry { reason, .. } if p.attempts + 1 >= self.config.max_attempts => {
                    let reason = format!("gave up after {} attempts: {reason}", p.attempts + 1);
                    outcomes.push(outcome(
                        &p,
                        DeliveryStatus::Failed,
                        Some(reason),
                        None,
                        false,
                    ));
                }
                Step::Retry {
                    reason,
                    retry_after,
                } => {
                    let wait = self.backoff(p.attempts, retry_after);
                    tracing::debug!(delivery_id = %p.job.delivery_id, %reason, ?wait, "retrying");
                    later.push(Pending {
                        attempts: p.attempts + 1,
                        due: Instant::now() + wait,
                        job: p.job,
                    });
                }
            }
        }
        if !outcomes.is_empty() {
            self.publisher.publish_outcomes(&outcomes).await?;
        }
        Ok(later)
    }

    /// Sends once; an unknown outcome under `at_least_once` is resent once at
    /// once, with the same ids, unless this send already was a resend.
    async fn attempt(&self, job: &DeliveryJob, resend: bool) -> Step {
        let creds = match self.credentials.get(job.app_id).await {
            Ok(c) => c,
            Err(e) => {
                return Step::Retry {
                    reason: format!("loading credentials: {e}"),
                    retry_after: None,
                }
            }
        };
        let mut class = self.providers.send(job, &creds).await;
        if let OutcomeClass::Unknown { reason } = &class {
            if job.policy == DeliveryPolicy::AtLeastOnce && !resend {
                tracing::info!(delivery_id = %job.delivery_id, %reason, "outcome unknown; resending once");
                class = self.providers.send(job, &creds).await;
            }
        }
        match class {
            OutcomeClass::Delivered { provider_id } => Step::Settle {
                status: DeliveryStatus::Delivered,
                reason: None,
                provider_id,
                invalid_token: false,
            },
            OutcomeClass::Rejected {
                reason,
                invalid_token,
            } => Step::Settle {
                status: DeliveryStatus::Rejected,
                reason: Some(reason),
                provider_id: None,
                invalid_token,
            },
            OutcomeClass::Retry {
                reason,
                retry_after,
            } => Step::Retry {
                reason,
                retry_after,
            },
            OutcomeClass::Unknown { reason } => settle(DeliveryStatus::Unknown, &reason),
        }
    }

    /// Exponential backoff with full jitter, never sooner than Retry-After.
    fn backoff(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let base = self.config.retry_base_ms.max(1);
        let cap = self.config.retry_max_ms.max(base);
        let exp = base.saturating_mul(1u64 << attempts.min(20)).min(cap);
        let jittered = rand::rng().random_range(exp / 2..=exp);
        Duration::from_millis(jittered).max(retry_after.unwrap_or_default())
    }
}

fn settle(status: DeliveryStatus, reason: &str) -> Step {
    Step::Settle {
        status,
        reason: Some(reason.to_string()),
        provider_id: None,
        invalid_token: false,
    }
}

fn outcome(
    p: &Pending,
    status: DeliveryStatus,
    reason: Option<String>,
    provider_id: Option<String>,
    invalid_token: bool,
) -> DeliveryOutcome {
    DeliveryOutcome {
        delivery_id: p.job.delivery_id,
        message_id: p.job.message_id,
        app_id: p.job.app_id,
        platform: p.job.platform,
        status,
        reason,
        provider_id,
        invalid_token,
        token: p.job.token.clone(),
        attempts: p.attempts + 1,
        at: chrono::Utc::now(),
    }
}

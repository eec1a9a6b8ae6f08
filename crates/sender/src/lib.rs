//! The sender role: consumes delivery jobs, claims each delivery in the
//! ledger, sends it through APNs or FCM, settles it, publishes its outcome, and
//! commits a batch's offsets only once every delivery in it is settled or
//! handed on (to the retry topic, or the dead-letter topic).

mod campaigns;
mod credentials;
mod ledger_guard;

pub use campaigns::CampaignGate;
pub use credentials::CredentialsCache;
pub use ledger_guard::OutcomeProbes;

use futures::stream::{self, FuturesOrdered, StreamExt};
use herald_bus::{BatchConsumer, BatchEnd, Committer, Publisher};
use herald_config::SenderConfig;
use herald_core::dedupe::{action, Claim, ClaimAction};
use herald_core::{
    DeadLetter, DeliveryId, DeliveryJob, DeliveryOutcome, DeliveryPolicy, DeliveryStatus,
    OutcomeClass, Platform, RESENT_AFTER_UNKNOWN,
};
use herald_ledger::{ClaimBatch, Ledger, Settle, Settled};
use herald_providers::Providers;
use herald_store::Store;
use herald_telemetry::health::LoopHealth;
use ledger_guard::LedgerGuard;
use rand::Rng;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The most finished sends of a lane waiting for their settle: while Redis
/// does not take settles, no new request starts once this many are waiting,
/// so a crash then leaves few sent and unsettled (to takeovers).
const UNSETTLED_AHEAD: usize = 512;
/// Batches of a lane sending at once: the next batch is fetched, claimed
/// and its requests start while the last one's slowest requests finish,
/// instead of every batch ending in a lull. A batch gives its place up once
/// its last request has finished, not once it is settled and published:
/// its settles and its outcomes' publish need no place to send from.
const PIPELINE_DEPTH: usize = 2;
/// Batches of a lane handed out and not yet committed (sending, or
/// settling and publishing behind the ones sending), which bounds what a
/// slow tail holds in memory. One more than those sending was as fast as
/// twice as many in a 300,000-device campaign, and held 9 MB less.
const UNCOMMITTED_BATCHES: usize = PIPELINE_DEPTH + 1;
/// A request leaves only while the lease holds for at least this long
/// still: the time between the check and the request reaching the
/// provider, with room to spare.
const LEASE_MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Bus(#[from] herald_bus::BusError),
    #[error(transparent)]
    Ledger(#[from] herald_ledger::LedgerError),
    #[error(transparent)]
    Store(#[from] herald_store::StoreError),
    #[error("a batch's round panicked: {0}")]
    Panicked(String),
}

pub struct Sender {
    pub ledger: Ledger,
    pub providers: Providers,
    pub publisher: Publisher,
    pub credentials: CredentialsCache,
    pub campaigns: CampaignGate,
    pub store: Store,
    pub config: SenderConfig,
    guard: LedgerGuard,
}

/// A permanently invalid token, and since when (if the provider said).
#[derive(Debug, Clone, Copy)]
struct InvalidToken {
    since: Option<chrono::DateTime<chrono::Utc>>,
}

/// How one send attempt ended, before the ledger is told.
enum Step {
    Settle {
        status: DeliveryStatus,
        reason: Option<String>,
        provider_id: Option<String>,
        invalid_token: Option<InvalidToken>,
    },
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Not sent, or sent with an unknown outcome and not resent, because the
    /// sender is shutting down or its lease may have run out (it stalled):
    /// released, if still ours, and handed to the retries topic as it is,
    /// for another sender (the ledger holds any doubt).
    Handback,
    /// Cannot be processed as things stand (no such app, no credentials):
    /// released in the ledger so that a replay can send it.
    DeadLetter { reason: String },
}

impl Step {
    /// What came of the attempt, for its span.
    fn name(&self) -> &'static str {
        match self {
            Step::Settle { status, .. } => status.as_str(),
            Step::Retry { .. } => "retry",
            Step::Handback => "handed_back",
            Step::DeadLetter { .. } => "dead_letter",
        }
    }
}

/// One send to the provider, in the trace of the work that made the job.
fn delivery_span(job: &DeliveryJob) -> tracing::Span {
    let span = tracing::info_span!(
        "deliver",
        otel.kind = "client",
        delivery_id = %job.delivery_id,
        message_id = %job.message_id,
        app_id = %job.app_id,
        platform = job.platform.as_str(),
        attempt = job.attempt,
        outcome = tracing::field::Empty,
    );
    herald_telemetry::follow(&span, job.trace_parent.as_deref());
    span
}

/// What a round leaves to be published before the batch is committed.
#[derive(Default)]
struct Handoff {
    retries: Vec<DeliveryJob>,
    dead_letters: Vec<DeadLetter>,
    outcomes: Vec<DeliveryOutcome>,
}

/// What the batches of one lane share.
#[derive(Clone)]
struct LaneLimits {
    /// Requests in flight (`sender.concurrency`).
    sends: Arc<tokio::sync::Semaphore>,
    /// Deliveries whose request started and whose settle is not yet in
    /// the ledger: those in flight and at most UNSETTLED_AHEAD finished. A
    /// place is taken before a request starts and given back once its
    /// settle is written.
    unsettled: Arc<tokio::sync::Semaphore>,
}

/// One claim-send-settle pass over a batch. Its claims are held in the
/// round's own name, so a round that claims again (its first answer was
/// lost) gets its own claims back instead of finding them busy.
struct Round<'a> {
    id: String,
    health: &'a LoopHealth,
    shutdown: &'a CancellationToken,
    limits: &'a LaneLimits,
    /// The batch's place among those sending (see PIPELINE_DEPTH), given up
    /// when its last request has finished.
    place: &'a Mutex<Option<OwnedSemaphorePermit>>,
    /// Whether a claim of this round may be in Redis: only this round can
    /// take those claims back (as its own) before their lease runs out.
    claims_written: AtomicBool,
}

impl Round<'_> {
    /// Runs `op` until it succeeds. What it records is already true (a send
    /// happened, an outcome is known): giving up would lose it, and running
    /// the round again would send what its claims say is being sent.
    async fn persist<T, E, F, Fut>(&self, what: &str, op: F) -> T
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(v) => return v,
                Err(e) => {
                    self.health.failed(&e);
                    tracing::warn!(error = %e, "{what} failed; retrying in place");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl Handoff {
    fn append(&mut self, other: Handoff) {
        self.retries.extend(other.retries);
        self.dead_letters.extend(other.dead_letters);
        self.outcomes.extend(other.outcomes);
    }
}

/// Why a takeover's delivered send is recorded as a resend.
const TAKEN_OVER: &str = "taken over from an owner that left no outcome";

/// How often the ledger's write sequences are compared with PostgreSQL's.
const LEDGER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a retry consumer waits on a job not yet due before it puts
/// the job back on the retries topic and reads on.
const MAX_RETRY_HOLD: Duration = Duration::from_secs(1);

impl Sender {
    pub fn new(
        ledger: Ledger,
        providers: Providers,
        publisher: Publisher,
        store: Store,
        config: SenderConfig,
        outcome_probes: OutcomeProbes,
    ) -> Self {
        Self {
            credentials: CredentialsCache::new(store.clone(), Duration::from_secs(30)),
            campaigns: CampaignGate::new(store.clone(), Duration::from_millis(500)),
            guard: LedgerGuard::new(outcome_probes, ledger.lease()),
            ledger,
            providers,
            publisher,
            store,
            config,
        }
    }

    /// Consumes new jobs from `deliveries` and due retries from `retries`
    /// until `shutdown`; each loop finishes the batch it holds first.
    pub async fn run(
        self: Arc<Self>,
        deliveries: BatchConsumer,
        campaigns: BatchConsumer,
        retries: BatchConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), SenderError> {
        if self.config.dedupe {
            // Before the first claim: a Redis that lost writes while this
            // process was away must not be trusted by it.
            if let Err(e) = self.learn_watermarks().await {
                tracing::warn!(error = %e, "reading the ledger's watermarks at start");
            }
        }
        // Each lane has its own loop: a push is sent while a campaign's
        // batch is still going out.
        let main = tokio::spawn(self.clone().consume(deliveries, false, shutdown.clone()));
        let bulk = tokio::spawn(self.clone().consume(campaigns, false, shutdown.clone()));
        let retry = tokio::spawn(self.clone().consume(retries, true, shutdown.clone()));
        if self.config.dedupe {
            tokio::spawn(self.watch_ledger(shutdown));
        }
        // Lanes end on shutdown; one that ends in error ends the sender at
        // once, as a crash would, for its supervisor to start it again.
        let mut lanes: futures::stream::FuturesUnordered<_> =
            [main, bulk, retry].into_iter().collect();
        while let Some(lane) = lanes.next().await {
            match lane {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(SenderError::Panicked(e.to_string())),
            }
        }
        Ok(())
    }

    async fn consume(
        self: Arc<Self>,
        consumer: BatchConsumer,
        wait_for_due: bool,
        shutdown: CancellationToken,
    ) -> Result<(), SenderError> {
        let linger = Duration::from_millis(self.config.batch_linger_ms);
        let health = herald_telemetry::health::register(format!(
            "the sender's settle loop ({})",
            consumer.label()
        ));
        // The retry lane waits for each job's time in order: one batch at a
        // time there.
        let (depth, uncommitted) = if wait_for_due {
            (1, 1)
        } else {
            (PIPELINE_DEPTH, UNCOMMITTED_BATCHES)
        };
        let places = Arc::new(tokio::sync::Semaphore::new(depth));
        // One limit for the lane's requests, whichever batch they are of.
        let limits = LaneLimits {
            sends: Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1))),
            unsettled: Arc::new(tokio::sync::Semaphore::new(
                self.config.concurrency.max(1) + UNSETTLED_AHEAD,
            )),
        };
        let committer = consumer.committer();
        // Offsets are committed in the order the batches were handed out,
        // each once it is settled: a later batch's commit never passes an
        // earlier batch still in flight.
        let mut in_flight = FuturesOrdered::new();
        // The consumer is either here or inside the fetch that waits for the
        // next batch, which hands it back with the batch.
        let mut idle = Some(consumer);
        let mut fetch = None;
        // Why the loop stopped committing, if it did.
        let mut stopped: Option<Result<(), SenderError>> = None;
        let size = self.config.batch_size;
        loop {
            if fetch.is_none() && in_flight.len() < uncommitted {
                if let Some(mut consumer) = idle.take() {
                    let places = places.clone();
                    fetch = Some(Box::pin(async move {
                        // Never closed: Err only were it.
                        let place = places.acquire_owned().await.ok();
                        let batch = consumer.next_batch(size, linger).await;
                        (consumer, batch, place)
                    }));
                }
            }
            tokio::select! {
                // Records handed out and not settled are not committed:
                // whoever runs next reads them again.
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.next() => {
                    match commit_settled(&committer, done, &shutdown) {
                        Ok(true) => {}
                        Ok(false) => {
                            stopped = Some(Ok(()));
                            break;
                        }
                        Err(e) => {
                            stopped = Some(Err(e));
                            break;
                        }
                    }
                }
                (consumer, batch, place) = async {
                    match fetch.as_mut() {
                        Some(fetch) => fetch.await,
                        // Not polled: the branch is off without a fetch.
                        None => std::future::pending().await,
                    }
                }, if fetch.is_some() => {
                    fetch = None;
                    idle = Some(consumer);
                    match batch {
                        Ok(batch) => in_flight.push_back(tokio::spawn(self.clone().settle_batch(
                            batch,
                            wait_for_due,
                            health.clone(),
                            shutdown.clone(),
                            limits.clone(),
                            place,
                        ))),
                        Err(e) => {
                            tracing::warn!(error = %e, "consuming delivery jobs");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
        // The batches in flight finish (on shutdown, unsent jobs are handed
        // back) and are committed in order, until one is not settled. A
        // fetch left waiting keeps the consumer, and so the commits, alive
        // until then.
        while let Some(done) = in_flight.next().await {
            if stopped.is_none() {
                match commit_settled(&committer, done, &shutdown) {
                    Ok(true) => {}
                    Ok(false) => stopped = Some(Ok(())),
                    Err(e) => stopped = Some(Err(e)),
                }
            }
        }
        if let Some(consumer) = idle {
            consumer.unsubscribe();
        }
        drop(fetch);
        // A panicked round ends the sender (and so the process, as a crash
        // would): a lane that quietly stopped would leave its jobs unread.
        stopped.unwrap_or(Ok(()))
    }

    /// Decodes and settles one batch; the batch's end comes back with
    /// whether it was settled (false when a shutdown came while its retries
    /// waited for their time: they are left to whoever runs next). The
    /// records themselves are let go of once decoded.
    async fn settle_batch(
        self: Arc<Self>,
        batch: Vec<OwnedMessage>,
        wait_for_due: bool,
        health: Arc<LoopHealth>,
        shutdown: CancellationToken,
        limits: LaneLimits,
        place: Option<OwnedSemaphorePermit>,
    ) -> (BatchEnd, bool) {
        let mut jobs = self.decode(&batch).await;
        let end = BatchEnd::of(&batch);
        drop(batch);
        if !wait_for_due {
            let place = Mutex::new(place);
            let settled = self
                .process_until_settled(jobs, &health, &shutdown, &limits, &place)
                .await;
            return (end, settled);
        }
        // The retries wait for their time in order, a batch at a time: its
        // place is kept until the whole batch is done.
        let _place = place;
        let no_place = Mutex::new(None);
        jobs.sort_by_key(|j| j.not_before);
        while !jobs.is_empty() {
            let due_at = jobs[0].not_before.unwrap_or_default();
            let wait = (due_at - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return (end, false),
                _ = tokio::time::sleep(wait.min(MAX_RETRY_HOLD)) => {}
            }
            if wait > MAX_RETRY_HOLD {
                // A long wait (FCM's quota backoff is a minute) would hold
                // back every retry behind it: put these at the end of the
                // topic, to come round again, and read on.
                while let Err(e) = self.publisher.publish_retries(&jobs).await {
                    tracing::warn!(error = %e, "putting back retries not yet due failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                break;
            }
            let now = chrono::Utc::now();
            let due = jobs.partition_point(|j| j.not_before.is_none_or(|t| t <= now));
            let ready: Vec<DeliveryJob> = jobs.drain(..due.max(1)).collect();
            if !self
                .process_until_settled(ready, &health, &shutdown, &limits, &no_place)
                .await
            {
                return (end, false);
            }
        }
        (end, true)
    }

    /// Learns the highest write sequences PostgreSQL recorded (every claim
    /// batch is compared with them), and compares Redis's with them even
    /// when no batch comes: a Redis that lost writes (and kept its marker)
    /// shows less, and is declared lost.
    async fn watch_ledger(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LEDGER_CHECK_INTERVAL) => {}
            }
            if let Err(e) = self.learn_watermarks().await {
                tracing::debug!(error = %e, "reading the ledger's watermarks");
                continue;
            }
            if let Ok(losses) = self.ledger.losses().await {
                self.guard.losses_read(&self.ledger, losses);
            }
            if self.guard.awaiting_markers() && matches!(self.ledger.intact().await, Ok(true)) {
                self.guard.marked_intact();
            }
            let before = self.guard.seen();
            let now = match self.ledger.read_seqs().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the ledger's write sequences");
                    continue;
                }
            };
            let behind = self.guard.went_back(&before, &now);
            if behind.is_empty() {
                continue;
            }
            if let Err(e) = self
                .guard
                .declare_lost(
                    &self.ledger,
                    &behind,
                    "Redis shows a lower write sequence than PostgreSQL recorded",
                )
                .await
            {
                tracing::warn!(error = %e, "declaring the ledger lost failed; will try again");
            }
        }
    }

    /// Every sequence PostgreSQL recorded was in Redis before: a claim that
    /// shows less is about a ledger that lost writes.
    async fn learn_watermarks(&self) -> Result<(), SenderError> {
        for (scope, seq) in self.store.ledger_watermarks().await? {
            self.guard.saw(&scope, seq);
        }
        Ok(())
    }

    /// Decodes a batch; what cannot be decoded goes to the dead-letter topic.
    async fn decode(&self, batch: &[OwnedMessage]) -> Vec<DeliveryJob> {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut letters = Vec::new();
        for m in batch {
            let payload = m.payload().unwrap_or_default();
            match DeliveryJob::from_json(payload) {
                Ok(job) => jobs.push(job),
                Err(e) => {
                    tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e, "undecodable delivery job dead-lettered");
                    letters.push(DeadLetter {
                        reason: format!("undecodable job: {e}"),
                        job: None,
                        raw: Some(String::from_utf8_lossy(payload).into_owned()),
                        source_topic: m.topic().to_string(),
                        at: chrono::Utc::now(),
                    });
                }
            }
        }
        while let Err(e) = self.publisher.publish_dead_letters(&letters).await {
            tracing::warn!(error = %e, "publishing dead letters failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        jobs
    }

    /// A batch is settled before its offsets are committed. A failure before
    /// anything was sent (Redis or PostgreSQL away) runs the round again;
    /// after that, every step is retried in place. False when a shutdown
    /// came while the round could not start: nothing of it was sent, and
    /// its jobs are left to be read again.
    async fn process_until_settled(
        &self,
        jobs: Vec<DeliveryJob>,
        health: &LoopHealth,
        shutdown: &CancellationToken,
        limits: &LaneLimits,
        place: &Mutex<Option<OwnedSemaphorePermit>>,
    ) -> bool {
        let round = Round {
            id: format!("{:016x}", rand::rng().random::<u64>()),
            health,
            shutdown,
            limits,
            place,
            claims_written: false.into(),
        };
        while let Err(e) = self.process(&jobs, &round).await {
            health.failed(&e);
            tracing::warn!(error = %e, "claiming a batch failed; trying again");
            // A round that wrote no claim may stop on a shutdown, its jobs
            // left to be read again. One whose claims may be in Redis claims
            // again until it can hand them back: a next sender would find
            // them busy, then take them over as a send that died (recorded
            // unknown under at-most-once).
            let claims_written = round.claims_written.load(Ordering::SeqCst);
            tokio::select! {
                _ = shutdown.cancelled(), if !claims_written => return false,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        health.ok();
        true
    }

    /// One claim-send-settle round for a batch; retries and dead letters are
    /// published before it returns. Errors only before anything is sent.
    async fn process(&self, jobs: &[DeliveryJob], round: &Round<'_>) -> Result<(), SenderError> {
        let admitted = self.campaigns.admit(jobs).await?;
        // Two copies of a job in one batch are one delivery: the first
        // copy's outcome stands for both.
        let mut seen = HashSet::new();
        let jobs: Vec<DeliveryJob> = admitted
            .into_iter()
            .filter(|j| seen.insert(j.delivery_id))
            .collect();
        let jobs = &jobs[..];
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<_> = jobs.iter().map(|j| j.delivery_id).collect();
        let seen_before = self.guard.seen();
        // Redis counts the leases from when it runs the claim, after this.
        let claimed_at = Instant::now();
        let batch = if self.config.dedupe {
            let claimed = self.ledger.claim_batch(&ids, &round.id).await;
            if !matches!(claimed, Err(herald_ledger::LedgerError::ClaimsRefused(_))) {
                round.claims_written.store(true, Ordering::SeqCst);
            }
            claimed?
        } else {
            ClaimBatch {
                claims: vec![Claim::Claimed { epoch: 1 }; ids.len()],
                ledger_intact: true,
                seqs: HashMap::new(),
            }
        };
        let mut claims = batch.claims;
        let mut intact = batch.ledger_intact;
        if intact {
            self.guard.marked_intact();
        }
        let went_back = self.guard.went_back(&seen_before, &batch.seqs);
        if !went_back.is_empty() {
            self.guard
                .declare_lost(
                    &self.ledger,
                    &went_back,
                    "a claim saw a lower write sequence than this sender's settles had made",
                )
                .await?;
            intact = false;
        }
        metrics::gauge!("herald_ledger_fallback").set(if intact { 0.0 } else { 1.0 });
        if !intact {
            self.guard
                .ledger_lost(&self.ledger, &self.store, self.config.dedupe_horizon_hours)
                .await;
            self.fall_back_to_postgres(jobs, &mut claims, round).await?;
        }

        let mut handoff = Handoff::default();
        let mut to_send = Vec::new();
        let mut settled: Vec<(DeliveryJob, u64, Step)> = Vec::new();
        for (job, claim) in jobs.iter().cloned().zip(claims) {
            let epoch = match &claim {
                Claim::Claimed { epoch } | Claim::TakenOver { epoch, .. } => *epoch,
                _ => 0,
            };
            let resend = matches!(claim, Claim::TakenOver { .. });
            if let Claim::TakenOver { takeovers, .. } = claim {
                metrics::counter!("herald_lease_takeovers_total").increment(1);
                tracing::info!(
                    delivery_id = %job.delivery_id, takeovers, policy = job.policy.as_str(),
                    "lease expired: the previous owner died mid-send; the policy decides"
                );
            }
            match action(&claim, job.policy) {
                ClaimAction::Send if job.is_expired(chrono::Utc::now()) => {
                    let step = settle(DeliveryStatus::Expired, "expired before it could be sent");
                    settled.push((job, epoch, step));
                }
                ClaimAction::Send => to_send.push((job, epoch, resend)),
                ClaimAction::RecordUnknown => {
                    let reason = "a sender died mid-send; whether the provider got it is unknown";
                    settled.push((job, epoch, settle(DeliveryStatus::Unknown, reason)));
                }
                ClaimAction::RetryLater => {
                    // Another sender holds a live lease: look again when it ends.
                    let wait = match claim {
                        Claim::Busy { retry_in_ms } => retry_in_ms.max(1).unsigned_abs() + 50,
                        _ => 100,
                    };
                    handoff.retries.push(DeliveryJob {
                        not_before: Some(chrono::Utc::now() + chrono_ms(wait)),
                        ..job
                    });
                }
                ClaimAction::SkipDuplicate => {
                    // The first owner settled it; its outcome may not have reached
                    // Kafka if it died right after, so say it again (the recorder
                    // keeps the first).
                    if let Claim::Settled { state } = &claim {
                        if let Some(status) = DeliveryStatus::parse(state) {
                            metrics::counter!("herald_dedupe_hits_total").increment(1);
                            tracing::debug!(delivery_id = %job.delivery_id, %state, "duplicate job dropped");
                            handoff
                                .outcomes
                                .push(outcome(&job, status, None, None, None));
                        }
                    }
                }
            }
        }
        handoff.append(self.settle(settled, round).await);

        // The leases of sends still outstanding are renewed until they
        // settle: a slow provider, a long batch or a shutdown that waits for
        // its requests never lets a lease run out under a live send.
        // Each with its epoch and when its lease surely still holds (from
        // when the claim or the last renewal that kept it was sent).
        let lease = self.ledger.lease();
        let outstanding: Mutex<HashMap<DeliveryId, (u64, Instant)>> = Mutex::new(
            to_send
                .iter()
                .map(|(job, epoch, _)| (job.delivery_id, (*epoch, claimed_at + lease)))
                .collect(),
        );
        let outstanding = &outstanding;
        let held = || {
            outstanding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };

        // Settle sends as they finish: one slow request does not hold back
        // the others, and the window between the provider's answer and the
        // ledger's record stays as short as it can.
        let mut finished = stream::iter(to_send)
            .map(|(job, epoch, resend)| async move {
                if round.shutdown.is_cancelled() {
                    return (job, epoch, Step::Handback, None);
                }
                // Not while too many sends wait for their settle (Redis
                // slow or away). Never closed; were it, the send would go
                // without a place.
                let unsettled = tokio::select! {
                    place = round.limits.unsettled.clone().acquire_owned() => place.ok(),
                    _ = round.shutdown.cancelled() => return (job, epoch, Step::Handback, None),
                };
                let _place = tokio::select! {
                    place = round.limits.sends.acquire() => place.ok(),
                    _ = round.shutdown.cancelled() => return (job, epoch, Step::Handback, unsettled),
                };
                // A campaign paused or cancelled while its job waited here:
                // released and handed to the retries lane, whose gate drops
                // it (as superseded, if the campaign was resumed meanwhile:
                // the resumed walk hands the device out again).
                // Unknown (PostgreSQL away) is what admitted it: it goes.
                if self.campaigns.now_held(&job).await.unwrap_or(false) {
                    return (job, epoch, Step::Handback, unsettled);
                }
                let span = delivery_span(&job);
                // A request must leave while the lease is surely ours: a
                // sender stalled past it (SIGSTOP, a long pause) may have
                // been taken over, and its late send would be a second one.
                let lease_holds = || {
                    !self.config.dedupe
                        || held()
                            .get(&job.delivery_id)
                            .is_some_and(|(_, until)| Instant::now() + LEASE_MARGIN < *until)
                };
                let step = self
                    .attempt(&job, epoch, resend, round, &lease_holds)
                    .instrument(span.clone())
                    .await;
                span.record("outcome", step.name());
                (job, epoch, step, unsettled)
            })
            .buffer_unordered(self.config.concurrency.max(1));
        // Outcomes go out as they settle, but the ledger never waits for
        // Kafka: were a chunk's settle held behind a publish (a cluster
        // failing over takes seconds), leases would run out on deliveries
        // already sent, and a copy of their jobs could send them again.
        let (outcomes_tx, mut outcomes_rx) = tokio::sync::mpsc::unbounded_channel();
        // Settled in Redis, their outcomes not yet in Kafka: were Redis to
        // lose those settles now, nothing but this round would know that
        // they were sent (the recorder cannot have them), so the renewals
        // write them back until they are published.
        let unpublished: Mutex<HashMap<DeliveryId, (u64, DeliveryStatus)>> = Mutex::default();
        let unpublished = &unpublished;
        let unpublished_now = || {
            unpublished
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        // Sends are driven on their own, and never wait for the settles:
        // were they polled only between settles, or held while a settle
        // went to Redis, finished requests would keep their places, and
        // answers already in would wait unread (long enough, a 200 would
        // time out and be sent again). What bounds the lead over the ledger
        // is each request's place among the lane's unsettled ones, taken
        // before it starts and given back once its settle is written.
        // One finished send at a time: a chunk per wake-up (as
        // `ready_chunks` makes) reserves room for a full chunk however few
        // it holds, and hundreds of them waiting for a settle were more
        // than a quarter of a busy sender's heap.
        let (sends_tx, mut sends_rx) = tokio::sync::mpsc::unbounded_channel();
        let send_all = async {
            while let Some(sent) = finished.next().await {
                if sends_tx.send(sent).is_err() {
                    break;
                }
            }
            // The batch's requests have all finished: the next batch may
            // start sending while these settle and publish.
            round
                .place
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            drop(sends_tx);
        };
        let settle_all = async {
            while let Some(first) = sends_rx.recv().await {
                // What finished during the last settle is settled together
                // (at most the lane's unsettled places).
                let mut chunk = vec![first];
                while let Ok(more) = sends_rx.try_recv() {
                    chunk.push(more);
                }
                let (chunk, places): (Vec<_>, Vec<_>) = chunk
                    .into_iter()
                    .map(|(job, epoch, step, place)| ((job, epoch, step), place))
                    .unzip();
                let ids: Vec<_> = chunk.iter().map(|(job, _, _)| job.delivery_id).collect();
                let epochs: HashMap<DeliveryId, u64> = chunk
                    .iter()
                    .map(|(job, epoch, _)| (job.delivery_id, *epoch))
                    .collect();
                let mut h = self.settle(chunk, round).await;
                // Written to the ledger: their places go to new requests.
                drop(places);
                let mut held = held();
                for id in ids {
                    held.remove(&id);
                }
                drop(held);
                unpublished_now().extend(h.outcomes.iter().filter_map(|o| {
                    let epoch = *epochs.get(&o.delivery_id)?;
                    Some((o.delivery_id, (epoch, o.status)))
                }));
                let _ = outcomes_tx.send(std::mem::take(&mut h.outcomes));
                handoff.append(h);
            }
            drop(outcomes_tx);
        };
        let publish_all = async {
            while let Some(mut outcomes) = outcomes_rx.recv().await {
                // Whatever settled while the last publish waited for its
                // acknowledgement goes out in one publish: with fast settles,
                // a publish per small chunk would queue behind each other's
                // acknowledgements and hold the batch's commit back.
                while let Ok(more) = outcomes_rx.try_recv() {
                    outcomes.extend(more);
                }
                round
                    .persist("publishing outcomes", || {
                        self.publisher.publish_outcomes(&outcomes)
                    })
                    .await;
                let mut unpublished = unpublished_now();
                for o in &outcomes {
                    unpublished.remove(&o.delivery_id);
                }
            }
        };
        let renew_all = async {
            let every = (self.ledger.lease() / 3).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(every).await;
                let mine: Vec<(DeliveryId, u64)> =
                    held().iter().map(|(k, (epoch, _))| (*k, *epoch)).collect();
                let settled: Vec<(DeliveryId, u64, Settle)> = unpublished_now()
                    .iter()
                    .map(|(id, (epoch, status))| {
                        let state = status.as_str().to_string();
                        (*id, *epoch, Settle::Complete { state })
                    })
                    .collect();
                if !self.config.dedupe {
                    continue;
                }
                if !settled.is_empty() {
                    // Settling again in the same words is the same settle;
                    // a settle Redis lost is written again.
                    match self.ledger.complete_batch(&settled).await {
                        Ok(answers) => {
                            let mut written = 0;
                            for mark in answers
                                .iter()
                                .filter(|a| a.ours)
                                .filter_map(|a| a.mark.as_ref())
                            {
                                self.guard.saw(&mark.scope, mark.seq);
                                written += 1;
                            }
                            if written > 0 {
                                metrics::counter!("herald_ledger_settles_written_back_total")
                                    .increment(written);
                                tracing::warn!(
                                    written_back = written,
                                    "Redis had lost settles whose outcomes are not published yet: written back"
                                );
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "writing back unpublished settles failed; trying again")
                        }
                    }
                }
                if mine.is_empty() {
                    continue;
                }
                let sent_at = Instant::now();
                match self.ledger.renew_batch(&mine, &round.id).await {
                    Ok(answers) => {
                        let mut held = held();
                        let mut lost = 0;
                        for ((id, _), ours) in mine.iter().zip(answers) {
                            match held.get_mut(id) {
                                Some((_, until)) if ours => *until = sent_at + lease,
                                Some((_, until)) => {
                                    // Another owner has it: nothing more goes out.
                                    *until = sent_at;
                                    lost += 1;
                                }
                                None => {}
                            }
                        }
                        drop(held);
                        if lost > 0 {
                            metrics::counter!("herald_lease_renewals_lost_total")
                                .increment(lost as u64);
                            tracing::warn!(
                                lost,
                                "leases lost while their sends were outstanding: another owner took over"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the leases of outstanding sends failed; trying again")
                    }
                }
            }
        };
        tokio::select! {
            biased;
            _ = async { tokio::join!(send_all, settle_all, publish_all) } => {}
            _ = renew_all => {}
        }
        round
            .persist("publishing outcomes", || {
                self.publisher.publish_outcomes(&handoff.outcomes)
            })
            .await;
        round
            .persist("publishing retries", || {
                self.publisher.publish_retries(&handoff.retries)
            })
            .await;
        round
            .persist("publishing dead letters", || {
                self.publisher.publish_dead_letters(&handoff.dead_letters)
            })
            .await;
        Ok(())
    }

    /// While the ledger is being rebuilt, a fresh claim may be about a delivery
    /// settled before Redis lost its data: PostgreSQL knows, so ask it, and
    /// copy what it says into the ledger.
    /// During a hold (see `ledger_guard`), a fresh claim PostgreSQL does not
    /// know as settled is given back unsent, to be looked at again after it.
    async fn fall_back_to_postgres(
        &self,
        jobs: &[DeliveryJob],
        claims: &mut [Claim],
        round: &Round<'_>,
    ) -> Result<(), SenderError> {
        let claimed: Vec<_> = jobs
            .iter()
            .zip(claims.iter())
            .filter(|(_, c)| matches!(c, Claim::Claimed { .. } | Claim::TakenOver { .. }))
            .map(|(j, _)| (j.message_id, j.delivery_id))
            .collect();
        let settled = self.store.settled_statuses(&claimed).await?;
        let by_id: HashMap<_, _> = settled.into_iter().collect();
        if let Some(left) = self.guard.holding() {
            let mut abandoned = Vec::new();
            let mut released = Vec::new();
            for (job, claim) in jobs.iter().zip(claims.iter_mut()) {
                let Claim::Claimed { epoch } = *claim else {
                    continue;
                };
                if by_id.contains_key(&job.delivery_id) {
                    continue;
                }
                // A fresh key: deleted, so that the claim of a send in
                // flight at the loss can be written back by its renewal.
                if epoch == 1 {
                    abandoned.push((job.delivery_id, epoch));
                } else {
                    released.push((job.delivery_id, epoch, Settle::Release));
                }
                let wait = left.min(Duration::from_secs(1));
                *claim = Claim::Busy {
                    retry_in_ms: i64::try_from(wait.as_millis()).unwrap_or(1000),
                };
            }
            if !abandoned.is_empty() || !released.is_empty() {
                metrics::counter!("herald_ledger_held_claims_total")
                    .increment((abandoned.len() + released.len()) as u64);
                tracing::info!(
                    held = abandoned.len() + released.len(),
                    "ledger hold: fresh claims PostgreSQL cannot answer for yet wait"
                );
            }
            self.ledger.abandon_batch(&abandoned, &round.id).await?;
            self.ledger.complete_batch(&released).await?;
        }
        if by_id.is_empty() {
            return Ok(());
        }
        let mut steps = Vec::new();
        for (job, claim) in jobs.iter().zip(claims.iter_mut()) {
            let epoch = match claim {
                Claim::Claimed { epoch } | Claim::TakenOver { epoch, .. } => *epoch,
                _ => continue,
            };
            if let Some(status) = by_id.get(&job.delivery_id) {
                steps.push((
                    job.delivery_id,
                    epoch,
                    Settle::Complete {
                        state: status.as_str().to_string(),
                    },
                ));
                *claim = Claim::Settled {
                    state: status.as_str().to_string(),
                };
            }
        }
        tracing::info!(
            skipped = steps.len(),
            "ledger fallback: deliveries already settled in PostgreSQL were not sent again"
        );
        self.ledger.complete_batch(&steps).await?;
        Ok(())
    }

    /// Records steps in the ledger (fenced by epoch) and collects the outcomes,
    /// retries and dead letters of those still ours. The ledger is retried in
    /// place until it answers: the outcomes are known, and a round run again
    /// would take its own unsettled claims for another sender's.
    async fn settle(&self, settled: Vec<(DeliveryJob, u64, Step)>, round: &Round<'_>) -> Handoff {
        let mut handoff = Handoff::default();
        let exhausted = |job: &DeliveryJob| job.attempt + 1 >= self.config.max_attempts;
        let ledger_steps: Vec<_> = settled
            .iter()
            .map(|(job, epoch, step)| {
                let s = match step {
                    Step::Settle { status, .. } => Settle::Complete {
                        state: status.as_str().to_string(),
                    },
                    // Released, not completed: a replayed dead letter can send it.
                    Step::Retry { .. } | Step::Handback | Step::DeadLetter { .. } => {
                        Settle::Release
                    }
                };
                (job.delivery_id, *epoch, s)
            })
            .collect();
        let answers = if self.config.dedupe {
            round
                .persist("settling in the ledger", || {
                    self.ledger.complete_batch(&ledger_steps)
                })
                .await
        } else {
            vec![
                Settled {
                    ours: true,
                    mark: None
                };
                ledger_steps.len()
            ]
        };
        for ((job, _, step), answer) in settled.into_iter().zip(answers) {
            if !answer.ours {
                tracing::warn!(delivery_id = %job.delivery_id, "lease lost before settling; outcome left to the new owner");
                continue;
            }
            if let Some(mark) = &answer.mark {
                self.guard.saw(&mark.scope, mark.seq);
            }
            match step {
                Step::Settle {
                    status,
                    reason,
                    provider_id,
                    invalid_token,
                } => handoff.outcomes.push(DeliveryOutcome {
                    ledger_mark: answer.mark,
                    ..outcome(&job, status, reason, provider_id, invalid_token)
                }),
                Step::Retry { reason, .. } if exhausted(&job) => {
                    let reason = format!("gave up after {} attempts: {reason}", job.attempt + 1);
                    handoff.dead_letter(job, reason);
                }
                Step::Retry {
                    reason,
                    retry_after,
                } => {
                    let wait = self.backoff(job.attempt, retry_after);
                    tracing::debug!(delivery_id = %job.delivery_id, %reason, ?wait, "retrying later");
                    handoff.retries.push(DeliveryJob {
                        attempt: job.attempt + 1,
                        not_before: Some(chrono::Utc::now() + chrono_ms(wait.as_millis() as u64)),
                        ..job
                    });
                }
                Step::Handback => {
                    tracing::debug!(delivery_id = %job.delivery_id, "handed back unsent (shutdown, or its campaign held)");
                    handoff.retries.push(DeliveryJob {
                        not_before: None,
                        ..job
                    });
                }
                Step::DeadLetter { reason } => handoff.dead_letter(job, reason),
            }
        }
        handoff
    }

    /// Sends once; an unknown outcome under `at_least_once` is resent once at
    /// once, with the same ids, unless this send already was a resend (the
    /// claim was a takeover), or the sender is shutting down (the next
    /// owner resends it).
    fn lease_ran_out(&self, job: &DeliveryJob) -> Step {
        metrics::counter!("herald_lease_ran_out_before_send_total").increment(1);
        tracing::warn!(
            delivery_id = %job.delivery_id,
            "the lease may have run out before the request left (the sender stalled): not sent, handed back"
        );
        Step::Handback
    }

    async fn attempt(
        &self,
        job: &DeliveryJob,
        epoch: u64,
        resend: bool,
        round: &Round<'_>,
        lease_holds: &(dyn Fn() -> bool + Sync),
    ) -> Step {
        let has_platform = |c: &herald_providers::Credentials| match job.platform {
            Platform::Ios => c.apns.is_some(),
            Platform::Android => c.fcm.is_some(),
        };
        let creds = match self.credentials.get(job.app_id).await {
            Ok(Some(c)) if has_platform(&c) => Ok(Some(c)),
            // Before giving up on an app, make sure the cache is not stale.
            _ => self.credentials.reload(job.app_id).await,
        };
        let creds = match creds {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Step::DeadLetter {
                    reason: format!("unknown app {}", job.app_id),
                }
            }
            Err(e) => {
                return Step::Retry {
                    reason: format!("loading credentials: {e}"),
                    retry_after: None,
                }
            }
        };
        if !has_platform(&creds) {
            let provider = match job.platform {
                Platform::Ios => "APNs",
                Platform::Android => "FCM",
            };
            return Step::DeadLetter {
                reason: format!("the app has no usable {provider} credentials"),
            };
        }
        if !lease_holds() {
            return self.lease_ran_out(job);
        }
        // A takeover's send may be the device's second copy: the owner before
        // us left no outcome. Its record says so, as an immediate resend's does.
        let mut resent_after = resend.then(|| TAKEN_OVER.to_string());
        let mut class = self.timed_send(job, &creds).await;
        if let OutcomeClass::Unknown { reason } = &class {
            if job.policy == DeliveryPolicy::AtLeastOnce && !resend {
                // The ledger learns of the doubt before the resend: whoever
                // holds the claim after us (we stall past the lease, we die,
                // the resend is refused and retried) may not resend again.
                let ours = !self.config.dedupe
                    || round
                        .persist("recording an unknown outcome in the ledger", || {
                            self.ledger.mark_doubt(job.delivery_id, epoch, &round.id)
                        })
                        .await;
                if !ours {
                    return settle(DeliveryStatus::Unknown, reason);
                }
                if round.shutdown.is_cancelled() {
                    tracing::info!(delivery_id = %job.delivery_id, %reason, "outcome unknown; handed back for the next sender to resend");
                    return Step::Handback;
                }
                if !lease_holds() {
                    return self.lease_ran_out(job);
                }
                tracing::info!(delivery_id = %job.delivery_id, %reason, "outcome unknown; resending once");
                resent_after = Some(reason.clone());
                class = self.timed_send(job, &creds).await;
            }
        }
        match class {
            // The record says the device may have it twice: that is what
            // `at_least_once` allows, and what its sender must be able to see.
            OutcomeClass::Delivered { provider_id } => Step::Settle {
                status: DeliveryStatus::Delivered,
                reason: resent_after.map(|r| format!("{RESENT_AFTER_UNKNOWN} ({r})")),
                provider_id,
                invalid_token: None,
            },
            OutcomeClass::Rejected {
                reason,
                invalid_token,
                invalid_since,
            } => Step::Settle {
                status: DeliveryStatus::Rejected,
                reason: Some(reason),
                provider_id: None,
                invalid_token: invalid_token.then_some(InvalidToken {
                    since: invalid_since,
                }),
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

    async fn timed_send(
        &self,
        job: &DeliveryJob,
        creds: &herald_providers::Credentials,
    ) -> OutcomeClass {
        let started = std::time::Instant::now();
        let class = self.providers.send(job, creds).await;
        metrics::histogram!("herald_provider_request_seconds", "platform" => job.platform.as_str())
            .record(started.elapsed().as_secs_f64());
        class
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

impl Handoff {
    fn dead_letter(&mut self, job: DeliveryJob, reason: String) {
        tracing::warn!(delivery_id = %job.delivery_id, %reason, "dead-lettered");
        self.outcomes.push(outcome(
            &job,
            DeliveryStatus::Failed,
            Some(reason.clone()),
            None,
            None,
        ));
        self.dead_letters.push(DeadLetter {
            reason,
            job: Some(DeliveryJob {
                attempt: 0,
                not_before: None,
                ..job
            }),
            raw: None,
            source_topic: String::new(),
            at: chrono::Utc::now(),
        });
    }
}

/// Commits a batch that came back settled; false, and nothing committed,
/// for one that did not, and an error for one whose round panicked (its
/// records and every later batch's are read again by whoever runs next).
fn commit_settled(
    committer: &Committer,
    done: Result<(BatchEnd, bool), tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> Result<bool, SenderError> {
    let end = match done {
        Ok((end, true)) => end,
        Ok((_, false)) => return Ok(false),
        Err(e) => {
            tracing::error!(error = %e, "a batch's round panicked; its jobs and those after it are left uncommitted");
            return Err(SenderError::Panicked(e.to_string()));
        }
    };
    let mode = herald_bus::commit_mode(shutdown.is_cancelled());
    if let Err(e) = committer.commit(&end, mode) {
        tracing::warn!(error = %e, "committing offsets failed; the jobs will be seen again and deduped");
    }
    Ok(true)
}

fn chrono_ms(ms: u64) -> chrono::Duration {
    chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn settle(status: DeliveryStatus, reason: &str) -> Step {
    Step::Settle {
        status,
        reason: Some(reason.to_string()),
        provider_id: None,
        invalid_token: None,
    }
}

fn outcome(
    job: &DeliveryJob,
    status: DeliveryStatus,
    reason: Option<String>,
    provider_id: Option<String>,
    invalid_token: Option<InvalidToken>,
) -> DeliveryOutcome {
    DeliveryOutcome {
        delivery_id: job.delivery_id,
        message_id: job.message_id,
        app_id: job.app_id,
        platform: job.platform,
        status,
        reason,
        provider_id,
        invalid_token: invalid_token.is_some(),
        invalid_since: invalid_token.and_then(|t| t.since),
        token: job.token.clone(),
        install_id: job.install_id.clone(),
        attempts: job.attempt + 1,
        at: chrono::Utc::now(),
        ledger_mark: None,
    }
}

//! Noticing that Redis lost the ledger (all of it, or the writes of its last
//! moments), holding fresh claims until PostgreSQL knows what Redis forgot,
//! and rebuilding the ledger from PostgreSQL.
//!
//! When the ledger is lost, a fresh claim may be about a delivery that
//! (a) was settled, with its outcome not yet recorded in PostgreSQL, or
//! (b) was being sent at that moment. PostgreSQL cannot answer for either
//! at once. So every loss starts a *hold*: fresh claims that PostgreSQL does
//! not know as settled are given back unsent until (a) the recorder has
//! recorded every outcome published before the loss was noticed, and (b) a
//! third of a lease has passed, in which every live send's renewal writes
//! its claim back. After the hold, PostgreSQL's answer is complete.

use herald_bus::LagProbe;
use herald_ledger::Ledger;
use herald_store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The rebuild lock's time to live, extended with every page copied: a
/// rebuilder that dies lets another process try this much later.
const REBUILD_LOCK: Duration = Duration::from_secs(15);
const PAGE: i64 = 2000;
/// The longest a hold waits for the recorder. Past it (the recorder is
/// down), fresh claims are trusted to PostgreSQL as it is, counted in
/// `herald_ledger_holds_cut_short_total`: an outcome still unrecorded then
/// can be sent again.
const HOLD_MAX: Duration = Duration::from_secs(120);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads of a cluster's outcomes topic before the hold stops waiting for it.
const UNREADABLE_TRIES: u32 = 3;

/// What the guard needs to know when the recorder has caught up: the
/// recorder group on the outcomes topic of every cluster.
#[derive(Clone, Default)]
pub struct OutcomeProbes {
    pub probes: Vec<Arc<LagProbe>>,
    pub topic: String,
}

#[derive(Clone)]
pub(crate) struct LedgerGuard {
    rebuilding: Arc<AtomicBool>,
    /// A loss is being handled: from the first batch that found a marker
    /// missing to the first that finds it back. One hold per loss: a loss
    /// declared again meanwhile (Redis lost the writes made since) starts
    /// another.
    in_loss: Arc<AtomicBool>,
    /// When the current hold ends, and which hold it is; None: no hold, or
    /// it ended.
    hold: Arc<Mutex<Option<(Instant, u64)>>>,
    holds: Arc<AtomicU64>,
    /// The loss count (in Redis) that this process's holds have covered: a
    /// rebuild may mark the ledger intact only for losses held for here.
    held_for: Arc<AtomicU64>,
    /// The loss count last read by the ledger watch (u64::MAX: not yet).
    known_losses: Arc<AtomicU64>,
    hold_done: Arc<tokio::sync::Notify>,
    /// The highest write sequence per scope that this process made, or that
    /// PostgreSQL recorded: Redis showing less lost writes.
    seen: Arc<Mutex<HashMap<String, u64>>>,
    probes: OutcomeProbes,
    lease: Duration,
}

impl LedgerGuard {
    pub(crate) fn new(probes: OutcomeProbes, lease: Duration) -> Self {
        Self {
            rebuilding: Arc::default(),
            in_loss: Arc::default(),
            hold: Arc::default(),
            holds: Arc::default(),
            held_for: Arc::default(),
            known_losses: Arc::new(AtomicU64::new(u64::MAX)),
            hold_done: Arc::default(),
            seen: Arc::default(),
            probes,
            lease,
        }
    }

    /// How long fresh claims must still wait, if a hold is on.
    pub(crate) fn holding(&self) -> Option<Duration> {
        let (until, _) = (*self.hold.lock().unwrap_or_else(PoisonError::into_inner))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// The highest sequences seen so far, to compare a claim batch with.
    pub(crate) fn seen(&self) -> HashMap<String, u64> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn saw(&self, scope: &str, seq: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let s = seen.entry(scope.to_string()).or_insert(0);
        *s = (*s).max(seq);
    }

    /// The scopes whose sequence now is lower than one seen before it was
    /// read: Redis went back in time there. A declared loss raises the
    /// sequence past what was seen, so a scope shows as going back again
    /// only if Redis loses writes again.
    pub(crate) fn went_back(
        &self,
        before: &HashMap<String, u64>,
        now: &HashMap<String, u64>,
    ) -> Vec<String> {
        now.iter()
            .filter(|(scope, seq)| before.get(*scope).is_some_and(|b| *seq < b))
            .map(|(scope, _)| scope.clone())
            .collect()
    }

    /// A claim batch (or the ledger watch) found the markers: a rebuild
    /// (which raises the write sequences before it marks) has brought lost
    /// scopes back, and the next loss is a new one, with a hold of its own.
    pub(crate) fn marked_intact(&self) {
        self.in_loss.store(false, Ordering::SeqCst);
    }

    /// The ledger watch read the loss count: one that rose means a loss
    /// declared by some process (possibly another sender, whose settles
    /// this one never saw): this process holds too.
    pub(crate) fn losses_read(&self, ledger: &Ledger, count: u64) {
        let before = self.known_losses.swap(count, Ordering::SeqCst);
        if before != u64::MAX && count > before {
            tracing::warn!(
                losses = count,
                "a loss of the Redis ledger was declared: holding fresh claims until PostgreSQL has every outcome"
            );
            self.in_loss.store(true, Ordering::SeqCst);
            self.start_hold(ledger);
        }
    }

    /// A loss is being handled and no hold is on: the ledger watch looks
    /// for the markers, in case no batch comes before the next loss.
    pub(crate) fn awaiting_markers(&self) -> bool {
        self.in_loss.load(Ordering::SeqCst) && self.holding().is_none()
    }

    /// Redis lost writes in `scopes`: their markers go, so that every
    /// sender's next claims there fall back to PostgreSQL and a rebuild
    /// starts, and their sequences are raised past what this process saw.
    /// A loss declared while one is being handled starts a hold of its own:
    /// what was settled since the last one may be gone from Redis too, and
    /// not yet in PostgreSQL.
    pub(crate) async fn declare_lost(
        &self,
        ledger: &Ledger,
        scopes: &[String],
        why: &str,
    ) -> Result<(), herald_ledger::LedgerError> {
        metrics::counter!("herald_ledger_rollbacks_total").increment(1);
        tracing::error!(
            scopes = scopes.len(),
            %why,
            "the Redis ledger went back in time (it lost writes: a crash between fsyncs, or a failover to a replica that missed them); deduping against PostgreSQL until it is rebuilt"
        );
        let seen = self.seen();
        let raise: Vec<(String, u64)> = scopes
            .iter()
            .map(|scope| (scope.clone(), seen.get(scope).copied().unwrap_or(0)))
            .collect();
        ledger.declare_lost(&raise).await?;
        self.in_loss.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Called for every batch whose claim found a marker missing. Starts a
    /// hold and a rebuild in the background, once; until the marker is
    /// back, each batch checks its fresh claims against PostgreSQL.
    pub(crate) async fn ledger_lost(&self, ledger: &Ledger, store: &Store, horizon_hours: u64) {
        if !self.in_loss.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "the Redis ledger has no marker (first start, or Redis lost its data): \
                 holding fresh claims until PostgreSQL has every outcome, then deduping against it until the ledger is rebuilt"
            );
            // A first start against an empty history has nothing to wait for.
            if !empty_history(store).await {
                self.start_hold(ledger);
            }
        }
        // A rebuild at a time in this process; another process may hold the
        // lock, and if it dies, this one takes over on a later batch.
        if self.rebuilding.swap(true, Ordering::SeqCst) {
            return;
        }
        let guard = self.clone();
        let (ledger, store) = (ledger.clone(), store.clone());
        tokio::spawn(async move {
            guard.hold_done().await;
            match rebuild(&guard, &ledger, &store, horizon_hours).await {
                Ok(Some(n)) => {
                    tracing::info!(copied = n, "ledger rebuilt from PostgreSQL");
                    guard.marked_intact();
                }
                Ok(None) => tracing::info!("another process is rebuilding the ledger"),
                Err(e) => {
                    tracing::error!(error = %e, "rebuilding the ledger failed; will try again");
                    if let Err(e) = ledger.release_rebuild_lock().await {
                        tracing::warn!(error = %e, "giving the rebuild lock up failed; it runs out by itself");
                    }
                }
            }
            guard.rebuilding.store(false, Ordering::SeqCst);
        });
    }

    fn start_hold(&self, ledger: &Ledger) {
        let noticed = Instant::now();
        let this = self.holds.fetch_add(1, Ordering::SeqCst) + 1;
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((noticed + HOLD_MAX, this));
        metrics::counter!("herald_ledger_holds_total").increment(1);
        let guard = self.clone();
        let ledger = ledger.clone();
        tokio::spawn(async move {
            // The losses declared so far are what this hold covers: the
            // outcomes it waits for are those published before the
            // recorder's marks are read, after this.
            let covers = ledger.losses().await.ok();
            let drained = tokio::time::timeout(HOLD_MAX, guard.recorder_drained()).await;
            // Every live send renews within a third of a lease.
            let renewed = noticed + guard.lease / 3 + Duration::from_secs(1);
            tokio::time::sleep_until(renewed).await;
            if drained.is_err() {
                metrics::counter!("herald_ledger_holds_cut_short_total").increment(1);
                tracing::error!(
                    ?HOLD_MAX,
                    "the recorder did not catch up on the outcomes published before the ledger was lost: fresh claims are now checked against PostgreSQL as it is, and an outcome it has not recorded yet can be sent again"
                );
            }
            if let Some(covers) = covers {
                guard.held_for.fetch_max(covers, Ordering::SeqCst);
            }
            {
                // A later hold (another loss meanwhile) outlives this one.
                let mut hold = guard.hold.lock().unwrap_or_else(PoisonError::into_inner);
                if hold.is_some_and(|(_, which)| which == this) {
                    *hold = None;
                }
            }
            guard.hold_done.notify_waiters();
            tracing::info!(held = ?noticed.elapsed(), "ledger hold over: PostgreSQL knows every outcome from before the loss");
        });
    }

    async fn hold_done(&self) {
        loop {
            let done = self.hold_done.notified();
            if self.holding().is_none() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        }
    }

    /// Waits until the recorder has committed, on every cluster, every
    /// outcome published before now.
    async fn recorder_drained(&self) {
        for probe in &self.probes.probes {
            let mut tries = 0;
            let marks = loop {
                let (p, topic) = (probe.clone(), self.probes.topic.clone());
                match tokio::task::spawn_blocking(move || p.high_watermarks(&topic, PROBE_TIMEOUT))
                    .await
                {
                    Ok(Ok(marks)) => break Some(marks),
                    Ok(Err(e)) => tracing::warn!(error = %e, "reading the outcomes topic's end"),
                    Err(e) => tracing::warn!(error = %e, "reading the outcomes topic's end"),
                }
                tries += 1;
                if tries >= UNREADABLE_TRIES {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            // A cluster that cannot be read now cannot have its outcomes
            // recorded either until it returns, which may be never (it was
            // destroyed): the hold does not wait for it.
            let Some(marks) = marks else {
                metrics::counter!("herald_ledger_holds_cut_short_total").increment(1);
                tracing::error!(
                    "a Kafka cluster's outcomes cannot be read while the ledger is lost: outcomes waiting there are not in PostgreSQL, and those deliveries can be sent again"
                );
                continue;
            };
            loop {
                let (p, topic, m) = (probe.clone(), self.probes.topic.clone(), marks.clone());
                let caught_up =
                    tokio::task::spawn_blocking(move || p.caught_up_to(&topic, &m, PROBE_TIMEOUT))
                        .await;
                if matches!(caught_up, Ok(Ok(true))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Nothing was ever settled: no outcome can be missing from PostgreSQL.
async fn empty_history(store: &Store) -> bool {
    let never = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    let marks = store.ledger_watermarks().await.map(|m| m.is_empty());
    let settled = store
        .settled_page(never, None, 1)
        .await
        .map(|p| p.is_empty());
    matches!((marks, settled), (Ok(true), Ok(true)))
}

/// Copies every delivery settled within the dedupe horizon into the ledger,
/// then writes the marker and raises the write sequences to what
/// PostgreSQL recorded. None: another process holds the rebuild lock.
async fn rebuild(
    guard: &LedgerGuard,
    ledger: &Ledger,
    store: &Store,
    horizon_hours: u64,
) -> Result<Option<usize>, Box<dyn std::error::Error + Send + Sync>> {
    if !ledger.try_rebuild_lock(REBUILD_LOCK).await? {
        return Ok(None);
    }
    let losses = ledger.losses().await?;
    if guard.held_for.load(Ordering::SeqCst) < losses {
        // A loss another process declared, not held for here yet.
        guard.start_hold(ledger);
        return Err(
            "a declared loss this process has not held for yet; rebuilding after its hold".into(),
        );
    }
    let floors = store.ledger_watermarks().await?;
    let since = chrono::Utc::now()
        - chrono::Duration::hours(i64::try_from(horizon_hours).unwrap_or(i64::MAX / 3600));
    let mut after = None;
    let mut copied = 0;
    loop {
        let page = store.settled_page(since, after, PAGE).await?;
        let Some(&(last_message, last, _)) = page.last() else {
            break;
        };
        let states: Vec<_> = page.iter().map(|(_, id, s)| (*id, s.as_str())).collect();
        copied += ledger.seed_settled(&states).await?;
        after = Some((last_message, last));
        if !ledger.extend_rebuild_lock(REBUILD_LOCK).await? {
            return Err("the rebuild lock ran out; another process rebuilds".into());
        }
    }
    // A loss declared since this rebuild began may have taken writes that
    // PostgreSQL did not have when it was read: that loss's hold comes
    // first, then a rebuild of its own.
    if !ledger
        .mark_intact_unless_lost_since(&floors, Some(losses))
        .await?
    {
        return Err(
            "Redis lost writes again during the rebuild; rebuilding after that loss's hold".into(),
        );
    }
    Ok(Some(copied))
}

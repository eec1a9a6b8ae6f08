//! Noticing that Redis lost the ledger, and rebuilding it from PostgreSQL.

use herald_ledger::Ledger;
use herald_store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A rebuild that takes longer than this lets another process try.
const REBUILD_LOCK: Duration = Duration::from_secs(600);
const PAGE: i64 = 2000;

#[derive(Default, Clone)]
pub(crate) struct LedgerGuard {
    rebuilding: Arc<AtomicBool>,
}

impl LedgerGuard {
    /// Called for every batch whose claim found the marker missing. Starts one
    /// rebuild in the background; until the marker is back, each batch checks
    /// its fresh claims against PostgreSQL.
    pub(crate) fn ledger_lost(&self, ledger: &Ledger, store: &Store, horizon_hours: u64) {
        if self.rebuilding.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            "the Redis ledger has no marker (first start, or Redis lost its data): \
             deduping against PostgreSQL until the ledger is rebuilt"
        );
        let (ledger, store, flag) = (ledger.clone(), store.clone(), self.rebuilding.clone());
        tokio::spawn(async move {
            match rebuild(&ledger, &store, horizon_hours).await {
                Ok(Some(n)) => tracing::info!(copied = n, "ledger rebuilt from PostgreSQL"),
                Ok(None) => tracing::info!("another process is rebuilding the ledger"),
                Err(e) => {
                    tracing::error!(error = %e, "rebuilding the ledger failed; will try again")
                }
            }
            flag.store(false, Ordering::SeqCst);
        });
    }
}

/// Copies every delivery settled within the dedupe horizon into the ledger,
/// then writes the marker. None: another process holds the rebuild lock.
async fn rebuild(
    ledger: &Ledger,
    store: &Store,
    horizon_hours: u64,
) -> Result<Option<usize>, Box<dyn std::error::Error + Send + Sync>> {
    if !ledger.try_rebuild_lock(REBUILD_LOCK).await? {
        return Ok(None);
    }
    let since = chrono::Utc::now()
        - chrono::Duration::hours(i64::try_from(horizon_hours).unwrap_or(i64::MAX / 3600));
    let mut after = None;
    let mut copied = 0;
    loop {
        let page = store.settled_page(since, after, PAGE).await?;
        let Some(&(at, id, _)) = page.last() else {
            break;
        };
        let states: Vec<_> = page.iter().map(|(_, id, s)| (*id, s.as_str())).collect();
        copied += ledger.seed_settled(&states).await?;
        after = Some((at, id));
    }
    ledger.mark_intact().await?;
    Ok(Some(copied))
}

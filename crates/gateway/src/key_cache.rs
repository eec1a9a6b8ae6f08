//! API keys the gateway has seen, kept in memory so that a request costs no
//! key lookup in PostgreSQL.
//!
//! A revoked key must stop working at once on every gateway. PostgreSQL
//! announces every change to a key (migration 0015) to each gateway's
//! listener, which drops the key. The cache is trusted only while the
//! listener is known to be hearing announcements: it pings itself through
//! the same channel every [`PING_EVERY`], and since PostgreSQL delivers
//! notifications in commit order, hearing a ping back means every change
//! committed before it has been heard. Past [`TRUST_FOR`] without a ping
//! (a connection lost, or silently stalled), every request goes to
//! PostgreSQL again. So a key revoked anywhere is refused by every gateway
//! within [`TRUST_FOR`], and by the gateway that revoked it at once.

use herald_store::{api_key_digest, ApiKeyChange, AuthenticatedKey, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PING_EVERY: Duration = Duration::from_millis(250);
/// How long a ping heard back vouches for the cache: below a second, the
/// bound promised for a revocation to reach every gateway.
const TRUST_FOR: Duration = Duration::from_millis(750);
/// Re-read even a key that never changes now and then: a bound on what a bug
/// in the announcements could cost.
const MAX_AGE: Duration = Duration::from_secs(300);
/// Past this many keys the cache starts over (memory stays bounded whatever
/// callers send).
const MAX_KEYS: usize = 100_000;
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Silence on the listening connection for this long (20 pings missed):
/// open a new one.
const STALLED_AFTER: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct KeyCache {
    store: Store,
    inner: Arc<Mutex<Inner>>,
    /// This gateway's pings, told apart from other gateways'.
    nonce: String,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<Vec<u8>, (AuthenticatedKey, Instant)>,
    /// Moves on every change heard and every reset: a lookup that began
    /// before it may have read a key since revoked, and is not kept.
    generation: u64,
    /// Until when the listener vouches for the cache; None: not now.
    trusted_until: Option<Instant>,
}

impl Inner {
    fn trusted(&self) -> bool {
        self.trusted_until.is_some_and(|t| Instant::now() < t)
    }

    fn forget_all(&mut self) {
        self.keys.clear();
        self.generation += 1;
        self.trusted_until = None;
    }
}

impl KeyCache {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            inner: Arc::default(),
            nonce: Uuid::new_v4().simple().to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live key with this secret, if any.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<AuthenticatedKey>, StoreError> {
        let digest = api_key_digest(secret);
        let generation = {
            let inner = self.lock();
            if inner.trusted() {
                if let Some((key, since)) = inner.keys.get(&digest) {
                    if since.elapsed() < MAX_AGE {
                        metrics::counter!("herald_api_key_cache_hits_total").increment(1);
                        return Ok(Some(*key));
                    }
                }
            }
            inner.generation
        };
        metrics::counter!("herald_api_key_cache_misses_total").increment(1);
        let found = self.store.authenticate_digest(&digest).await?;
        if let Some(key) = found {
            let mut inner = self.lock();
            if inner.generation == generation && inner.trusted() {
                if inner.keys.len() >= MAX_KEYS {
                    inner.keys.clear();
                }
                inner.keys.insert(digest, (key, Instant::now()));
            }
        }
        Ok(found)
    }

    /// Drops a key this gateway has just revoked, without waiting for the
    /// announcement.
    pub fn forget_key(&self, key_id: Uuid) {
        let mut inner = self.lock();
        inner.keys.retain(|_, (key, _)| key.key_id != key_id);
        inner.generation += 1;
    }

    fn heard(&self, change: ApiKeyChange) {
        let mut inner = self.lock();
        match change {
            ApiKeyChange::Changed(hash) => {
                inner.keys.remove(&hash);
                inner.generation += 1;
            }
            ApiKeyChange::Ping(nonce) if nonce == self.nonce => {
                if inner.trusted_until.is_none() {
                    // The first ping of a new listener: a lookup that read
                    // PostgreSQL before it listened may have read a key
                    // revoked unheard, and must not be kept.
                    inner.generation += 1;
                }
                inner.trusted_until = Some(Instant::now() + TRUST_FOR);
            }
            ApiKeyChange::Ping(_) => {}
        }
    }

    /// Listens for key changes until shutdown, reconnecting as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.store.api_key_listener().await {
                Ok(mut listener) => {
                    // Pings go out from a task of their own, so that waiting
                    // for an announcement is never cut short mid-read.
                    let pinging = tokio::spawn(ping(self.store.clone(), self.nonce.clone()));
                    let lost = tokio::select! {
                        _ = shutdown.cancelled() => None,
                        lost = async {
                            loop {
                                match tokio::time::timeout(STALLED_AFTER, listener.next()).await {
                                    Ok(Ok(Some(change))) => self.heard(change),
                                    Ok(Ok(None)) => break "connection lost".to_string(),
                                    Ok(Err(e)) => break e.to_string(),
                                    // Not even a ping: a connection that
                                    // stalls without closing.
                                    Err(_) => break "nothing heard for 5 s".to_string(),
                                }
                            }
                        } => Some(lost),
                    };
                    pinging.abort();
                    let Some(lost) = lost else { return };
                    tracing::warn!(error = %lost, "API key announcements stopped; keys are looked up in PostgreSQL until they are heard again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for API key changes; keys are looked up in PostgreSQL");
                }
            }
            // Changes may have gone unheard: nothing cached is trusted again
            // until a new listener hears its own ping.
            self.lock().forget_all();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    }
}

async fn ping(store: Store, nonce: String) {
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pinger = None;
    loop {
        every.tick().await;
        if pinger.is_none() {
            pinger = store.api_key_pinger().await.ok();
        }
        if let Some(p) = &mut pinger {
            let sent = tokio::time::timeout(TRUST_FOR, p.ping(&nonce)).await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::debug!("API key cache ping not sent; reconnecting");
                pinger = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::AppId;
    use herald_store::ApiKeyKind;

    fn key() -> AuthenticatedKey {
        AuthenticatedKey {
            key_id: Uuid::new_v4(),
            app_id: AppId::new_random(),
            kind: ApiKeyKind::Server,
        }
    }

    #[test]
    fn a_cache_is_trusted_only_for_a_while_after_its_own_ping() {
        let mut inner = Inner::default();
        assert!(!inner.trusted(), "untrusted until a ping is heard");
        inner.trusted_until = Some(Instant::now() + TRUST_FOR);
        assert!(inner.trusted());
        inner.trusted_until = Some(Instant::now() - Duration::from_millis(1));
        assert!(!inner.trusted(), "a ping too long ago vouches for nothing");
        inner.trusted_until = Some(Instant::now() + TRUST_FOR);
        inner.keys.insert(vec![1], (key(), Instant::now()));
        let before = inner.generation;
        inner.forget_all();
        assert!(inner.keys.is_empty() && !inner.trusted() && inner.generation > before);
    }
}

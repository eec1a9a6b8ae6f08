//! Announcements of changed API keys (migration 0015's trigger), for the
//! gateways' key caches.

use crate::{Result, Store};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::Connection;

/// The channel a changed key's hash is announced on.
const CHANNEL: &str = "herald_api_keys";
/// Payload prefix of a listener's own liveness ping on that channel.
const PING: &str = "ping:";

/// What arrived on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyChange {
    /// The key with this hash was revoked, removed or changed.
    Changed(Vec<u8>),
    /// A ping sent with [`Store::ping_api_key_listeners`].
    Ping(String),
}

/// A dedicated connection listening for [`ApiKeyChange`]s.
pub struct ApiKeyListener(PgListener);

impl ApiKeyListener {
    /// The next change; `None` once the connection is gone (notifications
    /// may have been missed: drop this listener and open a new one).
    pub async fn next(&mut self) -> Result<Option<ApiKeyChange>> {
        loop {
            let Some(notification) = self.0.try_recv().await? else {
                return Ok(None);
            };
            let payload = notification.payload();
            if let Some(nonce) = payload.strip_prefix(PING) {
                return Ok(Some(ApiKeyChange::Ping(nonce.to_string())));
            }
            match hex::decode(payload) {
                Ok(hash) => return Ok(Some(ApiKeyChange::Changed(hash))),
                Err(_) => tracing::warn!(payload, "unreadable API key announcement ignored"),
            }
        }
    }
}

impl Store {
    /// Opens a connection of its own and listens for key changes; every
    /// change committed after this returns is announced to it.
    pub async fn api_key_listener(&self) -> Result<ApiKeyListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // A lost connection is reported, not silently replaced: what was
        // announced meanwhile is gone, and the caller must know.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        Ok(ApiKeyListener(listener))
    }

    /// A connection of its own for [`ApiKeyPinger::ping`]: pings must not
    /// queue behind a busy pool, or the cache would be distrusted exactly
    /// when it saves the most.
    pub async fn api_key_pinger(&self) -> Result<ApiKeyPinger> {
        let options = self.pool.connect_options();
        Ok(ApiKeyPinger(PgConnection::connect_with(&options).await?))
    }
}

/// Sends pings on the key-change channel.
pub struct ApiKeyPinger(PgConnection);

impl ApiKeyPinger {
    /// Sends a ping every listener receives after every change committed
    /// before it: hearing its own ping back tells a listener it has missed
    /// nothing up to then.
    pub async fn ping(&mut self, nonce: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{PING}{nonce}"))
            .execute(&mut self.0)
            .await?;
        Ok(())
    }
}

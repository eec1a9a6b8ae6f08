use herald_core::AppId;
use herald_providers::{ApnsCredentials, Credentials, FcmCredentials};
use herald_store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// Provider credentials per app, read from PostgreSQL and kept for a short
/// while so that a batch does not ask the database once per delivery.
#[derive(Clone)]
pub struct CredentialsCache {
    store: Store,
    ttl: Duration,
    entries: Arc<RwLock<HashMap<AppId, Cached>>>,
}

struct Cached {
    credentials: Arc<Credentials>,
    loaded_at: Instant,
}

impl CredentialsCache {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            entries: Arc::default(),
        }
    }

    /// None: there is no such app.
    pub async fn get(
        &self,
        app: AppId,
    ) -> Result<Option<Arc<Credentials>>, herald_store::StoreError> {
        if let Some(c) = self.entries.read().await.get(&app) {
            if c.loaded_at.elapsed() < self.ttl {
                return Ok(Some(c.credentials.clone()));
            }
        }
        self.reload(app).await
    }

    /// Reads the app's credentials now, bypassing the cache: used before a
    /// delivery is dead-lettered for want of them, in case they were just
    /// uploaded.
    pub async fn reload(
        &self,
        app: AppId,
    ) -> Result<Option<Arc<Credentials>>, herald_store::StoreError> {
        if !self.store.app_exists(app).await? {
            return Ok(None);
        }
        let stored = self.store.credentials(app).await?;
        // Malformed stored credentials behave as absent: the send is rejected
        // with a reason that names the missing provider.
        let creds = Arc::new(Credentials {
            apns: stored
                .apns
                .and_then(|v| serde_json::from_value::<ApnsCredentials>(v).ok()),
            fcm: stored
                .fcm
                .and_then(|v| serde_json::from_value::<FcmCredentials>(v).ok()),
        });
        self.entries.write().await.insert(
            app,
            Cached {
                credentials: creds.clone(),
                loaded_at: Instant::now(),
            },
        );
        Ok(Some(creds))
    }
}

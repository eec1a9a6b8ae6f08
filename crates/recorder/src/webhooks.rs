//! Posts outcome events to the apps' webhooks, signed, with retries.
//!
//! Signature: `Herald-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//! with `Herald-Webhook-Timestamp: <unix seconds>`; receivers recompute it and
//! reject old timestamps. `Herald-Webhook-Id` lets them drop a repeat.

use herald_config::RecorderConfig;
use herald_store::{Store, WebhookEvent};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 50;
/// An event being posted is hidden from other dispatchers this long.
const LEASE_SECS: f64 = 60.0;
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

pub struct WebhookDispatcher {
    pub store: Store,
    pub http: reqwest::Client,
    pub config: RecorderConfig,
}

/// The signature of `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookDispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.config.webhook_poll_ms);
        loop {
            let events = match self.store.claim_webhook_events(BATCH, LEASE_SECS).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "reading webhook events");
                    Vec::new()
                }
            };
            let busy = !events.is_empty();
            futures::future::join_all(events.into_iter().map(|e| self.post(e))).await;
            if !busy {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
            } else if shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn post(&self, event: WebhookEvent) {
        let body = serde_json::json!({
            "id": event.id,
            "app_id": event.app_id,
            "type": event.payload["type"],
            "deliveries": event.payload["deliveries"],
        })
        .to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let result = self
            .http
            .post(&event.url)
            .header("content-type", "application/json")
            .header("herald-webhook-id", event.id.to_string())
            .header("herald-webhook-timestamp", timestamp.to_string())
            .header("herald-signature", sign(&event.secret, timestamp, &body))
            .body(body)
            .send()
            .await;
        let error = match result {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        let recorded = match error {
            None => self.store.webhook_delivered(event.id).await,
            Some(error) => {
                let attempts = u32::try_from(event.attempts).unwrap_or(0) + 1;
                let retry = (attempts < self.config.webhook_max_attempts).then(|| {
                    let base = Duration::from_millis(self.config.webhook_retry_base_ms);
                    // base, 2 base, 4 base, ... up to an hour.
                    base.saturating_mul(2u32.saturating_pow(attempts.min(20) - 1))
                        .min(MAX_BACKOFF)
                        .as_secs_f64()
                });
                tracing::warn!(event = event.id, attempts, %error, gave_up = retry.is_none(), "webhook post failed");
                metrics::counter!("herald_webhook_failures_total").increment(1);
                self.store.webhook_failed(event.id, &error, retry).await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "recording a webhook attempt");
        }
    }
}

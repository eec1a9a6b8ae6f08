//! The gateway role: the REST API (`/v1`), API-key auth, Idempotency-Key
//! handling, and the outbox relay that publishes accepted work to Kafka.

mod accept;
mod api;
mod auth;
mod body;
mod campaigns;
mod credentials;
mod deadline;
mod idempotency;
mod key_cache;
mod keys;
mod lookup;
mod messages;
mod problem;
mod push;
mod query;
mod relay;
pub mod tls;
mod trace;
mod triggers;
mod webhook;

pub use accept::{AcceptSettings, Acceptor};
pub use api::ApiDoc;
pub use problem::Problem;
pub use relay::OutboxRelay;

use axum::routing::{delete, get, post, put};
use axum::Router;
use herald_store::Store;
pub use key_cache::KeyCache;
use std::time::Duration;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// API keys seen, dropped as soon as PostgreSQL announces a change.
    pub keys: KeyCache,
    pub relay: OutboxRelay,
    /// Writes and publishes push requests, a batch at a time.
    pub acceptor: Acceptor,
    pub idempotency_retention: Duration,
    pub publish_wait: Duration,
    /// None: no per-key rate limit.
    pub limiter: Option<herald_ledger::RateLimiter>,
    pub rate_limit_per_second: u64,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/push", post(push::create))
        .route("/v1/messages/{message_id}", get(messages::get))
        .route(
            "/v1/messages/{message_id}/deliveries",
            get(messages::deliveries),
        )
        .route("/v1/installations", get(lookup::find_installations))
        .route(
            "/v1/installations/{install_id}/deliveries",
            get(lookup::installation_deliveries),
        )
        .route("/v1/stats", get(lookup::stats))
        .route(
            "/v1/installations/{install_id}",
            put(messages::put_installation)
                .get(messages::get_installation)
                .delete(messages::delete_installation),
        )
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{key_id}", delete(keys::revoke))
        .route(
            "/v1/campaigns",
            post(campaigns::create).get(campaigns::list),
        )
        .route(
            "/v1/campaigns/{campaign_id}",
            get(campaigns::get)
                .put(campaigns::update)
                .delete(campaigns::delete),
        )
        .route(
            "/v1/campaigns/{campaign_id}/launch",
            post(campaigns::launch),
        )
        .route("/v1/campaigns/{campaign_id}/pause", post(campaigns::pause))
        .route(
            "/v1/campaigns/{campaign_id}/resume",
            post(campaigns::resume),
        )
        .route(
            "/v1/campaigns/{campaign_id}/cancel",
            post(campaigns::cancel),
        )
        .route(
            "/v1/campaigns/{campaign_id}/audience/ids",
            put(campaigns::upload_ids),
        )
        .route(
            "/v1/campaigns/{campaign_id}/estimate",
            get(campaigns::estimate_campaign),
        )
        .route("/v1/audiences/estimate", post(campaigns::estimate_audience))
        .route("/v1/events", post(triggers::post_events))
        .route("/v1/triggers", post(triggers::create).get(triggers::list))
        .route(
            "/v1/triggers/{trigger_id}",
            get(triggers::get)
                .put(triggers::update)
                .delete(triggers::delete),
        )
        .route(
            "/v1/trigger-settings",
            get(triggers::get_settings).put(triggers::put_settings),
        )
        .route(
            "/v1/campaign-settings",
            get(campaigns::get_settings).put(campaigns::put_settings),
        )
        .route(
            "/v1/webhook",
            put(webhook::put).get(webhook::get).delete(webhook::delete),
        )
        .route("/v1/credentials", get(credentials::get))
        .route(
            "/v1/credentials/apns",
            put(credentials::put_apns).delete(credentials::delete_apns),
        )
        .route(
            "/v1/credentials/fcm",
            put(credentials::put_fcm).delete(credentials::delete_fcm),
        )
        .route("/v1/openapi.json", get(api::openapi_json))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route_layer(axum::middleware::from_fn(trace::request_span))
        .fallback(|| async { Problem::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

/// Cuts off requests that take too long (a slow body included), unless
/// their write was already handed over (see [`deadline`]), and turns the
/// framework's own refusals (too large, wrong method) into problem+json.
async fn guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let committing = deadline::Committing::default();
    request.extensions_mut().insert(committing.clone());
    let mut handling = std::pin::pin!(next.run(request));
    let response = match tokio::time::timeout(state.request_timeout, &mut handling).await {
        Ok(r) => r,
        Err(_) if committing.started() => {
            tracing::warn!(timeout = ?state.request_timeout, "a push outlived the request deadline while being written; answering when the write is done");
            handling.await
        }
        Err(_) => return Problem::timed_out().into_response(),
    };
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    match response.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE if !is_problem => {
            Problem::too_large(state.max_body_bytes).into_response()
        }
        axum::http::StatusCode::METHOD_NOT_ALLOWED if !is_problem => {
            Problem::method_not_allowed().into_response()
        }
        _ => response,
    }
}

/// Deletes expired Idempotency-Keys every `interval` until `shutdown`.
pub async fn purge_idempotency_keys(
    store: Store,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        loop {
            match store.purge_expired_idempotency_keys(10_000).await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "expired Idempotency-Keys deleted"),
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "purging Idempotency-Keys failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, Problem> {
    state
        .store
        .ping()
        .await
        .map_err(|_| Problem::unavailable("PostgreSQL is not reachable"))?;
    Ok("ready")
}

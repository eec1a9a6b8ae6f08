//! The app's outcome webhook (server key).

use crate::auth::ServerKey;
use crate::body::parse_body;
use crate::problem::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// An absolute `https://` (or `http://`) URL that accepts POSTed JSON.
    #[schema(
        pattern = r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*)?$"
    )]
    pub url: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// The signing secret: returned when the webhook is set, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Sets the URL that receives outcome events, and makes a new signing secret.
#[utoipa::path(put, path = "/v1/webhook", tag = "webhook", operation_id = "set_webhook",
    request_body = WebhookInput,
    responses((status = 200, body = WebhookView), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookView>, Problem> {
    let (_, input): (Value, WebhookInput) = parse_body(&headers, &body)?;
    let parsed = url::Url::parse(&input.url)
        .map_err(|e| Problem::invalid_field("url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
        return Err(Problem::invalid_field(
            "url",
            "an http or https URL with a host",
        ));
    }
    let hook = state.store.set_webhook(key.app_id, parsed.as_str()).await?;
    Ok(Json(WebhookView {
        url: hook.url,
        secret: Some(hook.secret),
    }))
}

/// The app's webhook URL.
#[utoipa::path(get, path = "/v1/webhook", tag = "webhook", operation_id = "get_webhook",
    responses((status = 200, body = WebhookView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<Json<WebhookView>, Problem> {
    let hook = state
        .store
        .webhook(key.app_id)
        .await?
        .ok_or_else(|| Problem::not_found("this app has no webhook"))?;
    Ok(Json(WebhookView {
        url: hook.url,
        secret: None,
    }))
}

/// Stops outcome events.
#[utoipa::path(delete, path = "/v1/webhook", tag = "webhook", operation_id = "delete_webhook",
    responses((status = 204, description = "Removed"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<StatusCode, Problem> {
    if state.store.delete_webhook(key.app_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("this app has no webhook"))
    }
}

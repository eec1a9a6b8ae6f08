//! Message status, per-device outcomes, and installations.

use crate::api::{DeliveryView, InstallationView, MessageStatus};
use crate::auth::{AnyKey, ServerKey};
use crate::body::parse_body;
use crate::problem::Problem;
use crate::query::ApiQuery;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use herald_core::installation::InstallationInput;
use herald_core::{DeliveryId, DeliveryStatus, MessageId};
use herald_store::DeliveryRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::str::FromStr;

/// How many per-device outcomes the message view lists.
const DELIVERY_LIMIT: i64 = 1000;
const PAGE_MAX: i64 = 1000;

fn parse_message_id(id: &str) -> Result<MessageId, Problem> {
    MessageId::from_str(id)
        .map_err(|_| Problem::invalid_field("message_id", "a message id is a UUID"))
}

pub(crate) fn delivery_view(d: &DeliveryRow) -> DeliveryView {
    DeliveryView {
        delivery_id: d.id.as_uuid(),
        message_id: d.message_id.as_uuid(),
        platform: d.platform,
        token: d.token.clone(),
        install_id: d.install_id.clone(),
        status: d.status,
        reason: d.reason.clone(),
        provider_id: d.provider_id.clone(),
        attempts: d.attempts,
        settled_at: d.settled_at,
    }
}

/// A message's status: counts per outcome and platform, and its first deliveries.
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}",
    operation_id = "get_message",
    tag = "messages",
    params(("message_id" = String, Path, format = Uuid, description = "As returned by POST /v1/push")),
    responses(
        (status = 200, body = MessageStatus),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<MessageStatus>, Problem> {
    let id = parse_message_id(&id)?;
    let view = state
        .store
        .message(key.app_id, id, DELIVERY_LIMIT)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no message {id} in this app")))?;
    let mut counts: BTreeMap<String, i64> = DeliveryStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let mut by_platform: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for c in &view.counts {
        *counts.entry(c.status.as_str().to_string()).or_default() += c.count;
        *by_platform
            .entry(c.platform.as_str().to_string())
            .or_default()
            .entry(c.status.as_str().to_string())
            .or_default() += c.count;
    }
    let recipients: i64 = counts.values().sum();
    let pending = counts.get("pending").copied().unwrap_or(0);
    let status = match (pending, view.send_at) {
        (0, _) => "completed",
        (_, Some(at)) if at > chrono::Utc::now() => "scheduled",
        _ => "in_progress",
    };
    Ok(Json(MessageStatus {
        message_id: view.id.as_uuid(),
        kind: view.kind,
        delivery_policy: view.policy,
        created_at: view.created_at,
        expires_at: view.expires_at,
        send_at: view.send_at,
        status: status.into(),
        recipients,
        counts,
        by_platform,
        deliveries: view.deliveries.iter().map(delivery_view).collect(),
        deliveries_truncated: recipients > DELIVERY_LIMIT,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// At most 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    after: Option<String>,
    /// Only deliveries with this status.
    #[param(value_type = Option<herald_core::DeliveryStatus>)]
    status: Option<String>,
}

/// A page of deliveries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveriesPage {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Every per-device outcome of a message, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}/deliveries",
    operation_id = "list_deliveries",
    tag = "messages",
    params(("message_id" = String, Path, format = Uuid), PageQuery),
    responses(
        (status = 200, body = DeliveriesPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<DeliveriesPage>, Problem> {
    let id = parse_message_id(&id)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Problem::invalid_field("limit", format!("1 to {PAGE_MAX}")));
    }
    let after = q
        .after
        .as_deref()
        .map(DeliveryId::from_str)
        .transpose()
        .map_err(|_| {
            Problem::invalid_field("after", "a delivery id (the previous page's next_after)")
        })?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            DeliveryStatus::parse(s)
                .ok_or_else(|| Problem::invalid_field("status", format!("unknown status `{s}`")))
        })
        .transpose()?;
    // The message must belong to this app.
    if !state.store.message_exists(key.app_id, id).await? {
        return Err(Problem::not_found(format!("no message {id} in this app")));
    }
    let rows = state
        .store
        .deliveries_page(id, after, status, limit)
        .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|d| d.id.to_string()))
        .flatten();
    Ok(Json(DeliveriesPage {
        deliveries: rows.iter().map(delivery_view).collect(),
        next_after,
    }))
}

pub(crate) fn installation_view(i: herald_store::Installation) -> InstallationView {
    InstallationView {
        install_id: i.install_id,
        installation: i.input,
        invalidated_at: i.invalidated_at,
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

/// Create or replace an installation (SDK or server key).
#[utoipa::path(
    put,
    path = "/v1/installations/{install_id}",
    tag = "installations",
    params(("install_id" = String, Path, min_length = 1, max_length = 128, description = "The app's id for this installation, 1 to 128 characters")),
    request_body = InstallationInput,
    responses(
        (status = 200, body = InstallationView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_installation(
    State(state): State<AppState>,
    AnyKey(key): AnyKey,
    Path(install_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InstallationView>, Problem> {
    let (_, input): (Value, InstallationInput) = parse_body(&headers, &body)?;
    input
        .validate(&install_id)
        .map_err(|e| Problem::invalid_field(e.field, e.detail))?;
    let stored = state
        .store
        .upsert_installation(key.app_id, &install_id, &input)
        .await?;
    Ok(Json(installation_view(stored)))
}

/// Read an installation (server key: it reveals the token).
#[utoipa::path(
    get,
    path = "/v1/installations/{install_id}",
    tag = "installations",
    params(("install_id" = String, Path, min_length = 1, max_length = 128)),
    responses(
        (status = 200, body = InstallationView),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_installation(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(install_id): Path<String>,
) -> Result<Json<InstallationView>, Problem> {
    let stored = state
        .store
        .installation(key.app_id, &install_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no installation `{install_id}` in this app")))?;
    Ok(Json(installation_view(stored)))
}

/// Delete an installation (SDK or server key).
#[utoipa::path(
    delete,
    path = "/v1/installations/{install_id}",
    tag = "installations",
    params(("install_id" = String, Path, min_length = 1, max_length = 128)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_installation(
    State(state): State<AppState>,
    AnyKey(key): AnyKey,
    Path(install_id): Path<String>,
) -> Result<StatusCode, Problem> {
    if state
        .store
        .delete_installation(key.app_id, &install_id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "no installation `{install_id}` in this app"
        )))
    }
}

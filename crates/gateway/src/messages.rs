//! `GET /v1/messages/{id}` and the first cut of the installations API.

use crate::auth::{AnyKey, ServerKey};
use crate::problem::Problem;
use crate::push::parse_body;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use herald_core::installation::InstallationInput;
use herald_core::{DeliveryStatus, MessageId};
use serde_json::{json, Map, Value};
use std::str::FromStr;

/// How many per-device outcomes the message view lists.
const DELIVERY_LIMIT: i64 = 1000;

pub(crate) async fn get(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let id = MessageId::from_str(&id)
        .map_err(|_| Problem::invalid_field("id", "a message id is a UUID"))?;
    let view = state
        .store
        .message(key.app_id, id, DELIVERY_LIMIT)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no message {id} in this app")))?;
    let mut totals: Map<String, Value> = DeliveryStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(0)))
        .collect();
    let mut by_platform: Map<String, Value> = Map::new();
    let mut total = 0i64;
    for c in &view.counts {
        total += c.count;
        let t = totals.entry(c.status.as_str()).or_insert(json!(0));
        *t = json!(t.as_i64().unwrap_or(0) + c.count);
        let p = by_platform
            .entry(c.platform.as_str())
            .or_insert_with(|| json!({}));
        p[c.status.as_str()] = json!(c.count);
    }
    let pending = totals["pending"].as_i64().unwrap_or(0);
    let status = match (pending, view.send_at) {
        (0, _) => "completed",
        (_, Some(at)) if at > chrono::Utc::now() => "scheduled",
        _ => "in_progress",
    };
    let deliveries: Vec<Value> = view
        .deliveries
        .iter()
        .map(|d| {
            json!({
                "delivery_id": d.id,
                "platform": d.platform,
                "token": d.token,
                "install_id": d.install_id,
                "status": d.status,
                "reason": d.reason,
                "provider_id": d.provider_id,
                "attempts": d.attempts,
                "settled_at": d.settled_at,
            })
        })
        .collect();
    Ok(Json(json!({
        "message_id": view.id,
        "kind": view.kind,
        "delivery_policy": view.policy.as_str(),
        "created_at": view.created_at,
        "expires_at": view.expires_at,
        "send_at": view.send_at,
        "status": status,
        "recipients": total,
        "counts": totals,
        "by_platform": by_platform,
        "deliveries": deliveries,
        "deliveries_truncated": total > DELIVERY_LIMIT,
    })))
}

fn installation_json(i: &herald_store::Installation) -> Value {
    let mut v = serde_json::to_value(&i.input).unwrap_or_default();
    v["install_id"] = json!(i.install_id);
    v["invalidated_at"] = json!(i.invalidated_at);
    v["created_at"] = json!(i.created_at);
    v["updated_at"] = json!(i.updated_at);
    v
}

/// `PUT /v1/installations/{install_id}`: create or replace (SDK or server key).
pub(crate) async fn put_installation(
    State(state): State<AppState>,
    AnyKey(key): AnyKey,
    Path(install_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let (_, input): (Value, InstallationInput) = parse_body(&headers, &body)?;
    input
        .validate(&install_id)
        .map_err(|e| Problem::invalid_field(e.field, e.detail))?;
    let stored = state
        .store
        .upsert_installation(key.app_id, &install_id, &input)
        .await?;
    Ok(Json(installation_json(&stored)))
}

/// `GET /v1/installations/{install_id}` (server key: it reveals the token).
pub(crate) async fn get_installation(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    Path(install_id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let stored = state
        .store
        .installation(key.app_id, &install_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no installation `{install_id}` in this app")))?;
    Ok(Json(installation_json(&stored)))
}

/// `DELETE /v1/installations/{install_id}` (SDK or server key).
pub(crate) async fn delete_installation(
    State(state): State<AppState>,
    AnyKey(key): AnyKey,
    Path(install_id): Path<String>,
) -> Result<axum::http::StatusCode, Problem> {
    if state
        .store
        .delete_installation(key.app_id, &install_id)
        .await?
    {
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "no installation `{install_id}` in this app"
        )))
    }
}

//! `GET /v1/messages/{id}` and the first cut of the installations API.

use crate::auth::{AnyKey, ServerKey};
use crate::problem::Problem;
use crate::push::parse_body;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use herald_core::push::{validate_install_id, validate_token};
use herald_core::{DeliveryStatus, MessageId, Platform};
use herald_store::Installation;
use serde::Deserialize;
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
        "status": if pending > 0 { "in_progress" } else { "completed" },
        "recipients": total,
        "counts": totals,
        "by_platform": by_platform,
        "deliveries": deliveries,
        "deliveries_truncated": total > DELIVERY_LIMIT,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InstallationBody {
    platform: Platform,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    custom_id: Option<String>,
}

/// `PUT /v1/installations/{install_id}`: create or update (SDK or server key).
pub(crate) async fn put_installation(
    State(state): State<AppState>,
    AnyKey(key): AnyKey,
    Path(install_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    validate_install_id(&install_id).map_err(|d| Problem::invalid_field("install_id", d))?;
    let (_, b): (Value, InstallationBody) = parse_body(&headers, &body)?;
    if let Some(token) = &b.token {
        validate_token(b.platform, token).map_err(|d| Problem::invalid_field("token", d))?;
    }
    let inst = Installation {
        install_id,
        platform: b.platform,
        token: b.token,
        custom_id: b.custom_id,
    };
    state.store.upsert_installation(key.app_id, &inst).await?;
    Ok(Json(json!({
        "install_id": inst.install_id,
        "platform": inst.platform,
        "token": inst.token,
        "custom_id": inst.custom_id,
    })))
}

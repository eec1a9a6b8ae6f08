//! Inspection and control endpoints (`/sim/...`), over HTTP/1.1 or HTTP/2.

use crate::state::{Faults, SimState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) async fn credentials(State(state): State<Arc<SimState>>) -> Response {
    Json(state.credentials.clone()).into_response()
}

#[derive(Deserialize)]
pub(crate) struct DeliveryFilter {
    token: Option<String>,
    provider: Option<String>,
}

pub(crate) async fn deliveries(
    State(state): State<Arc<SimState>>,
    Query(filter): Query<DeliveryFilter>,
) -> Response {
    let list: Vec<_> = state
        .deliveries()
        .into_iter()
        .filter(|d| filter.token.as_ref().is_none_or(|t| &d.token == t))
        .filter(|d| filter.provider.as_ref().is_none_or(|p| &d.provider == p))
        .collect();
    Json(list).into_response()
}

/// Counts for quick checks: accepted per provider, and how many (token,
/// collapse id) pairs were delivered more than once.
pub(crate) async fn stats(State(state): State<Arc<SimState>>) -> Response {
    let deliveries = state.deliveries();
    let mut per_provider: HashMap<&str, u64> = HashMap::new();
    let mut seen: HashMap<(&str, Option<&str>), u64> = HashMap::new();
    for d in &deliveries {
        *per_provider.entry(d.provider.as_str()).or_default() += 1;
        *seen
            .entry((d.token.as_str(), d.collapse_id.as_deref()))
            .or_default() += 1;
    }
    let duplicates: u64 = seen.values().map(|n| n.saturating_sub(1)).sum();
    Json(json!({
        "accepted": deliveries.len(),
        "apns": per_provider.get("apns").copied().unwrap_or(0),
        "fcm": per_provider.get("fcm").copied().unwrap_or(0),
        "duplicates": duplicates,
        "stalled": state.stalled.load(Ordering::SeqCst),
        "connections": crate::serve::CONNECTIONS.load(Ordering::Relaxed),
        "goaways": crate::serve::GOAWAYS.load(Ordering::Relaxed),
        "max_streams_seen": crate::serve::MAX_STREAMS_SEEN.load(Ordering::Relaxed),
    }))
    .into_response()
}

pub(crate) async fn get_faults(State(state): State<Arc<SimState>>) -> Response {
    Json(state.faults()).into_response()
}

pub(crate) async fn set_faults(
    State(state): State<Arc<SimState>>,
    Json(faults): Json<Faults>,
) -> Response {
    state.set_faults(faults.clone());
    Json(faults).into_response()
}

pub(crate) async fn reset(State(state): State<Arc<SimState>>) -> Response {
    state.clear();
    state.set_faults(Faults::default());
    StatusCode::NO_CONTENT.into_response()
}

//! Inspection and control endpoints (`/sim/...`), over HTTP/1.1 or HTTP/2.

use crate::state::{Faults, SimState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) async fn credentials(State(state): State<Arc<SimState>>) -> Response {
    Json(state.credentials.clone()).into_response()
}

/// The FCM service-account key file, as Google's libraries load it
/// (`GOOGLE_APPLICATION_CREDENTIALS`, `credentials.Certificate`).
pub(crate) async fn service_account(State(state): State<Arc<SimState>>) -> Response {
    Json(state.credentials.fcm["service_account"].clone()).into_response()
}

/// The APNs signing key, as the `.p8` file Apple hands out.
pub(crate) async fn apns_key(State(state): State<Arc<SimState>>) -> Response {
    let pem = state.credentials.apns["private_key_pem"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ([("content-type", "application/x-pem-file")], pem).into_response()
}

/// The APNs client certificate and its key, in one PEM file.
pub(crate) async fn apns_client_certificate(State(state): State<Arc<SimState>>) -> Response {
    let pem = state.credentials.apns_certificate["certificate_pem"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ([("content-type", "application/x-pem-file")], pem).into_response()
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

/// Counts for quick checks: accepted per provider, how many deliveries
/// repeated a (token, collapse id) pair, and how many are kept whole (all of
/// them, or the sample of `record: counts`).
pub(crate) async fn stats(State(state): State<Arc<SimState>>) -> Response {
    let tally = state.tally();
    Json(json!({
        "record": tally.mode,
        "accepted": tally.accepted,
        "apns": tally.apns,
        "fcm": tally.fcm,
        "duplicates": tally.duplicates,
        "kept": tally.kept,
        "first_received_at": tally.first_received_at,
        "last_received_at": tally.last_received_at,
        "stalled": state.stalled.load(Ordering::SeqCst),
        "connections": crate::serve::CONNECTIONS.load(Ordering::Relaxed),
        "goaways": crate::serve::GOAWAYS.load(Ordering::Relaxed),
        "max_streams_seen": crate::serve::MAX_STREAMS_SEEN.load(Ordering::Relaxed),
        "in_flight": crate::serve::IN_FLIGHT.load(Ordering::SeqCst),
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
    if let Err(detail) = faults.check() {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/problem+json")],
            Json(json!({
                "type": "about:blank",
                "title": "Unknown fault",
                "status": 400,
                "detail": detail,
            })),
        )
            .into_response();
    }
    state.set_faults(faults.clone());
    Json(faults).into_response()
}

pub(crate) async fn reset(State(state): State<Arc<SimState>>) -> Response {
    state.clear();
    state.set_faults(Faults::default());
    StatusCode::NO_CONTENT.into_response()
}

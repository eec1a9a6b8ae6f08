//! The APNs provider API: `POST /3/device/{token}` over HTTP/2.

use crate::state::{SimState, Verdict, APNS_KEY_ID, APNS_TEAM_ID, APNS_TOPIC};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;

const MAX_PAYLOAD: usize = 4096;
const MAX_VOIP_PAYLOAD: usize = 5120;
/// Apple rejects provider tokens older than one hour.
const TOKEN_MAX_AGE_SECS: i64 = 3600;
const PUSH_TYPES: [&str; 9] = [
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
];

fn error(status: StatusCode, reason: &str, apns_id: &str) -> Response {
    let mut body = serde_json::json!({ "reason": reason });
    if status == StatusCode::GONE {
        body["timestamp"] = serde_json::json!(chrono::Utc::now().timestamp_millis());
    }
    (status, [("apns-id", apns_id.to_string())], axum::Json(body)).into_response()
}

pub(crate) async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "")
}

pub(crate) async fn bad_path() -> Response {
    error(StatusCode::NOT_FOUND, "BadPath", "")
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

pub(crate) async fn send(
    State(state): State<Arc<SimState>>,
    conn: Option<axum::Extension<Arc<crate::serve::ConnectionControl>>>,
    Path(token): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if version != Version::HTTP_2 {
        return (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "APNs speaks HTTP/2 only",
        )
            .into_response();
    }
    let _in_flight = conn.as_ref().map(|c| c.0.enter());
    state.count_request(conn.as_ref().map(|c| c.0.as_ref()));
    if let Verdict::Fail(status) = state.before_judging().await {
        let reason = match status {
            429 => "TooManyRequests",
            500 => "InternalServerError",
            _ => "ServiceUnavailable",
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(status, reason, "");
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let apns_id = match header("apns-id") {
        Some(id) => match Uuid::parse_str(id) {
            Ok(_) => id.to_string(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "BadMessageId", ""),
        },
        None => Uuid::new_v4().to_string(),
    };
    let reject = |status, reason: &str| error(status, reason, &apns_id);

    // Authentication first, as Apple does: a provider token, or a client
    // certificate verified in the TLS handshake.
    let certificate = conn.as_ref().is_some_and(|c| c.0.client_certificate);
    match header("authorization") {
        Some(auth) => {
            let Some(jwt) = auth.strip_prefix("bearer ") else {
                return reject(StatusCode::FORBIDDEN, "InvalidProviderToken");
            };
            if let Err(reason) = verify_provider_token(&state, jwt) {
                return reject(StatusCode::FORBIDDEN, reason);
            }
        }
        None if certificate => {}
        None => return reject(StatusCode::FORBIDDEN, "MissingProviderToken"),
    }

    if token.len() < 16 || token.len() > 200 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reject(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    let Some(topic) = header("apns-topic") else {
        return reject(StatusCode::BAD_REQUEST, "MissingTopic");
    };
    let push_type = header("apns-push-type").unwrap_or("alert");
    if !PUSH_TYPES.contains(&push_type) {
        return reject(StatusCode::BAD_REQUEST, "InvalidPushType");
    }
    let base_topic = [
        ".voip-ptt",
        ".voip",
        ".complication",
        ".pushkit.fileprovider",
        ".location-query",
        ".push-type.liveactivity",
    ]
    .iter()
    .find_map(|suffix| topic.strip_suffix(suffix))
    .unwrap_or(topic);
    if base_topic != APNS_TOPIC {
        return reject(StatusCode::BAD_REQUEST, "TopicDisallowed");
    }
    let priority = header("apns-priority").unwrap_or("10");
    if !["1", "5", "10"].contains(&priority) || (push_type == "background" && priority != "5") {
        return reject(StatusCode::BAD_REQUEST, "BadPriority");
    }
    if let Some(exp) = header("apns-expiration") {
        if exp.parse::<u64>().is_err() {
            return reject(StatusCode::BAD_REQUEST, "BadExpirationDate");
        }
    }
    let collapse_id = header("apns-collapse-id").map(str::to_string);
    if collapse_id.as_ref().is_some_and(|c| c.len() > 64) {
        return reject(StatusCode::BAD_REQUEST, "BadCollapseId");
    }
    if body.is_empty() {
        return reject(StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    let limit = if push_type == "voip" {
        MAX_VOIP_PAYLOAD
    } else {
        MAX_PAYLOAD
    };
    if body.len() > limit {
        return reject(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) if v.get("aps").is_some_and(|a| a.is_object()) => v,
        _ => return reject(StatusCode::BAD_REQUEST, "PayloadEmpty"),
    };

    if let Some((status, reason)) = token_fault(&token) {
        return reject(status, reason);
    }
    state.record("apns", &token, apns_id.clone(), collapse_id, payload, &body);
    state
        .after_accepting(conn.as_ref().map(|c| c.0.as_ref()))
        .await;
    (StatusCode::OK, [("apns-id", apns_id)]).into_response()
}

fn verify_provider_token(state: &SimState, jwt: &str) -> Result<(), &'static str> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| "InvalidProviderToken")?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(APNS_KEY_ID) {
        return Err("InvalidProviderToken");
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<Claims>(jwt, &state.apns_key, &validation)
        .map_err(|_| "InvalidProviderToken")?;
    if data.claims.iss != APNS_TEAM_ID {
        return Err("InvalidProviderToken");
    }
    let age = chrono::Utc::now().timestamp() - data.claims.iat;
    if age > TOKEN_MAX_AGE_SECS {
        return Err("ExpiredProviderToken");
    }
    Ok(())
}

/// Faults by token prefix (tokens are hex, so the prefixes are too).
fn token_fault(token: &str) -> Option<(StatusCode, &'static str)> {
    let t = token.to_ascii_lowercase();
    if t.starts_with("0bad") {
        Some((StatusCode::BAD_REQUEST, "BadDeviceToken"))
    } else if t.starts_with("0410") {
        Some((StatusCode::GONE, "Unregistered"))
    } else if t.starts_with("0429") {
        Some((StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"))
    } else if t.starts_with("0500") {
        Some((StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError"))
    } else if t.starts_with("0503") {
        Some((StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"))
    } else {
        None
    }
}

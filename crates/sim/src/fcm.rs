//! FCM HTTP v1 (`POST /v1/projects/{project}/messages:send`) and the OAuth2
//! token endpoint that the simulator's service account points at.

use crate::state::{SimState, Verdict, FCM_CLIENT_EMAIL, FCM_PROJECT};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const MAX_PAYLOAD: usize = 4096;
const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// A google.rpc.Status body, with an FcmError detail when there is one.
fn error(
    status: StatusCode,
    rpc_status: &str,
    error_code: Option<&str>,
    message: &str,
) -> Response {
    let mut err = json!({
        "code": status.as_u16(),
        "message": message,
        "status": rpc_status,
    });
    if let Some(code) = error_code {
        err["details"] = json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]);
    }
    (status, Json(json!({ "error": err }))).into_response()
}

pub(crate) async fn send(
    State(state): State<Arc<SimState>>,
    conn: Option<axum::Extension<Arc<crate::serve::ConnectionControl>>>,
    Path((project, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if verb != "messages:send" {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", None, "unknown method");
    }
    let _in_flight = conn.as_ref().map(|c| c.0.enter());
    state.count_request(conn.as_ref().map(|c| c.0.as_ref()));
    if let Verdict::Fail(status) = state.before_judging().await {
        let (rpc, code) = match status {
            429 => ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
            500 => ("INTERNAL", "INTERNAL"),
            _ => ("UNAVAILABLE", "UNAVAILABLE"),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(status, rpc, Some(code), "injected fault");
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| state.access_token_valid(t)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
        );
    }
    if project != FCM_PROJECT {
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            None,
            "Permission denied on the project.",
        );
    }
    let Ok(root) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            None,
            "Invalid JSON payload received.",
        );
    };
    let message = &root["message"];
    let Some(token) = message["token"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "message.token is required",
        );
    };
    if let Some(data) = message.get("data") {
        let all_strings = data
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !all_strings {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                "message.data values must be strings",
            );
        }
    }
    if payload_size(message) > MAX_PAYLOAD {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Message is too big",
        );
    }
    if let Some(response) = token_fault(token) {
        return response;
    }
    let name = format!("projects/{project}/messages/{}", Uuid::new_v4().simple());
    let tag = message["android"]["notification"]["tag"]
        .as_str()
        .map(str::to_string);
    state.record("fcm", token, name.clone(), tag, message.clone(), &body);
    state
        .after_accepting(conn.as_ref().map(|c| c.0.as_ref()))
        .await;
    Json(json!({ "name": name })).into_response()
}

/// Faults by token prefix.
fn token_fault(token: &str) -> Option<Response> {
    let (status, rpc, code, msg) = if token.starts_with("bad-") {
        (
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
        )
    } else if token.starts_with("unreg-") {
        (
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "UNREGISTERED",
            "Requested entity was not found.",
        )
    } else if token.starts_with("mismatch-") {
        (
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SENDER_ID_MISMATCH",
            "SenderId mismatch",
        )
    } else if token.starts_with("quota-") {
        (
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "QUOTA_EXCEEDED",
            "Quota exceeded.",
        )
    } else if token.starts_with("unavail-") {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "UNAVAILABLE",
            "The service is currently unavailable.",
        )
    } else if token.starts_with("internal-") {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "INTERNAL",
            "Internal error encountered.",
        )
    } else {
        return None;
    };
    Some(error(status, rpc, Some(code), msg))
}

#[derive(Deserialize)]
struct Assertion {
    iss: String,
    scope: String,
    aud: String,
}

/// OAuth2 JWT-bearer grant: checks the assertion's signature against the
/// service account's public key, its audience, scope and expiry.
pub(crate) async fn token(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let invalid = |d: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_grant", "error_description": d })),
        )
            .into_response()
    };
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "unsupported_grant_type" })),
        )
            .into_response();
    }
    let Some(assertion) = form.get("assertion") else {
        return invalid("missing assertion");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[state.token_uri.as_str()]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<Assertion>(assertion, &state.fcm_key, &validation) {
        Ok(d) => d.claims,
        Err(e) => return invalid(&format!("Invalid JWT Signature or claims: {e}")),
    };
    if claims.iss != FCM_CLIENT_EMAIL || claims.aud != state.token_uri {
        return invalid("Invalid issuer or audience");
    }
    if !claims.scope.split(' ').any(|s| s == SCOPE) {
        return invalid("Scope does not include firebase.messaging");
    }
    let token = state.issue_access_token(ACCESS_TOKEN_LIFETIME);
    Json(json!({
        "access_token": token,
        "expires_in": ACCESS_TOKEN_LIFETIME.as_secs(),
        "token_type": "Bearer",
    }))
    .into_response()
}

/// FCM's payload size: the keys and string values of `notification` and `data`.
fn payload_size(message: &Value) -> usize {
    ["notification", "data"]
        .iter()
        .filter_map(|part| message.get(*part)?.as_object())
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum()
}

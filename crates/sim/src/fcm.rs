//! FCM HTTP v1 (`POST /v1/projects/{project}/messages:send`) and the OAuth2
//! token endpoint that the simulator's service account points at.

use crate::errors;
use crate::message;
use crate::state::{SimState, Verdict, FCM_CLIENT_EMAIL, FCM_PROJECT};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
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

/// 400 INVALID_ARGUMENT, as Google answers a message it refuses.
fn invalid(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        Some("INVALID_ARGUMENT"),
        message,
    )
}

/// An error answer for a documented FCM error code, with `Retry-After` when
/// the faults ask for one and the status allows it.
fn coded(code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let (status, rpc) = errors::fcm_status(code).unwrap_or((503, "UNAVAILABLE"));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error(status, rpc, Some(code), message);
    if let Some(secs) = retry_after.filter(|_| errors::may_retry_after(status.as_u16())) {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
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
    if let Verdict::Fail(faults) = state.before_judging().await {
        let status = faults.fail_status.unwrap_or(503);
        let code = faults
            .fcm_error
            .as_deref()
            .unwrap_or_else(|| errors::fcm_error_for(status));
        return coded(code, "injected fault", faults.retry_after_secs);
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
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
    let request = match message::check(&root) {
        Ok(request) => request,
        Err(message::Refusal::UnknownField { at, name }) => {
            return unknown_field(&at, &name);
        }
        Err(message::Refusal::Invalid(why)) => return invalid(&why),
    };
    let message = &root["message"];
    if payload_size(message) > MAX_PAYLOAD {
        return invalid("Message is too big");
    }
    if let message::Target::Token(token) = &request.target {
        if let Some(code) = token_fault(token) {
            return coded(
                code,
                token_fault_message(code),
                state.faults().retry_after_secs,
            );
        }
    }
    // A dry run is checked as a send is, and answered with Google's fixed
    // name for it; nothing reaches a device, so nothing is recorded.
    if request.validate_only {
        return Json(json!({ "name": format!("projects/{project}/messages/fake_message_id") }))
            .into_response();
    }
    let name = format!("projects/{project}/messages/{}", Uuid::new_v4().simple());
    let tag = message["android"]["notification"]["tag"]
        .as_str()
        .map(str::to_string);
    state.record(
        "fcm",
        &request.target.recorded_as(),
        name.clone(),
        tag,
        message.clone(),
        &body,
    );
    state
        .after_accepting(conn.as_ref().map(|c| c.0.as_ref()))
        .await;
    Json(json!({ "name": name })).into_response()
}

/// Google's answer to a field the message does not have, naming it and where.
fn unknown_field(at: &str, name: &str) -> Response {
    let place = if at.is_empty() {
        String::new()
    } else {
        format!(" at '{at}'")
    };
    let description = format!(
        "Invalid JSON payload received. Unknown name \"{name}\"{place}: Cannot find field."
    );
    let body = json!({ "error": {
        "code": 400,
        "message": description,
        "status": "INVALID_ARGUMENT",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": at, "description": description }],
        }],
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Faults by token prefix: the error code the token gets.
fn token_fault(token: &str) -> Option<&'static str> {
    [
        ("bad-", "INVALID_ARGUMENT"),
        ("unreg-", "UNREGISTERED"),
        ("mismatch-", "SENDER_ID_MISMATCH"),
        ("quota-", "QUOTA_EXCEEDED"),
        ("unavail-", "UNAVAILABLE"),
        ("internal-", "INTERNAL"),
        ("thirdparty-", "THIRD_PARTY_AUTH_ERROR"),
        ("unspecified-", "UNSPECIFIED_ERROR"),
    ]
    .iter()
    .find(|(prefix, _)| token.starts_with(prefix))
    .map(|(_, code)| *code)
}

/// The message Google sends with each error code.
fn token_fault_message(code: &str) -> &'static str {
    match code {
        "INVALID_ARGUMENT" => "The registration token is not a valid FCM registration token",
        "UNREGISTERED" => "Requested entity was not found.",
        "SENDER_ID_MISMATCH" => "SenderId mismatch",
        "QUOTA_EXCEEDED" => "Quota exceeded.",
        "UNAVAILABLE" => "The service is currently unavailable.",
        "THIRD_PARTY_AUTH_ERROR" => "Auth error from APNS or Web Push Service",
        "UNSPECIFIED_ERROR" => "Unknown error.",
        _ => "Internal error encountered.",
    }
}

#[derive(Deserialize)]
struct Assertion {
    iss: String,
    #[serde(default)]
    scope: Option<String>,
    iat: i64,
    exp: i64,
}

/// The audience Google's own libraries always put in the assertion, whatever
/// the key file's `token_uri`; Google accepts it.
const GOOGLE_TOKEN_AUDIENCE: &str = "https://oauth2.googleapis.com/token";
/// Scopes that give access to FCM: its own, and the one the Admin SDKs ask
/// for.
const SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
];
/// Google's limit on an assertion's lifetime, and the clock skew it forgives.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
const CLOCK_SKEW_SECS: i64 = 60;
/// Google's answer to an assertion outside its lifetime rules.
const SHORT_LIVED: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                           reasonable timeframe. Check your iat and exp values in the JWT claim.";

/// OAuth2 JWT-bearer grant (RFC 7523, as Google's token endpoint takes it):
/// the assertion's RS256 signature against the service account's public key,
/// its issuer, audience, scope and lifetime.
pub(crate) async fn token(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let invalid = |error: &str, d: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": error, "error_description": d })),
        )
            .into_response()
    };
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return invalid("unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return invalid("invalid_request", "Missing required parameter: assertion");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[state.token_uri.as_str(), GOOGLE_TOKEN_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    validation.leeway = CLOCK_SKEW_SECS as u64;
    let claims = match jsonwebtoken::decode::<Assertion>(assertion, &state.fcm_key, &validation) {
        Ok(d) => d.claims,
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => SHORT_LIVED.to_string(),
                ErrorKind::InvalidAudience => {
                    format!("Invalid JWT: the audience is not {GOOGLE_TOKEN_AUDIENCE}")
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    format!("Invalid JWT: the claim {claim} is missing")
                }
                ErrorKind::Json(_) => {
                    "Invalid JWT: its claims need iss, aud, iat and exp".to_string()
                }
                _ => format!("Invalid JWT Signature: {e}"),
            };
            return invalid("invalid_grant", &why);
        }
    };
    if claims.iss != FCM_CLIENT_EMAIL {
        return invalid(
            "invalid_grant",
            "Invalid grant: account not found (the issuer is not the simulator's service account)",
        );
    }
    let now = chrono::Utc::now().timestamp();
    if claims.exp - claims.iat > MAX_ASSERTION_LIFETIME_SECS || claims.iat > now + CLOCK_SKEW_SECS {
        return invalid("invalid_grant", SHORT_LIVED);
    }
    let scope = claims.scope.as_deref().unwrap_or_default();
    if !scope.split(' ').any(|s| SCOPES.contains(&s)) {
        return invalid(
            "invalid_scope",
            "The assertion's scope gives no access to FCM (firebase.messaging or cloud-platform)",
        );
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

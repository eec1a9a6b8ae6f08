//! The APNs provider API: `POST /3/device/{token}` over HTTP/2.

use crate::errors;
use crate::state::{SimState, Verdict, APNS_KEY_ID, APNS_TEAM_ID, APNS_TOPIC};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use herald_core::payload::ApnsPushType;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;

/// Apple rejects provider tokens older than one hour.
const TOKEN_MAX_AGE_SECS: i64 = 3600;
/// Request headers Apple refuses to see twice (`DuplicateHeaders`), and the
/// reason a value of each that is not readable text gets.
const SINGLE_HEADERS: [(&str, &str); 7] = [
    ("authorization", "InvalidProviderToken"),
    ("apns-id", "BadMessageId"),
    ("apns-topic", "BadTopic"),
    ("apns-push-type", "InvalidPushType"),
    ("apns-priority", "BadPriority"),
    ("apns-expiration", "BadExpirationDate"),
    ("apns-collapse-id", "BadCollapseId"),
];

/// An APNs error answer. Apple always names the request in `apns-id`: the one
/// the request gave, or a UUID of its own.
fn error(status: StatusCode, reason: &str, apns_id: &str, retry_after: Option<u64>) -> Response {
    let mut body = serde_json::json!({ "reason": reason });
    if status == StatusCode::GONE {
        body["timestamp"] = serde_json::json!(chrono::Utc::now().timestamp_millis());
    }
    let mut response =
        (status, [("apns-id", apns_id.to_string())], axum::Json(body)).into_response();
    if let Some(secs) = retry_after.filter(|_| errors::may_retry_after(status.as_u16())) {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    response
}

/// Apple's form of a UUID: 8-4-4-4-12 hexadecimal digits, nothing else.
fn is_uuid(id: &str) -> bool {
    id.len() == 36 && Uuid::parse_str(id).is_ok()
}

/// The request's `apns-id` when it is a UUID, else a new one.
fn answer_id(headers: &HeaderMap) -> String {
    headers
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_uuid(id))
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_string)
}

/// The push type a topic's suffix stands for, when a request names none.
fn push_type_of(topic: &str) -> ApnsPushType {
    [
        ApnsPushType::Pushtotalk,
        ApnsPushType::Voip,
        ApnsPushType::Complication,
        ApnsPushType::Fileprovider,
        ApnsPushType::Location,
        ApnsPushType::Liveactivity,
    ]
    .into_iter()
    .find(|t| topic.ends_with(t.topic_suffix()))
    .unwrap_or(ApnsPushType::Alert)
}

pub(crate) async fn method_not_allowed(headers: HeaderMap) -> Response {
    let id = answer_id(&headers);
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &id,
        None,
    )
}

pub(crate) async fn bad_path(headers: HeaderMap) -> Response {
    let id = answer_id(&headers);
    error(StatusCode::NOT_FOUND, "BadPath", &id, None)
}

/// `POST /3/device/` with nothing after it.
pub(crate) async fn missing_device_token(headers: HeaderMap) -> Response {
    let id = answer_id(&headers);
    error(StatusCode::BAD_REQUEST, "MissingDeviceToken", &id, None)
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
    let apns_id = answer_id(&headers);
    let retry_after = state.faults().retry_after_secs;
    let reject = |status, reason: &str| error(status, reason, &apns_id, retry_after);
    if let Verdict::Fail(faults) = state.before_judging().await {
        let status = faults.fail_status.unwrap_or(503);
        let reason = faults
            .apns_reason
            .as_deref()
            .unwrap_or_else(|| errors::apns_reason_for(status));
        let status = errors::apns_status(reason).unwrap_or(status);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(status, reason, &apns_id, faults.retry_after_secs);
    }
    if SINGLE_HEADERS
        .iter()
        .any(|(name, _)| headers.get_all(*name).iter().count() > 1)
    {
        return reject(StatusCode::BAD_REQUEST, "DuplicateHeaders");
    }
    // A header that is there but unreadable is a bad value, not a missing one.
    if let Some((_, reason)) = SINGLE_HEADERS
        .iter()
        .find(|(name, _)| headers.get(*name).is_some_and(|v| v.to_str().is_err()))
    {
        let status = errors::apns_status(reason).unwrap_or(400);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return reject(status, reason);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("apns-id").is_some_and(|id| !is_uuid(id)) {
        return reject(StatusCode::BAD_REQUEST, "BadMessageId");
    }

    // Then authentication: a provider token, or a client certificate
    // verified in the TLS handshake.
    let certificate = conn.as_ref().is_some_and(|c| c.0.client_certificate);
    match header("authorization") {
        Some(auth) => {
            // An auth scheme's name is case-insensitive (RFC 9110).
            let jwt = auth
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, jwt)| jwt.trim());
            let Some(jwt) = jwt else {
                return reject(StatusCode::FORBIDDEN, "InvalidProviderToken");
            };
            let iat = match verify_provider_token(&state, jwt) {
                Ok(iat) => iat,
                Err(reason) => return reject(StatusCode::FORBIDDEN, reason),
            };
            if conn
                .as_ref()
                .is_some_and(|c| !c.0.take_provider_token(jwt, iat))
            {
                return reject(StatusCode::TOO_MANY_REQUESTS, "TooManyProviderTokenUpdates");
            }
        }
        None if certificate => {}
        None => return reject(StatusCode::FORBIDDEN, "MissingProviderToken"),
    }

    if token.len() < 16 || token.len() > 200 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reject(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    // A certificate names its app's topic (its subject's UID): Apple takes
    // that one when a request with certificate auth gives none.
    let topic = match header("apns-topic") {
        Some(topic) => topic,
        None if certificate && header("authorization").is_none() => APNS_TOPIC,
        None => return reject(StatusCode::BAD_REQUEST, "MissingTopic"),
    };
    // Apple requires apns-push-type only for watchOS; without it, the topic's
    // suffix says what the push is.
    let kind = match header("apns-push-type") {
        None => push_type_of(topic),
        Some(push_type) => {
            match serde_json::from_value::<ApnsPushType>(serde_json::json!(push_type)) {
                Ok(kind) => kind,
                Err(_) => return reject(StatusCode::BAD_REQUEST, "InvalidPushType"),
            }
        }
    };
    let suffixes = [
        ApnsPushType::Voip,
        ApnsPushType::Pushtotalk,
        ApnsPushType::Complication,
        ApnsPushType::Fileprovider,
        ApnsPushType::Location,
        ApnsPushType::Liveactivity,
    ]
    .map(|t| t.topic_suffix());
    let base_topic = suffixes
        .iter()
        .find_map(|suffix| topic.strip_suffix(suffix))
        .unwrap_or(topic);
    if base_topic != APNS_TOPIC {
        return reject(StatusCode::BAD_REQUEST, "TopicDisallowed");
    }
    // A VoIP, complication, file-provider, location, Live Activity or
    // push-to-talk token belongs to the topic with that type's suffix (and
    // only those do): sent elsewhere, Apple answers that the token is not
    // for that topic.
    if topic.len() != base_topic.len() + kind.topic_suffix().len()
        || !topic.ends_with(kind.topic_suffix())
    {
        return reject(StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic");
    }
    let priority = header("apns-priority").unwrap_or("10");
    if !["1", "5", "10"].contains(&priority)
        || (kind == ApnsPushType::Background && priority != "5")
    {
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
    if body.len() > kind.max_payload() {
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

/// Checks a provider token and returns its `iat`. A token's signature is
/// checked once; its age on every request.
fn verify_provider_token(state: &SimState, jwt: &str) -> Result<i64, &'static str> {
    let iat = match state.verified_provider_token(jwt) {
        Some(iat) => iat,
        None => {
            let iat = verify_provider_token_signature(state, jwt)?;
            state.remember_provider_token(jwt, iat, TOKEN_MAX_AGE_SECS);
            iat
        }
    };
    if chrono::Utc::now().timestamp() - iat > TOKEN_MAX_AGE_SECS {
        return Err("ExpiredProviderToken");
    }
    Ok(iat)
}

/// Checks a provider token's header, signature and issuer; returns its `iat`.
fn verify_provider_token_signature(state: &SimState, jwt: &str) -> Result<i64, &'static str> {
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
    Ok(data.claims.iat)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RecordMode;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn provider_token(state: &SimState, iat: i64) -> String {
        let pem = state.credentials.apns["private_key_pem"]
            .as_str()
            .expect("key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(APNS_KEY_ID.into());
        let claims = serde_json::json!({"iss": APNS_TEAM_ID, "iat": iat});
        encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(pem.as_bytes()).expect("pem"),
        )
        .expect("token")
    }

    #[test]
    fn a_provider_token_is_verified_once_and_its_age_every_time() {
        let state =
            SimState::new("http://127.0.0.1:1/token".into(), RecordMode::Counts).expect("state");
        let now = chrono::Utc::now().timestamp();
        let jwt = provider_token(&state, now);
        assert_eq!(verify_provider_token(&state, &jwt), Ok(now));
        assert_eq!(state.verified_provider_token(&jwt), Some(now));
        assert_eq!(verify_provider_token(&state, &jwt), Ok(now));

        // A forged signature is refused, and not remembered.
        let (signed, signature) = jwt.rsplit_once('.').expect("three parts");
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{flipped}{}", &signature[1..]);
        assert_eq!(
            verify_provider_token(&state, &forged),
            Err("InvalidProviderToken")
        );
        assert_eq!(state.verified_provider_token(&forged), None);

        // A token older than an hour is expired, whether or not its
        // signature was checked before.
        let old = provider_token(&state, now - TOKEN_MAX_AGE_SECS - 10);
        assert_eq!(
            verify_provider_token(&state, &old),
            Err("ExpiredProviderToken")
        );
        state.remember_provider_token(&jwt, now - TOKEN_MAX_AGE_SECS - 10, TOKEN_MAX_AGE_SECS);
        assert_eq!(
            verify_provider_token(&state, &jwt),
            Err("ExpiredProviderToken")
        );
    }
}

//! The `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header):
//! a structured-field String. A bare token is accepted too, since many
//! clients send an unquoted UUID.

use crate::problem::Problem;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::AppId;
use herald_store::{Keyed, RequestKey, Store};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub const HEADER: &str = "idempotency-key";
pub const MAX_LEN: usize = 255;

pub fn key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::malformed_idempotency_key(
            "send the Idempotency-Key header once",
        ));
    }
    let raw = value
        .to_str()
        .map_err(|_| Problem::malformed_idempotency_key("the key must be printable ASCII"))?
        .trim();
    let key = if let Some(inner) = raw.strip_prefix('"') {
        parse_sf_string(inner)?
    } else {
        raw.to_string()
    };
    if key.is_empty() || key.len() > MAX_LEN {
        return Err(Problem::malformed_idempotency_key(format!(
            "the key must be 1 to {MAX_LEN} characters"
        )));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Problem::malformed_idempotency_key(
            "the key must be printable ASCII",
        ));
    }
    Ok(Some(key))
}

/// The rest of an sf-string after its opening quote (RFC 8941 section 3.3.3).
fn parse_sf_string(inner: &str) -> Result<String, Problem> {
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => {
                    return Err(Problem::malformed_idempotency_key(
                        "only \\\" and \\\\ may be escaped in a quoted key",
                    ))
                }
            },
            '"' => {
                if chars.next().is_some() {
                    return Err(Problem::malformed_idempotency_key(
                        "nothing may follow the closing quote",
                    ));
                }
                return Ok(out);
            }
            c => out.push(c),
        }
    }
    Err(Problem::malformed_idempotency_key(
        "the quoted key is not closed",
    ))
}

/// The request fingerprint: method, path and the body in canonical form (keys
/// sorted, no insignificant whitespace, members set to null left out: every
/// field of a create means the same null or absent), so a re-serialised body
/// still matches.
pub fn fingerprint(method: &str, path: &str, body: &serde_json::Value) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(&without_nulls(body)).unwrap_or_default());
    h.finalize().to_vec()
}

fn without_nulls(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The key of a request that creates one thing (a campaign, a trigger), with
/// its fingerprint; None without the header.
pub fn request_key(
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &serde_json::Value,
    retention: Duration,
) -> Result<Option<RequestKey>, Problem> {
    Ok(key(headers)?.map(|key| RequestKey {
        key,
        fingerprint: fingerprint(method, path, body),
        retention,
    }))
}

/// The answer (`status`) to a create under a key (or none). `view` shows
/// what the request created, or what an earlier request with the key
/// created (then the answer is marked replayed); the first answer given is
/// stored for the key's retries.
pub async fn answer_create<T, V: serde::Serialize>(
    store: &Store,
    app: AppId,
    key: Option<&RequestKey>,
    keyed: Keyed<T>,
    status: StatusCode,
    view: impl AsyncFnOnce(T) -> Result<V, Problem>,
    earlier: impl AsyncFnOnce(uuid::Uuid) -> Result<T, Problem>,
) -> Result<Response, Problem> {
    let (created, replayed) = match keyed {
        Keyed::Created(thing) => (thing, false),
        Keyed::Earlier(id) => (earlier(id).await?, true),
        Keyed::Replay {
            status: stored,
            body,
        } => return Ok(replay(StatusCode::from_u16(stored).unwrap_or(status), body)),
        Keyed::Mismatch => return Err(Problem::idempotency_mismatch()),
        Keyed::InProgress => return Err(Problem::idempotency_in_progress()),
    };
    let body = serde_json::to_value(view(created).await?).map_err(|_| Problem::internal())?;
    if let Some(key) = key {
        store
            .store_key_answer(app, &key.key, status.as_u16(), &body)
            .await?;
    }
    Ok(if replayed {
        replay(status, body)
    } else {
        (status, Json(body)).into_response()
    })
}

fn replay(status: StatusCode, body: serde_json::Value) -> Response {
    metrics::counter!("herald_idempotent_replays_total").increment(1);
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn parse(v: &str) -> Result<Option<String>, Problem> {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(v).unwrap());
        key(&h)
    }

    #[test]
    fn quoted_and_bare_keys_parse() {
        assert_eq!(parse("\"abc-1\"").unwrap().as_deref(), Some("abc-1"));
        assert_eq!(parse("abc-1").unwrap().as_deref(), Some("abc-1"));
        assert_eq!(parse(r#""a\"b""#).unwrap().as_deref(), Some("a\"b"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in ["\"\"", "\"open", "\"a\"b", r#""a\nb""#, ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":{"c":2}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{ "b": {"c":2}, "a": 1 }"#).unwrap();
        assert_eq!(
            fingerprint("POST", "/v1/push", &a),
            fingerprint("POST", "/v1/push", &b)
        );
        assert_ne!(
            fingerprint("POST", "/v1/push", &a),
            fingerprint("POST", "/v1/other", &a)
        );
    }

    #[test]
    fn a_member_set_to_null_is_a_member_left_out() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":{"c":null}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":{},"d":null}"#).unwrap();
        assert_eq!(
            fingerprint("POST", "/v1/push", &a),
            fingerprint("POST", "/v1/push", &b)
        );
        let c: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":{"c":0}}"#).unwrap();
        assert_ne!(
            fingerprint("POST", "/v1/push", &a),
            fingerprint("POST", "/v1/push", &c)
        );
    }
}

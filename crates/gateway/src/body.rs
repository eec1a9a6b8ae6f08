//! Request bodies: strict JSON, with errors that name the field at fault.

use crate::problem::Problem;
use axum::body::Bytes;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses a JSON body strictly; errors name the field at fault.
pub(crate) fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Value, T), Problem> {
    let value = parse_json(headers, body)?;
    let parsed = from_value(&value)?;
    Ok((value, parsed))
}

/// The body as JSON, whatever its shape (for bodies of more than one form).
pub(crate) fn parse_json(headers: &HeaderMap, body: &Bytes) -> Result<Value, Problem> {
    if let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err(Problem::unsupported_media_type());
        }
    }
    serde_json::from_slice(body).map_err(|e| Problem::malformed_json(e.to_string()))
}

/// A parsed body into its type; errors name the field at fault.
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        Problem::invalid_field(field, e.inner().to_string())
    })
}

/// A filter error comes out of serde as field `audience.filter`, detail
/// `filter.and[0].op: ...`: name the node itself (`audience.filter.and[0].op`).
pub(crate) fn name_filter_node(mut p: Problem, filter_field: &str) -> Problem {
    if p.field.as_deref() == Some(filter_field) {
        if let Some((path, detail)) = p.detail.split_once(": ") {
            if let Some(rest) = path.strip_prefix("filter") {
                p.field = Some(format!("{filter_field}{rest}"));
                p.detail = detail.to_string();
            }
        }
    }
    p
}

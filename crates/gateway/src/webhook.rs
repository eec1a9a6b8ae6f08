//! The app's outcome webhook (server key).

use crate::auth::ServerKey;
use crate::body::parse_body;
use crate::problem::Problem;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// An absolute `https://` (or `http://`) URL that accepts POSTed JSON.
    #[schema(
        pattern = r"^https?://(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])|((?![xX][nN]--)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*(?![xX][nN]--)[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#]\S*)?$"
    )]
    pub url: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// The signing secret: returned when the webhook is set, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Sets the URL that receives outcome events, and makes a new signing secret.
#[utoipa::path(put, path = "/v1/webhook", tag = "webhook", operation_id = "set_webhook",
    request_body = WebhookInput,
    responses((status = 200, body = WebhookView), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookView>, Problem> {
    let (_, input): (Value, WebhookInput) = parse_body(&headers, &body)?;
    if let Some(why) = url_problem(&input.url) {
        return Err(Problem::invalid_field("url", why));
    }
    let parsed = url::Url::parse(&input.url)
        .map_err(|e| Problem::invalid_field("url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
        return Err(Problem::invalid_field(
            "url",
            "an http or https URL with a host",
        ));
    }
    let hook = state.store.set_webhook(key.app_id, parsed.as_str()).await?;
    Ok(Json(WebhookView {
        url: hook.url,
        secret: Some(hook.secret),
    }))
}

/// The app's webhook URL.
#[utoipa::path(get, path = "/v1/webhook", tag = "webhook", operation_id = "get_webhook",
    responses((status = 200, body = WebhookView), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<Json<WebhookView>, Problem> {
    let hook = state
        .store
        .webhook(key.app_id)
        .await?
        .ok_or_else(|| Problem::not_found("this app has no webhook"))?;
    Ok(Json(WebhookView {
        url: hook.url,
        secret: None,
    }))
}

/// Stops outcome events.
#[utoipa::path(delete, path = "/v1/webhook", tag = "webhook", operation_id = "delete_webhook",
    responses((status = 204, description = "Removed"), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ServerKey(key): ServerKey,
) -> Result<StatusCode, Problem> {
    if state.store.delete_webhook(key.app_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("this app has no webhook"))
    }
}

/// What keeps `url` from being a webhook URL, by the grammar the OpenAPI
/// document states (an `http`/`https` URL whose host is a DNS name or a
/// dotted IPv4 address): the URL parser alone takes more (`*` in a host,
/// tabs it strips), and a URL the document refuses must be refused here too.
fn url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Some("an http:// or https:// URL");
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.chars().any(char::is_whitespace) {
        return Some("no whitespace in a URL");
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(port) = port {
        let in_range = port.len() < 5
            || (!port.starts_with('0') && port.parse::<u32>().is_ok_and(|p| p <= 65_535));
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || !in_range
        {
            return Some("a port is 0 to 65535");
        }
    }
    if dotted_ipv4(host) || dns_name(host) {
        None
    } else {
        Some("the host is a DNS name (letters, digits and `-`, its last label starting with a letter) or a dotted IPv4 address")
    }
}

fn dotted_ipv4(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
                && p.parse::<u16>().is_ok_and(|n| n <= 255)
        })
}

fn dns_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
            && !l.to_ascii_lowercase().starts_with("xn--")
    };
    labels.iter().all(|l| label_ok(l))
        && labels
            .last()
            .is_some_and(|l| l.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::url_problem;

    #[test]
    fn webhook_urls_follow_the_documented_grammar() {
        for ok in [
            "https://hooks.example.com/herald",
            "http://127.0.0.1:9000/h?x=1#f",
            "http://localhost",
            "https://a-b.c0:65535",
        ] {
            assert_eq!(url_problem(ok), None, "{ok}");
        }
        for bad in [
            "ftp://example.com",
            "http://host*",
            "http://a.1",
            "http://1.2.3.999",
            "http://01.2.3.4",
            "http://xn--abc.com",
            "http://-a.com",
            "http://a.com:65536",
            "http://a.com:",
            "http://user@a.com",
            "http://a.com/\tb",
            "http://[::1]/",
        ] {
            assert!(url_problem(bad).is_some(), "{bad}");
        }
    }
}

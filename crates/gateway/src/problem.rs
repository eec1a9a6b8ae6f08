//! RFC 9457 problem details: every error the API returns, with a stable
//! `type`, a human `detail` and, when a request field is at fault, `field`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable: `urn:herald:problem:<name>`.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = String)]
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, kind: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:herald:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn invalid_field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-field",
            "A request field is invalid",
            detail,
        );
        p.field = Some(field.into());
        p
    }

    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "The request body is not valid JSON",
            detail,
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Send JSON",
            "the request body must be application/json",
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or unknown API key",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This key may not do that",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// The resource is not in a state that allows the request (409).
    pub fn wrong_state(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "wrong-state",
            "Not possible in the current state",
            detail,
        )
    }

    pub fn malformed_idempotency_key(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-idempotency-key",
            "The Idempotency-Key header is malformed",
            detail,
        );
        p.field = Some("Idempotency-Key".into());
        p
    }

    pub fn idempotency_in_progress() -> Self {
        let mut p = Self::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-progress",
            "A request with this Idempotency-Key is still being processed",
            "retry after the first request has completed; it will then be replayed",
        );
        p.retry_after = Some(1);
        p
    }

    pub fn idempotency_mismatch() -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "This Idempotency-Key was used for a different request",
            "an Idempotency-Key names one request: use a new key for a different body",
        );
        p.field = Some("Idempotency-Key".into());
        p
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests for this API key",
            "slow down and retry after the number of seconds in Retry-After",
        );
        p.retry_after = Some(retry_after_secs.max(1));
        p
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "The request body is too large",
            format!("at most {limit} bytes"),
        )
    }

    pub fn timed_out() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "The request took too long",
            "the request was not completed in time; nothing was accepted, retrying is safe",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "This endpoint does not take that method",
            "see /v1/openapi.json for the methods each endpoint takes",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "Herald could not complete the request; nothing was accepted, retrying is safe",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "A dependency is unavailable",
            detail,
        );
        p.retry_after = Some(1);
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, axum::Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<herald_store::StoreError> for Problem {
    fn from(e: herald_store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        match e {
            herald_store::StoreError::Seal(herald_store::SealError::NoKey) => Problem::unavailable(
                "this Herald has no credentials.key: provider credentials cannot be stored",
            ),
            herald_store::StoreError::Database(sqlx::Error::PoolTimedOut)
            | herald_store::StoreError::Database(sqlx::Error::Io(_)) => {
                Problem::unavailable("PostgreSQL is not reachable; nothing was accepted")
            }
            _ => Problem::internal(),
        }
    }
}

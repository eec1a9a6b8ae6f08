//! Calls into the REST API's router, in-process, as an operator acting for
//! one app. Nothing the dashboard changes bypasses the API's handlers.

use crate::{ActingOperator, DashboardState};
use axum::body::Body;
use axum::http::{header, Method, Request};
use serde_json::Value;
use tower::ServiceExt;

/// Large enough for any answer the API gives (a message lists at most 1000
/// deliveries).
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// An API answer other than success: the problem document, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiProblem {
    pub status: u16,
    pub title: String,
    pub detail: String,
    /// The request field at fault, as the API names it (`audience.filter.and[0].op`).
    pub field: Option<String>,
}

impl ApiProblem {
    fn internal(detail: impl Into<String>) -> Self {
        Self {
            status: 500,
            title: "Internal error".into(),
            detail: detail.into(),
            field: None,
        }
    }

    /// The API's status, for the page that shows the refusal.
    pub fn status_code(&self) -> axum::http::StatusCode {
        axum::http::StatusCode::from_u16(self.status).unwrap_or(axum::http::StatusCode::BAD_REQUEST)
    }

    /// One line for an operator.
    pub fn message(&self) -> String {
        if self.detail.is_empty() {
            self.title.clone()
        } else {
            self.detail.clone()
        }
    }
}

pub struct Answer {
    pub body: Value,
}

pub struct Api<'a> {
    state: &'a DashboardState,
    acting: ActingOperator,
}

impl<'a> Api<'a> {
    pub fn new(state: &'a DashboardState, acting: ActingOperator) -> Self {
        Self { state, acting }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiProblem> {
        Ok(self.send(Method::GET, path, None, None).await?.body)
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, ApiProblem> {
        Ok(self.send(Method::POST, path, body, None).await?.body)
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiProblem> {
        Ok(self.send(Method::PUT, path, Some(body), None).await?.body)
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiProblem> {
        self.send(Method::DELETE, path, None, None)
            .await
            .map(|_| ())
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, ApiProblem> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", sf_string(key));
        }
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request
            .body(body)
            .map_err(|e| ApiProblem::internal(format!("building the API request: {e}")))?;
        request.extensions_mut().insert(self.acting);
        let response = self
            .state
            .api
            .clone()
            .oneshot(request)
            .await
            .map_err(|e: std::convert::Infallible| ApiProblem::internal(e.to_string()))?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), ANSWER_LIMIT)
            .await
            .map_err(|e| ApiProblem::internal(format!("reading the API answer: {e}")))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(Answer { body });
        }
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        Err(ApiProblem {
            status: status.as_u16(),
            title: text("title").unwrap_or_else(|| status.to_string()),
            detail: text("detail").unwrap_or_default(),
            field: text("field"),
        })
    }
}

/// An Idempotency-Key is a structured-field string: quoted, with `"` and `\`
/// escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

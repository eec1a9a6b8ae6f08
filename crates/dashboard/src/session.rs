//! Operator logins: argon2id password hashes, sessions behind an HttpOnly
//! SameSite=Strict cookie (stored as the SHA-256 of its secret), and a
//! per-session CSRF token every form and script request must echo.

use crate::form::FormData;
use crate::pages::{self, Page};
use crate::DashboardState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use herald_core::AppId;
use herald_store::AppSummary;
use maud::html;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use subtle::ConstantTimeEq;
use uuid::Uuid;

const SESSION_COOKIE: &str = "herald_session";
/// Double-submit token of the login form (there is no session yet).
const LOGIN_COOKIE: &str = "herald_login";
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, thiserror::Error)]
#[error("hashing the password: {0}")]
pub struct PasswordError(String);

/// An argon2id hash in PHC format, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError(e.to_string()))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A logged-in operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: Uuid,
    pub email: String,
    pub csrf: String,
}

impl Operator {
    /// Refuses a change that does not carry this session's CSRF token (in
    /// the form, or in the header for script requests).
    pub fn check_csrf(&self, form: &FormData, headers: &HeaderMap) -> Result<(), CsrfRefused> {
        let sent = match form.get(CSRF_FIELD) {
            "" => headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            s => s,
        };
        if same(sent, &self.csrf) {
            Ok(())
        } else {
            Err(CsrfRefused)
        }
    }
}

/// A change refused for want of the session's CSRF token.
#[derive(Debug)]
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        csrf_refused()
    }
}

pub fn csrf_refused() -> Response {
    let body = pages::bare(
        "Refused",
        html! {
            h1 { "This form was refused" }
            p { "It did not carry this session's security token, so nothing was changed. "
                "Go back, reload the page and try again." }
            p { a href="/dashboard" { "Back to the dashboard" } }
        },
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

impl FromRequestParts<DashboardState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DashboardState,
    ) -> Result<Self, Response> {
        // A page and its form both ask for the operator: one lookup.
        if let Some(known) = parts.extensions.get::<Operator>() {
            return Ok(known.clone());
        }
        let to_login = || {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/dashboard");
            let next = crate::pages::segment(next);
            Redirect::to(&format!("/dashboard/login?next={next}")).into_response()
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        match state.store.operator_session(&token_hash(token)).await {
            Ok(Some(s)) => {
                let operator = Operator {
                    id: s.operator_id,
                    email: s.email,
                    csrf: s.csrf_token,
                };
                parts.extensions.insert(operator.clone());
                Ok(operator)
            }
            Ok(None) => Err(to_login()),
            Err(e) => {
                tracing::error!(error = %e, "reading an operator session");
                Err(pages::unavailable())
            }
        }
    }
}

/// A form posted by the logged-in operator, its CSRF token checked: a
/// handler that takes one cannot forget the check.
pub struct CheckedForm(pub FormData);

impl axum::extract::FromRequest<DashboardState> for CheckedForm {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &DashboardState,
    ) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let operator = Operator::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let bytes = Bytes::from_request(axum::extract::Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = FormData::parse(&bytes);
        operator
            .check_csrf(&form, &headers)
            .map_err(IntoResponse::into_response)?;
        Ok(CheckedForm(form))
    }
}

/// An operator on one app's pages (`/dashboard/apps/{app}/...`).
pub struct AppPage {
    pub operator: Operator,
    pub app: AppSummary,
}

impl AppPage {
    pub fn acting(&self) -> crate::ActingOperator {
        crate::ActingOperator {
            operator_id: self.operator.id,
            app_id: self.app.id,
        }
    }

    pub fn page(&self, title: &str, section: &'static str) -> Page<'_> {
        Page {
            title: title.to_string(),
            operator: &self.operator,
            app: Some(&self.app),
            section,
        }
    }

    /// `/dashboard/apps/{app}{rest}`.
    pub fn href(&self, rest: &str) -> String {
        format!("/dashboard/apps/{}{rest}", self.app.id)
    }
}

impl FromRequestParts<DashboardState> for AppPage {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DashboardState,
    ) -> Result<Self, Response> {
        let operator = Operator::from_request_parts(parts, state).await?;
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let app = params
            .iter()
            .find(|(k, _)| *k == "app")
            .and_then(|(_, v)| AppId::from_str(v).ok());
        let found = match app {
            Some(app) => state.store.app(app).await.map_err(|e| {
                tracing::error!(error = %e, "reading an app");
                pages::unavailable()
            })?,
            None => None,
        };
        match found {
            Some(app) => Ok(AppPage { operator, app }),
            None => Err(pages::not_found(&operator, "There is no such app.")),
        }
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: only a dashboard path (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/dashboard") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/dashboard".to_string(),
    }
}

fn login_page(
    state: &DashboardState,
    next: &str,
    email: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let token = random_token();
    let body = pages::bare(
        "Log in",
        html! {
            main class="login" {
                h1 { "Herald" }
                form method="post" action="/dashboard/login" class="card" {
                    input type="hidden" name=(CSRF_FIELD) value=(token);
                    input type="hidden" name="next" value=(next);
                    @if let Some(e) = error {
                        p class="error" role="alert" id="login-error" { (e) }
                    }
                    label for="email" { "Email" }
                    input id="email" name="email" type="email" autocomplete="username" required value=(email);
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { "Log in" }
                }
            }
        },
    );
    let mut response = (status, body).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, 3600, state.secure_cookies),
    );
    response
}

pub async fn login_form(
    State(state): State<DashboardState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    login_page(
        &state,
        &safe_next(query.next.as_deref()),
        "",
        None,
        StatusCode::OK,
    )
}

/// Verifies against this when the email is unknown, so that the answer takes
/// as long either way.
const NO_SUCH_OPERATOR: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0b1mO8/0ylsU8gNa9q9CZ1oH8x1z0lU8XW8Q2yJvV4A";

pub async fn login(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = FormData::parse(&body);
    let next = safe_next(Some(form.get("next")));
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !same(form.get(CSRF_FIELD), expected) {
        return csrf_refused();
    }
    let email = form.get("email").to_lowercase();
    let password = form.get("password");
    let login = match state.store.operator_login(&email).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "reading an operator");
            return pages::unavailable();
        }
    };
    let hash = login
        .as_ref()
        .map(|l| l.password_hash.as_str())
        .unwrap_or(NO_SUCH_OPERATOR);
    let password = password.to_string();
    let hash = hash.to_string();
    // argon2 is deliberately slow: keep it off the async threads.
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let Some(operator) = login.filter(|_| verified) else {
        tracing::info!(email = %email, "dashboard login refused");
        return login_page(
            &state,
            &next,
            &email,
            Some("Wrong email or password."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let token = random_token();
    let expires = chrono::Utc::now() + state.session_ttl;
    if let Err(e) = state
        .store
        .create_operator_session(operator.id, &token_hash(&token), &random_token(), expires)
        .await
    {
        tracing::error!(error = %e, "storing an operator session");
        return pages::unavailable();
    }
    tracing::info!(email = %email, "operator logged in");
    let mut response = Redirect::to(&next).into_response();
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(
            SESSION_COOKIE,
            &token,
            state.session_ttl.num_seconds(),
            state.secure_cookies,
        ),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", 0, state.secure_cookies),
    );
    response
}

pub async fn logout(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    CheckedForm(_): CheckedForm,
) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = state
            .store
            .delete_operator_session(&token_hash(token))
            .await
        {
            tracing::error!(error = %e, "deleting an operator session");
            return pages::unavailable();
        }
    }
    let mut response = Redirect::to("/dashboard/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, state.secure_cookies),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsE", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn the_stand_in_hash_is_a_real_one() {
        assert!(PasswordHash::new(NO_SUCH_OPERATOR).is_ok());
        assert!(!verify_password("", NO_SUCH_OPERATOR));
    }

    #[test]
    fn only_dashboard_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/dashboard/apps/x")), "/dashboard/apps/x");
        assert_eq!(safe_next(Some("https://evil.example")), "/dashboard");
        assert_eq!(safe_next(Some("//evil.example")), "/dashboard");
        assert_eq!(safe_next(None), "/dashboard");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_session=xyz; herald_sessionx=no"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
    }
}

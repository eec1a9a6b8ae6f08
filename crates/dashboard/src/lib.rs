//! The operators' web dashboard, served by the gateway under `/dashboard`.
//!
//! Pages are rendered on the server; the little JavaScript there is (live
//! progress, audience size, notification preview) only improves pages that
//! work without it. Every change an operator makes is a request to the REST
//! API, dispatched in-process with the operator acting for the app: the same
//! handlers, the same validation, the same errors (shown beside the field the
//! API names). Only what has no REST form lives here: operator logins and the
//! list of apps.

mod api;
mod assets;
mod form;
mod pages;
mod session;

pub use session::{hash_password, verify_password, PasswordError};

use axum::routing::{get, post};
use axum::Router;
use herald_core::AppId;
use herald_store::Store;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use uuid::Uuid;

/// Put in a request's extensions by the dashboard when it calls the API for
/// an operator: the API then acts for `app_id` as its server key would.
/// Only server-side code can set an extension, so no client can claim it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActingOperator {
    pub operator_id: Uuid,
    pub app_id: AppId,
}

/// One consumer group's backlog on one topic, as the overview shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    pub cluster: String,
    pub group: String,
    pub topic: String,
    /// None: the cluster did not answer.
    pub lag: Option<i64>,
}

pub type LagFuture = Pin<Box<dyn Future<Output = Vec<ConsumerLag>> + Send>>;

/// Reads the consumer groups' lag (the gateway's process knows the brokers;
/// the dashboard does not).
pub type LagReader = Arc<dyn Fn() -> LagFuture + Send + Sync>;

#[derive(Clone)]
pub struct DashboardState {
    pub store: Store,
    /// The REST API's router: every change goes through it.
    pub api: Router,
    pub lag: LagReader,
    /// `Secure` on the session cookie. Off only for plain-HTTP hosts other
    /// than localhost (browsers keep secure cookies on http://localhost).
    pub secure_cookies: bool,
    /// How long a login lasts.
    pub session_ttl: chrono::Duration,
}

pub fn router(state: DashboardState) -> Router {
    use pages::{apps, campaigns, lookup, overview, settings, test_push, triggers};
    let app_routes = Router::new()
        .route("/", get(overview::page))
        .route("/campaigns", get(campaigns::list).post(campaigns::create))
        .route("/campaigns/new", get(campaigns::composer))
        .route("/campaigns/{id}", get(campaigns::detail))
        .route(
            "/campaigns/{id}/edit",
            get(campaigns::editor).post(campaigns::update),
        )
        .route("/campaigns/{id}/progress", get(campaigns::progress))
        .route(
            "/campaigns/{id}/confirm",
            get(campaigns::confirm).post(campaigns::act),
        )
        .route("/audience-estimate", post(campaigns::estimate))
        .route("/triggers", get(triggers::list).post(triggers::create))
        .route("/triggers/new", get(triggers::editor_new))
        .route(
            "/triggers/{id}",
            get(triggers::editor_existing).post(triggers::update),
        )
        .route("/messages", get(lookup::message))
        .route("/installations", get(lookup::installation))
        .route("/test-push", get(test_push::form).post(test_push::send))
        .route("/settings", get(settings::page))
        .route("/settings/keys", post(settings::create_key))
        .route("/settings/keys/{key_id}/revoke", post(settings::revoke_key))
        .route(
            "/settings/credentials/{provider}",
            post(settings::put_credentials),
        )
        .route(
            "/settings/credentials/{provider}/delete",
            post(settings::delete_credentials),
        );
    Router::new()
        .route("/dashboard", get(apps::list).post(apps::create))
        .route(
            "/dashboard/login",
            get(session::login_form).post(session::login),
        )
        .route("/dashboard/logout", post(session::logout))
        .route("/dashboard/assets/{name}", get(assets::serve))
        .nest("/dashboard/apps/{app}", app_routes)
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Strict headers on every dashboard answer: no framing, no inline script,
/// no caching of pages that show an app's data.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{self, HeaderValue};
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
             object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

//! The apps an operator can open, and a new app. Apps sit above the REST API
//! (an API key belongs to one app), so this is the one change the dashboard
//! makes in the store directly, as `herald apps create` does.

use crate::form::FieldErrors;
use crate::pages::{self, count, csrf_input, form_errors, text_field, Page};
use crate::session::{CheckedForm, Operator};
use crate::DashboardState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

const NAME_MAX: usize = 100;

async fn render(
    state: &DashboardState,
    operator: &Operator,
    name: &str,
    errors: &FieldErrors,
    status: StatusCode,
) -> Response {
    let apps = match state.store.apps().await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "listing apps");
            return pages::unavailable();
        }
    };
    let page = Page {
        title: "Apps".into(),
        operator,
        app: None,
        section: "",
    };
    let body = html! {
        @if apps.is_empty() {
            p { "No app yet: create the first one below." }
        } @else {
            table {
                thead { tr { th { "App" } th { "Id" } th { "Created" } } }
                tbody {
                    @for app in &apps {
                        tr {
                            td { a href={ "/dashboard/apps/" (app.id) } { (app.name) } }
                            td class="mono" { (app.id) }
                            td { (app.created_at.format("%Y-%m-%d %H:%M UTC")) }
                        }
                    }
                }
            }
            p class="hint" { (count(apps.len() as i64)) " apps" }
        }
        h2 { "New app" }
        form method="post" action="/dashboard" class="card" {
            (csrf_input(&operator.csrf))
            (form_errors(errors))
            (text_field(errors, "name", "Name", name, "text", Some("1 to 100 characters")))
            button type="submit" { "Create app" }
        }
    };
    (status, page.render(body)).into_response()
}

pub async fn list(State(state): State<DashboardState>, operator: Operator) -> Response {
    render(
        &state,
        &operator,
        "",
        &FieldErrors::default(),
        StatusCode::OK,
    )
    .await
}

pub async fn create(
    State(state): State<DashboardState>,
    operator: Operator,
    CheckedForm(form): CheckedForm,
) -> Response {
    let name = form.get("name");
    if name.is_empty() || name.chars().count() > NAME_MAX {
        let mut errors = FieldErrors::default();
        errors.by_field.insert(
            "name".into(),
            format!("a name is 1 to {NAME_MAX} characters"),
        );
        return render(&state, &operator, name, &errors, StatusCode::BAD_REQUEST).await;
    }
    match state.store.create_app(name).await {
        Ok(app) => {
            tracing::info!(%app, operator = %operator.email, "app created from the dashboard");
            Redirect::to(&format!("/dashboard/apps/{app}/settings")).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "creating an app");
            pages::unavailable()
        }
    }
}

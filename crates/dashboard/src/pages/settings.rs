//! API keys (list, create, revoke) and provider credentials (write-only: a
//! stored secret is never shown or put back into a form).

use crate::api::{Api, ApiProblem};
use crate::form::{FieldErrors, FormData};
use crate::pages::text;
use crate::pages::{
    csrf_input, form_errors, problem_notice, select_field, text_field, textarea_field,
};
use crate::session::{AppPage, CheckedForm};
use crate::DashboardState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Default)]
struct Outcome<'a> {
    /// A key just created: its secret, shown this once.
    created: Option<&'a Value>,
    notice: Option<&'a ApiProblem>,
    /// Which credentials form the errors belong to, and the values typed.
    provider: Option<&'a str>,
    form: Option<&'a FormData>,
    errors: FieldErrors,
}

async fn render(
    state: &DashboardState,
    page: &AppPage,
    outcome: Outcome<'_>,
    status: StatusCode,
) -> Response {
    let api = Api::new(state, page.acting());
    let keys = api.get("/v1/keys").await;
    let creds = api.get("/v1/credentials").await;
    let empty = FormData::default();
    let no_errors = FieldErrors::default();
    let typed = |p: &str| {
        if outcome.provider == Some(p) {
            outcome.form.unwrap_or(&empty)
        } else {
            &empty
        }
    };
    let errors_of = |p: &str| {
        if outcome.provider == Some(p) {
            &outcome.errors
        } else {
            &no_errors
        }
    };
    let csrf = &page.operator.csrf;
    let body = html! {
        @if let Some(p) = outcome.notice { (problem_notice(p)) }
        @if let Some(k) = outcome.created {
            div class="notice ok" role="status" {
                p { "New " (text(&k["kind"])) " key. Copy its secret now: it is not shown again." }
                p class="secret" id="new-secret" { (text(&k["secret"])) }
            }
        }
        section aria-labelledby="h-keys" {
            h2 id="h-keys" { "API keys" }
            @match &keys {
                Err(p) => (problem_notice(p)),
                Ok(keys) => {
                    table id="keys" {
                        thead { tr { th { "Kind" } th { "Starts with" } th { "Created" } th { "State" } th {} } }
                        tbody {
                            @for k in keys.as_array().cloned().unwrap_or_default() {
                                tr {
                                    td { (text(&k["kind"])) }
                                    td class="mono" { (text(&k["prefix"])) "…" }
                                    td { (text(&k["created_at"]).get(..16).unwrap_or("").replace('T', " ")) }
                                    td { @if k["revoked_at"].is_null() { "live" } @else { "revoked" } }
                                    td {
                                        @if k["revoked_at"].is_null() {
                                            form method="post" action=(page.href(&format!("/settings/keys/{}/revoke", text(&k["id"])))) class="inline" {
                                                (csrf_input(csrf))
                                                button type="submit" class="danger" { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action=(page.href("/settings/keys")) class="card" {
                (csrf_input(csrf))
                (select_field(&no_errors, "kind", "Kind", "server", &[("server", "server (everything)"), ("sdk", "SDK (installations and events only)")]))
                button type="submit" { "Create key" }
            }
        }
        section aria-labelledby="h-creds" {
            h2 id="h-creds" { "Provider credentials" }
            p class="hint" { "Stored encrypted. Secrets are write-only: upload new ones to replace them." }
            @let current = creds.as_ref().ok();
            div class="grid" {
                form method="post" action=(page.href("/settings/credentials/apns")) class="card" id="apns-form" novalidate {
                    h3 { "APNs" }
                    p id="apns-current" { @match current.map(|c| &c["apns"]) {
                        Some(a) if !a.is_null() => { "Set: team " (text(&a["team_id"])) ", key " (text(&a["key_id"])) ", topic " (text(&a["topic"])) }
                        _ => { "Not set." }
                    } }
                    (csrf_input(csrf))
                    (form_errors(errors_of("apns")))
                    (text_field(errors_of("apns"), "team_id", "Team id", typed("apns").get("team_id"), "text", None))
                    (text_field(errors_of("apns"), "key_id", "Key id", typed("apns").get("key_id"), "text", None))
                    (text_field(errors_of("apns"), "topic", "Topic (bundle id)", typed("apns").get("topic"), "text", None))
                    (textarea_field(errors_of("apns"), "private_key_pem", "Private key (.p8)", "", Some("never shown again once saved")))
                    div class="actions" { button type="submit" { "Save APNs credentials" } }
                }
                form method="post" action=(page.href("/settings/credentials/fcm")) class="card" id="fcm-form" novalidate {
                    h3 { "FCM" }
                    p id="fcm-current" { @match current.map(|c| &c["fcm"]) {
                        Some(f) if !f.is_null() => { "Set: project " (text(&f["project_id"])) ", " (text(&f["client_email"])) }
                        _ => { "Not set." }
                    } }
                    (csrf_input(csrf))
                    (form_errors(errors_of("fcm")))
                    (text_field(errors_of("fcm"), "project_id", "Project id", typed("fcm").get("project_id"), "text", None))
                    (textarea_field(errors_of("fcm"), "service_account", "Service-account key (JSON)", "", Some("never shown again once saved")))
                    div class="actions" { button type="submit" { "Save FCM credentials" } }
                }
            }
            div class="actions" {
                @for p in ["apns", "fcm"] {
                    form method="post" action=(page.href(&format!("/settings/credentials/{p}/delete"))) class="inline" {
                        (csrf_input(csrf))
                        button type="submit" class="secondary" { "Remove " (p.to_uppercase()) " credentials" }
                    }
                }
            }
        }
    };
    (
        status,
        page.page("Keys & credentials", "settings").render(body),
    )
        .into_response()
}

pub async fn page(State(state): State<DashboardState>, page: AppPage) -> Response {
    render(&state, &page, Outcome::default(), StatusCode::OK).await
}

pub async fn create_key(
    State(state): State<DashboardState>,
    page: AppPage,
    CheckedForm(form): CheckedForm,
) -> Response {
    let api = Api::new(&state, page.acting());
    match api
        .post("/v1/keys", Some(&json!({"kind": form.get("kind")})))
        .await
    {
        // Rendered, not redirected: the secret must not land in a URL or history.
        Ok(created) => {
            render(
                &state,
                &page,
                Outcome {
                    created: Some(&created),
                    ..Outcome::default()
                },
                StatusCode::CREATED,
            )
            .await
        }
        Err(p) => refused(&state, &page, &p).await,
    }
}

/// The page again, with the API's refusal on top.
async fn refused(state: &DashboardState, page: &AppPage, problem: &ApiProblem) -> Response {
    let outcome = Outcome {
        notice: Some(problem),
        ..Outcome::default()
    };
    render(state, page, outcome, problem.status_code()).await
}

#[derive(Deserialize)]
pub struct KeyPath {
    key_id: String,
}

pub async fn revoke_key(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<KeyPath>,
    CheckedForm(_form): CheckedForm,
) -> Response {
    let id = crate::pages::segment(&path.key_id);
    match Api::new(&state, page.acting())
        .delete(&format!("/v1/keys/{id}"))
        .await
    {
        Ok(()) => Redirect::to(&page.href("/settings")).into_response(),
        Err(p) => refused(&state, &page, &p).await,
    }
}

#[derive(Deserialize)]
pub struct ProviderPath {
    provider: String,
}

pub async fn put_credentials(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<ProviderPath>,
    CheckedForm(form): CheckedForm,
) -> Response {
    let (provider, value) = match path.provider.as_str() {
        "apns" => (
            "apns",
            json!({"team_id": form.get("team_id"), "key_id": form.get("key_id"),
            "topic": form.get("topic"), "private_key_pem": form.get("private_key_pem")}),
        ),
        "fcm" => {
            let account: Value = match serde_json::from_str(form.get("service_account")) {
                Ok(v) => v,
                Err(e) => {
                    let mut errors = FieldErrors::default();
                    errors
                        .by_field
                        .insert("service_account".into(), format!("not JSON: {e}"));
                    return render(
                        &state,
                        &page,
                        Outcome {
                            provider: Some("fcm"),
                            form: Some(&form),
                            errors,
                            ..Outcome::default()
                        },
                        StatusCode::BAD_REQUEST,
                    )
                    .await;
                }
            };
            (
                "fcm",
                json!({"project_id": form.get("project_id"), "service_account": account}),
            )
        }
        _ => return Redirect::to(&page.href("/settings")).into_response(),
    };
    match Api::new(&state, page.acting())
        .put(&format!("/v1/credentials/{provider}"), &value)
        .await
    {
        Ok(_) => Redirect::to(&page.href("/settings")).into_response(),
        Err(p) => {
            let errors = FieldErrors::from_problem(&p, |f| {
                let top = f.split(['.', '[']).next().unwrap_or("");
                match top {
                    "team_id" | "key_id" | "topic" | "private_key_pem" | "project_id"
                    | "service_account" => Some(top.to_string()),
                    _ => None,
                }
            });
            render(
                &state,
                &page,
                Outcome {
                    provider: Some(provider),
                    form: Some(&form),
                    errors,
                    ..Outcome::default()
                },
                p.status_code(),
            )
            .await
        }
    }
}

pub async fn delete_credentials(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<ProviderPath>,
    CheckedForm(_form): CheckedForm,
) -> Response {
    let provider = if path.provider == "fcm" {
        "fcm"
    } else {
        "apns"
    };
    match Api::new(&state, page.acting())
        .delete(&format!("/v1/credentials/{provider}"))
        .await
    {
        Ok(()) => Redirect::to(&page.href("/settings")).into_response(),
        Err(p) if p.status == 404 => Redirect::to(&page.href("/settings")).into_response(),
        Err(p) => refused(&state, &page, &p).await,
    }
}

//! "Send test push": one push to one installation, user or token, through
//! `POST /v1/push` with an Idempotency-Key fixed when the form is shown, so
//! that submitting the form twice sends once.

use crate::api::Api;
use crate::form::{FieldErrors, FormData};
use crate::pages::{count, csrf_input, form_errors, select_field, text_field, textarea_field};
use crate::session::{AppPage, CheckedForm};
use crate::DashboardState;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde_json::{json, Value};

fn page_with(
    page: &AppPage,
    form: &FormData,
    errors: &FieldErrors,
    sent: Option<&Value>,
    status: StatusCode,
) -> Response {
    let body = html! {
        @if let Some(s) = sent {
            @let id = s["message_id"].as_str().unwrap_or("");
            div class="notice ok" role="status" id="sent" {
                "Accepted for " (count(s["recipients"].as_i64().unwrap_or(0))) " device(s): message "
                a class="mono" href=(page.href(&format!("/messages?id={id}"))) { (id) }
                @let unresolved: Vec<String> = ["unresolved_install_ids", "unresolved_custom_ids"].iter()
                    .flat_map(|k| s[*k].as_array().cloned().unwrap_or_default()).filter_map(|v| v.as_str().map(str::to_string)).collect();
                @if !unresolved.is_empty() { ". Reaches no device: " (unresolved.join(", ")) }
            }
        }
        form method="post" action=(page.href("/test-push")) class="card" novalidate {
            (csrf_input(&page.operator.csrf))
            input type="hidden" name="idempotency_key" value=(form.get("idempotency_key"));
            (form_errors(errors))
            div class="row" {
                (select_field(errors, "target", "Send to", form.get("target"), &[
                    ("install_id", "an install id"), ("custom_id", "a user (custom id)"),
                    ("ios_token", "an iOS token"), ("android_token", "an Android token")]))
                (text_field(errors, "to", "Who", form.get("to"), "text", None))
            }
            (text_field(errors, "title", "Title", form.get("title"), "text", None))
            (textarea_field(errors, "body", "Body", form.get("body"), None))
            button type="submit" { "Send test push" }
        }
    };
    (
        status,
        page.page("Send test push", "test-push").render(body),
    )
        .into_response()
}

fn fresh_form() -> FormData {
    let mut form = FormData::default();
    form.set(
        "idempotency_key",
        format!("dashboard-test-{}", uuid::Uuid::new_v4()),
    );
    form.set("title", "Test from Herald");
    form
}

pub async fn form(page: AppPage) -> Response {
    page_with(
        &page,
        &fresh_form(),
        &FieldErrors::default(),
        None,
        StatusCode::OK,
    )
}

fn push_json(form: &FormData) -> Value {
    let to = form.get("to");
    let targets = match form.get("target") {
        "custom_id" => json!({"custom_ids": [to]}),
        "ios_token" => json!({"tokens": [{"platform": "ios", "token": to}]}),
        "android_token" => json!({"tokens": [{"platform": "android", "token": to}]}),
        _ => json!({"install_ids": [to]}),
    };
    let mut notification = json!({});
    for k in ["title", "body"] {
        if !form.get(k).is_empty() {
            notification[k] = form.get(k).into();
        }
    }
    json!({"to": targets, "notification": notification})
}

fn locate(api_field: &str) -> Option<String> {
    Some(
        match api_field {
            f if f.starts_with("to") => "to",
            "notification.body" => "body",
            f if f.starts_with("notification") => "title",
            _ => return None,
        }
        .into(),
    )
}

pub async fn send(
    State(state): State<DashboardState>,
    page: AppPage,
    CheckedForm(mut form): CheckedForm,
) -> Response {
    let key = match form.get("idempotency_key") {
        "" => format!("dashboard-test-{}", uuid::Uuid::new_v4()),
        k => k.to_string(),
    };
    let api = Api::new(&state, page.acting());
    match api
        .send(
            Method::POST,
            "/v1/push",
            Some(&push_json(&form)),
            Some(&key),
        )
        .await
    {
        Ok(answer) => {
            // The next push from this page is a new one.
            let mut next = fresh_form();
            next.set("target", form.get("target"));
            next.set("to", form.get("to"));
            page_with(
                &page,
                &next,
                &FieldErrors::default(),
                Some(&answer.body),
                StatusCode::OK,
            )
        }
        Err(problem) => {
            form.set("idempotency_key", key);
            let errors = FieldErrors::from_problem(&problem, locate);
            page_with(&page, &form, &errors, None, problem.status_code())
        }
    }
}

//! Looking a message up by id, and an installation up by install id, custom
//! id or token, with its recent deliveries.

use crate::api::Api;
use crate::form::FieldErrors;
use crate::pages::{count, field_error, problem_notice, select_field};
use crate::pages::{segment, text};
use crate::session::AppPage;
use crate::DashboardState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

fn deliveries_table(page: &AppPage, rows: &[Value], with_message: bool) -> Markup {
    html! {
        table class="deliveries" {
            thead { tr {
                @if with_message { th { "Message" } }
                th { "Platform" } th { "Install id" } th { "Token" } th { "Status" } th { "Reason" } th class="num" { "Attempts" } th { "Settled" }
            } }
            tbody {
                @for d in rows {
                    @let status = text(&d["status"]);
                    tr data-status=(status) {
                        @if with_message {
                            td { a class="mono" href=(page.href(&format!("/messages?id={}", text(&d["message_id"])))) { (text(&d["message_id"]).get(..8).unwrap_or("")) "…" } }
                        }
                        td { (text(&d["platform"])) }
                        td class="mono" { (text(&d["install_id"])) }
                        td class="mono" { (text(&d["token"]).get(..16).unwrap_or(text(&d["token"]))) "…" }
                        td { span class={ "status " (status) } { (status) } }
                        td { (text(&d["reason"])) }
                        td class="num" { (d["attempts"].as_i64().unwrap_or(0)) }
                        td { (text(&d["settled_at"]).get(..19).unwrap_or("").replace('T', " ")) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct MessageQuery {
    id: Option<String>,
}

pub async fn message(
    State(state): State<DashboardState>,
    page: AppPage,
    Query(query): Query<MessageQuery>,
) -> Response {
    let id = query.id.unwrap_or_default().trim().to_string();
    let mut errors = FieldErrors::default();
    let mut status = StatusCode::OK;
    let found = if id.is_empty() {
        None
    } else {
        match Api::new(&state, page.acting())
            .get(&format!("/v1/messages/{}", segment(&id)))
            .await
        {
            Ok(m) => Some(m),
            Err(p) => {
                errors.by_field.insert("id".into(), p.message());
                status = p.status_code();
                None
            }
        }
    };
    let body = html! {
        form method="get" action=(page.href("/messages")) class="card" role="search" {
            div class="field" {
                label for="id" { "Message id" }
                input id="id" name="id" value=(id) size="40" aria-describedby="error-id" aria-invalid=(if errors.get("id").is_some() { "true" } else { "false" });
                (field_error(&errors, "id"))
            }
            button type="submit" { "Look up" }
        }
        @if let Some(m) = &found {
            section id="message" {
                p { "Kind " strong { (text(&m["kind"])) } " · status " span id="message-status" class={ "status " (text(&m["status"])) } { (text(&m["status"])) }
                    " · " (count(m["recipients"].as_i64().unwrap_or(0))) " recipients · created " (text(&m["created_at"]).get(..19).unwrap_or("").replace('T', " ")) }
                table class="counts" {
                    thead { tr { @for (k, _) in m["counts"].as_object().cloned().unwrap_or_default() { th class="num" { (k) } } } }
                    tbody { tr { @for (k, v) in m["counts"].as_object().cloned().unwrap_or_default() { td class="num" data-count-of=(k) { (count(v.as_i64().unwrap_or(0))) } } } }
                }
                h2 { "Per device" }
                (deliveries_table(&page, m["deliveries"].as_array().map(Vec::as_slice).unwrap_or(&[]), false))
                @if m["deliveries_truncated"].as_bool().unwrap_or(false) {
                    p class="hint" { "The first 1,000 devices are listed; GET /v1/messages/{id}/deliveries pages through all of them." }
                }
            }
        }
    };
    (status, page.page("Messages", "messages").render(body)).into_response()
}

#[derive(Deserialize)]
pub struct InstallationQuery {
    by: Option<String>,
    q: Option<String>,
}

pub async fn installation(
    State(state): State<DashboardState>,
    page: AppPage,
    Query(query): Query<InstallationQuery>,
) -> Response {
    let by = query.by.unwrap_or_else(|| "install_id".into());
    let q = query.q.unwrap_or_default().trim().to_string();
    let api = Api::new(&state, page.acting());
    let mut errors = FieldErrors::default();
    let mut found: Vec<(Value, Vec<Value>)> = Vec::new();
    let mut notice = None;
    if !q.is_empty() {
        let listed = match by.as_str() {
            "custom_id" | "token" => api
                .get(&format!("/v1/installations?{by}={}", segment(&q)))
                .await
                .map(|l| l["installations"].as_array().cloned().unwrap_or_default()),
            _ => api
                .get(&format!("/v1/installations/{}", segment(&q)))
                .await
                .map(|i| vec![i]),
        };
        match listed {
            Ok(list) if list.is_empty() => {
                errors
                    .by_field
                    .insert("q".into(), "no installation matches".into());
            }
            Ok(list) => {
                for i in list {
                    let path = format!(
                        "/v1/installations/{}/deliveries?limit=20",
                        segment(text(&i["install_id"]))
                    );
                    match api.get(&path).await {
                        Ok(d) => {
                            found.push((i, d["deliveries"].as_array().cloned().unwrap_or_default()))
                        }
                        Err(p) => notice = Some(p),
                    }
                }
            }
            Err(p) if p.status == 404 || p.status == 400 => {
                errors.by_field.insert("q".into(), p.message());
            }
            Err(p) => notice = Some(p),
        }
    }
    let body = html! {
        form method="get" action=(page.href("/installations")) class="card" role="search" {
            div class="row" {
                (select_field(&errors, "by", "Find by", &by, &[("install_id", "install id"), ("custom_id", "custom id (user)"), ("token", "push token")]))
                div class="field" {
                    label for="q" { "Value" }
                    input id="q" name="q" value=(q) size="50" aria-describedby="error-q";
                    (field_error(&errors, "q"))
                }
            }
            button type="submit" { "Look up" }
        }
        @if let Some(p) = &notice { (problem_notice(p)) }
        @for (i, deliveries) in &found {
            section class="card installation" {
                h2 class="mono" { (text(&i["install_id"])) }
                dl {
                    dt { "Platform" } dd { (text(&i["platform"])) }
                    dt { "Custom id" } dd { (text(&i["custom_id"])) }
                    dt { "Token" } dd class="mono" { (text(&i["token"])) }
                    dt { "Locale / time zone" } dd { (text(&i["locale"])) " / " (text(&i["time_zone"])) }
                    dt { "App version" } dd { (text(&i["app_version"])) }
                    dt { "Opted in" } dd { (i["opted_in"].as_bool().unwrap_or(true)) }
                    @if !i["invalidated_at"].is_null() { dt { "Token invalidated" } dd { (text(&i["invalidated_at"])) } }
                }
                h3 { "Recent deliveries" }
                @if deliveries.is_empty() { p { "None yet." } } @else { (deliveries_table(&page, deliveries, true)) }
            }
        }
    };
    page.page("Installations", "installations")
        .render(body)
        .into_response()
}

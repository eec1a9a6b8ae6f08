//! Campaigns: list, composer, detail with live progress, and the life-cycle
//! actions behind a confirmation.

use crate::api::{Api, ApiProblem};
use crate::form::{
    number_or_text, split_list, utc_from_local_input, wall_clock, FieldErrors, FormData,
};
use crate::pages::compose::{
    condition_fields, conditions_form, conditions_json, locate_condition, locate_notification,
    notification_fields, notification_form, notification_json,
};
use crate::pages::{
    bars, count, csrf_input, field_error, form_errors, not_found, problem_notice, select_field,
    text_field, textarea_field,
};
use crate::pages::{n, segment, text};
use crate::session::{AppPage, CheckedForm};
use crate::DashboardState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{json, Map, Value};

const STATUSES: [&str; 5] = ["delivered", "rejected", "unknown", "expired", "failed"];

#[derive(Deserialize)]
pub struct IdPath {
    id: String,
}

// ---- list ----

pub async fn list(State(state): State<DashboardState>, page: AppPage) -> Response {
    let answer = Api::new(&state, page.acting())
        .get("/v1/campaigns?limit=100")
        .await;
    let body = html! {
        p { a class="button" href=(page.href("/campaigns/new")) { "New campaign" } }
        @match &answer {
            Err(p) => (problem_notice(p)),
            Ok(list) => {
                @let campaigns = list["campaigns"].as_array().cloned().unwrap_or_default();
                @if campaigns.is_empty() {
                    p { "No campaign yet." }
                } @else {
                    table id="campaigns" {
                        thead { tr { th { "Name" } th { "Status" } th class="num" { "Delivered" } th class="num" { "Pending" } th { "Created" } } }
                        tbody {
                            @for c in &campaigns {
                                @let status = text(&c["status"]);
                                tr {
                                    td { a href=(page.href(&format!("/campaigns/{}", text(&c["id"])))) { (text(&c["name"])) } }
                                    td { span class={ "status " (status) } { (status) } }
                                    td class="num" { (count(n(&c["progress"]["counts"]["delivered"]))) }
                                    td class="num" { (count(n(&c["progress"]["pending"]))) }
                                    td { (text(&c["created_at"]).get(..16).unwrap_or("").replace('T', " ")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page.page("Campaigns", "campaigns")
        .render(body)
        .into_response()
}

// ---- composer ----

fn audience_json(form: &FormData) -> (Value, Vec<usize>) {
    let mut audience = Map::new();
    let kind = match form.get("audience_type") {
        "" => "all",
        k => k,
    };
    audience.insert("type".into(), kind.into());
    if kind != "all" {
        audience.insert("ids".into(), split_list(form.get("audience_ids")).into());
    }
    let (filter, rows) = conditions_json(form);
    if let Some(f) = filter {
        audience.insert("filter".into(), f);
    } else if !form.get("filter_json").is_empty() {
        // A filter the rows cannot show, kept as it was.
        audience.insert(
            "filter".into(),
            serde_json::from_str(form.get("filter_json"))
                .unwrap_or_else(|_| form.get("filter_json").into()),
        );
    }
    (Value::Object(audience), rows)
}

fn campaign_json(form: &FormData) -> (Value, Vec<usize>) {
    let (audience, rows) = audience_json(form);
    let schedule = match form.get("schedule") {
        "at" => json!({"type": "at", "at": utc_from_local_input(form.get("schedule_at"))}),
        "local" => {
            let mut s = json!({"type": "local", "local_time": wall_clock(form.get("local_time"))});
            if !form.get("fallback_time_zone").is_empty() {
                s["fallback_time_zone"] = form.get("fallback_time_zone").into();
            }
            s
        }
        _ => json!({"type": "now"}),
    };
    let mut c = json!({
        "name": form.get("name"),
        "notification": notification_json(form),
        "audience": audience,
        "schedule": schedule,
    });
    if !form.get("rate_limit_per_second").is_empty() {
        c["rate_limit_per_second"] = number_or_text(form.get("rate_limit_per_second"));
    }
    if !form.get("delivery_policy").is_empty() {
        c["delivery_policy"] = form.get("delivery_policy").into();
    }
    (c, rows)
}

fn locate(api_field: &str, form: &FormData, rows: &[usize]) -> Option<String> {
    if let Some(f) = locate_notification(api_field, form) {
        return Some(f);
    }
    if let Some(f) = locate_condition(api_field, "audience.filter", rows) {
        return Some(f);
    }
    let field = match api_field {
        "name" | "rate_limit_per_second" | "delivery_policy" => api_field,
        "audience.ids" => "audience_ids",
        f if f.starts_with("audience") => "audience_type",
        "schedule.at" => "schedule_at",
        "schedule.local_time" => "local_time",
        "schedule.fallback_time_zone" => "fallback_time_zone",
        f if f.starts_with("schedule") => "schedule",
        _ => return None,
    };
    Some(field.into())
}

/// Where the composer posts, and what it says: a new campaign, or an edit.
struct Composing<'a> {
    action: String,
    title: &'a str,
    submit: &'a str,
}

impl Composing<'_> {
    fn new(page: &AppPage) -> Self {
        Self {
            action: page.href("/campaigns"),
            title: "New campaign",
            submit: "Save draft",
        }
    }

    fn edit(page: &AppPage, id: &str) -> Self {
        Self {
            action: page.href(&format!("/campaigns/{}/edit", segment(id))),
            title: "Edit campaign",
            submit: "Save changes",
        }
    }
}

fn composer_page(
    page: &AppPage,
    composing: &Composing<'_>,
    form: &FormData,
    errors: &FieldErrors,
    status: StatusCode,
) -> Response {
    let schedule = match form.get("schedule") {
        "" => "now",
        s => s,
    };
    let body = html! {
        form id="composer" method="post" action=(composing.action) novalidate
            data-estimate-url=(page.href("/audience-estimate")) {
            (csrf_input(&page.operator.csrf))
            (form_errors(errors))
            (text_field(errors, "name", "Name", form.get("name"), "text", Some("1 to 200 characters")))
            (notification_fields(form, errors, false))
            fieldset {
                legend { "Audience" }
                (select_field(errors, "audience_type", "Who", form.get("audience_type"), &[
                    ("all", "Every reachable installation"),
                    ("install_ids", "These install ids"),
                    ("custom_ids", "These users (custom ids)"),
                ]))
                (textarea_field(errors, "audience_ids", "Ids", form.get("audience_ids"), Some("one per line, for the two list audiences")))
                h3 { "Only those where" }
                @if !form.get("filter_json").is_empty() {
                    p class="hint" { "This campaign's filter nests (and/or/not) beyond what rows show; it is kept as it is unless you add rows here." }
                    input type="hidden" name="filter_json" value=(form.get("filter_json"));
                }
                (condition_fields(form, errors, "attributes.plan, app_version, locale…", true))
                p class="estimate" aria-live="polite" { "Audience size: " span id="estimate" { "…" } }
            }
            fieldset {
                legend { "When" }
                @for (value, label) in [("now", "Now, at launch"), ("at", "At a UTC time"), ("local", "At a local time in each installation's time zone")] {
                    label class="radio" {
                        input type="radio" name="schedule" value=(value) checked[schedule == value];
                        " " (label)
                    }
                    br;
                }
                (field_error(errors, "schedule"))
                div data-schedule="at" { (text_field(errors, "schedule_at", "UTC time", form.get("schedule_at"), "datetime-local", None)) }
                div data-schedule="local" {
                    (text_field(errors, "local_time", "Local time", form.get("local_time"), "datetime-local", None))
                    (text_field(errors, "fallback_time_zone", "Time zone for installations without one", form.get("fallback_time_zone"), "text", Some("IANA name, e.g. Europe/Paris; default UTC")))
                }
            }
            fieldset {
                legend { "Delivery" }
                (text_field(errors, "rate_limit_per_second", "Rate limit (deliveries per second)", form.get("rate_limit_per_second"), "text", Some("empty: no limit for this campaign")))
                (select_field(errors, "delivery_policy", "If an outcome is unknown", form.get("delivery_policy"), &[
                    ("at_most_once", "Never send twice (at most once)"),
                    ("at_least_once", "Send again once (at least once)"),
                ]))
            }
            div class="actions" { button type="submit" { (composing.submit) } }
        }
    };
    (status, page.page(composing.title, "campaigns").render(body)).into_response()
}

pub async fn composer(page: AppPage) -> Response {
    composer_page(
        &page,
        &Composing::new(&page),
        &FormData::default(),
        &FieldErrors::default(),
        StatusCode::OK,
    )
}

pub async fn create(
    State(state): State<DashboardState>,
    page: AppPage,
    CheckedForm(form): CheckedForm,
) -> Response {
    let (campaign, rows) = campaign_json(&form);
    match Api::new(&state, page.acting())
        .post("/v1/campaigns", Some(&campaign))
        .await
    {
        Ok(created) => Redirect::to(&page.href(&format!("/campaigns/{}", text(&created["id"]))))
            .into_response(),
        Err(problem) => {
            let errors = FieldErrors::from_problem(&problem, |f| locate(f, &form, &rows));
            composer_page(
                &page,
                &Composing::new(&page),
                &form,
                &errors,
                problem.status_code(),
            )
        }
    }
}

/// The live audience size while composing (the composer's script asks).
pub async fn estimate(
    State(state): State<DashboardState>,
    page: AppPage,
    CheckedForm(form): CheckedForm,
) -> Response {
    let (audience, _) = audience_json(&form);
    match Api::new(&state, page.acting())
        .post("/v1/audiences/estimate", Some(&audience))
        .await
    {
        Ok(e) => Json(e).into_response(),
        Err(p) => (
            p.status_code(),
            Json(json!({"detail": p.message(), "field": p.field})),
        )
            .into_response(),
    }
}

/// The composer's fields for a saved campaign.
fn campaign_form(c: &Value) -> FormData {
    let mut form = FormData::default();
    form.set("name", text(&c["name"]));
    notification_form(&c["notification"], &mut form);
    form.set("audience_type", text(&c["audience"]["type"]));
    let ids: Vec<&str> = c["audience"]["ids"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    form.set("audience_ids", ids.join("\n"));
    let filter = &c["audience"]["filter"];
    if !filter.is_null() && !conditions_form(filter, &mut form) {
        form.set("filter_json", filter.to_string());
    }
    let schedule = &c["schedule"];
    let kind = match text(&schedule["type"]) {
        "" => "now",
        k => k,
    };
    form.set("schedule", kind);
    // datetime-local inputs take `YYYY-MM-DDTHH:MM`.
    form.set("schedule_at", text(&schedule["at"]).get(..16).unwrap_or(""));
    form.set(
        "local_time",
        text(&schedule["local_time"]).get(..16).unwrap_or(""),
    );
    form.set("fallback_time_zone", text(&schedule["fallback_time_zone"]));
    if let Some(rate) = c["rate_limit_per_second"].as_u64() {
        form.set("rate_limit_per_second", rate.to_string());
    }
    form.set("delivery_policy", text(&c["delivery_policy"]));
    form
}

pub async fn editor(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
) -> Response {
    match Api::new(&state, page.acting())
        .get(&format!("/v1/campaigns/{}", segment(&path.id)))
        .await
    {
        Ok(c) => composer_page(
            &page,
            &Composing::edit(&page, &path.id),
            &campaign_form(&c),
            &FieldErrors::default(),
            StatusCode::OK,
        ),
        Err(_) => not_found(&page.operator, "There is no such campaign in this app."),
    }
}

pub async fn update(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
    CheckedForm(form): CheckedForm,
) -> Response {
    let (campaign, rows) = campaign_json(&form);
    let id = segment(&path.id);
    match Api::new(&state, page.acting())
        .put(&format!("/v1/campaigns/{id}"), &campaign)
        .await
    {
        Ok(_) => Redirect::to(&page.href(&format!("/campaigns/{id}"))).into_response(),
        Err(problem) => {
            let errors = FieldErrors::from_problem(&problem, |f| locate(f, &form, &rows));
            composer_page(
                &page,
                &Composing::edit(&page, &path.id),
                &form,
                &errors,
                problem.status_code(),
            )
        }
    }
}

// ---- detail and progress ----

/// What the progress bar shows.
fn progress_summary(campaign: &Value, expected: i64) -> Value {
    let status = text(&campaign["status"]);
    let p = &campaign["progress"];
    let (produced, settled, pending) = (n(&p["produced"]), n(&p["settled"]), n(&p["pending"]));
    let finished = matches!(status, "completed" | "cancelled");
    // While running, the audience counted at page load is the best whole;
    // once every job is produced, what was produced is.
    let total = if finished {
        produced
    } else {
        produced.max(expected)
    };
    let done = matches!(status, "completed" | "cancelled" | "draft") && pending == 0;
    // The current generation's share: a resumed campaign's outcomes from
    // before (`settled` counts every generation's) are not all its walk's.
    let settled_here = (produced - pending).max(0);
    let percent = if total > 0 {
        (settled_here * 100 / total).min(100)
    } else if done && status != "draft" {
        100
    } else {
        0
    };
    let counts: Map<String, Value> = STATUSES
        .iter()
        .map(|s| (s.to_string(), n(&p["counts"][*s]).into()))
        .collect();
    json!({
        "status": status,
        "settled": settled,
        "total": total,
        "pending": pending,
        "percent": percent,
        "done": done,
        "counts": counts,
        "text": format!("{} of {} devices have an outcome; {} pending", count(settled), count(total), count(pending)),
    })
}

#[derive(Deserialize)]
pub struct ProgressQuery {
    expected: Option<i64>,
}

pub async fn progress(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
    Query(query): Query<ProgressQuery>,
) -> Response {
    match Api::new(&state, page.acting())
        .get(&format!("/v1/campaigns/{}", segment(&path.id)))
        .await
    {
        Ok(c) => Json(progress_summary(&c, query.expected.unwrap_or(0))).into_response(),
        Err(p) => (p.status_code(), Json(json!({"detail": p.message()}))).into_response(),
    }
}

/// The actions a campaign's status allows (as the API's life-cycle table).
fn actions_for(status: &str) -> &'static [&'static str] {
    match status {
        "draft" => &["launch", "cancel", "delete"],
        "scheduled" | "running" => &["pause", "cancel"],
        "paused" => &["resume", "cancel"],
        "completed" => &["launch", "cancel", "delete"],
        "cancelled" => &["launch", "delete"],
        _ => &[],
    }
}

fn action_label(action: &str, status: &str) -> &'static str {
    match (action, status) {
        ("launch", "completed" | "cancelled") => "Launch again",
        ("launch", _) => "Launch",
        ("pause", _) => "Pause",
        ("resume", _) => "Resume",
        ("cancel", _) => "Cancel campaign",
        _ => "Delete",
    }
}

async fn detail_page(
    state: &DashboardState,
    page: &AppPage,
    id: &str,
    notice: Option<&ApiProblem>,
) -> Response {
    let api = Api::new(state, page.acting());
    let campaign = match api.get(&format!("/v1/campaigns/{}", segment(id))).await {
        Ok(c) => c,
        Err(p) if p.status == 404 => {
            return not_found(&page.operator, "There is no such campaign in this app.")
        }
        Err(p) => {
            return page
                .page("Campaign", "campaigns")
                .render(problem_notice(&p))
                .into_response()
        }
    };
    let status = text(&campaign["status"]).to_string();
    let expected = if matches!(status.as_str(), "completed" | "cancelled") {
        0
    } else {
        api.get(&format!("/v1/campaigns/{}/estimate", segment(id)))
            .await
            .map(|e| n(&e["installations"]))
            .unwrap_or(0)
    };
    let summary = progress_summary(&campaign, expected);
    let progress_url = page.href(&format!(
        "/campaigns/{}/progress?expected={expected}",
        segment(id)
    ));
    let message_id = text(&campaign["message_id"]);
    let schedule = &campaign["schedule"];
    let body = html! {
        @if let Some(p) = notice { (problem_notice(p)) }
        p {
            "Status: " span id="campaign-status" class={ "status " (status) } { (status) }
            " · generation " (n(&campaign["generation"]))
            " · message " a class="mono" href=(page.href(&format!("/messages?id={message_id}"))) { (message_id) }
        }
        section class="card" aria-labelledby="h-progress" {
            h2 id="h-progress" { "Progress" }
            div id="progress" data-url=(progress_url) data-percent=(summary["percent"]) data-status=(status) data-done=(summary["done"]) {
                progress id="progress-bar" max=(n(&summary["total"]).max(1)) value=(n(&summary["settled"])) aria-labelledby="h-progress" {}
                p { strong id="progress-percent" { (summary["percent"]) "%" } " — " span id="progress-text" { (text(&summary["text"])) } }
            }
        }
        div class="grid" {
            section class="card" aria-labelledby="h-outcomes" {
                h2 id="h-outcomes" { "Outcomes" }
                div id="outcomes" {
                    (bars(&STATUSES.iter().map(|s| (s.to_string(), n(&campaign["progress"]["counts"][*s]))).collect::<Vec<_>>(), "Outcomes"))
                }
            }
            section class="card" aria-labelledby="h-platforms" {
                h2 id="h-platforms" { "By platform" }
                div class="scroll" { table {
                    thead { tr { th { "Platform" } @for s in STATUSES { th class="num" { (s) } } } }
                    tbody {
                        @for platform in ["ios", "android"] {
                            tr { th scope="row" { (platform) }
                                @for s in STATUSES { td class="num" { (count(n(&campaign["progress"]["by_platform"][platform][s]))) } } }
                        }
                    }
                } }
            }
            section class="card" aria-labelledby="h-definition" {
                h2 id="h-definition" { "Definition" }
                dl {
                    dt { "Title" } dd { (text(&campaign["notification"]["title"])) }
                    dt { "Body" } dd { (text(&campaign["notification"]["body"])) }
                    dt { "Audience" } dd { (text(&campaign["audience"]["type"]))
                        @if !campaign["audience"]["filter"].is_null() { ", filter " code { (campaign["audience"]["filter"]) } } }
                    dt { "Schedule" } dd { (text(&schedule["type"])) " " (text(&schedule["at"])) (text(&schedule["local_time"])) }
                    dt { "Rate limit" } dd { @if campaign["rate_limit_per_second"].is_null() { "none" } @else { (campaign["rate_limit_per_second"]) " per second" } }
                }
            }
        }
        div class="actions" {
            @if matches!(status.as_str(), "draft" | "scheduled") {
                a class="button secondary" id="edit" href=(page.href(&format!("/campaigns/{}/edit", segment(id)))) { "Edit" }
            }
            @for action in actions_for(&status) {
                a class={ "button" @if *action == "cancel" || *action == "delete" { " danger" } } data-action=(action)
                    href=(page.href(&format!("/campaigns/{}/confirm?action={action}", segment(id)))) { (action_label(action, &status)) }
            }
        }
    };
    page.page(text(&campaign["name"]), "campaigns")
        .render(body)
        .into_response()
}

pub async fn detail(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
) -> Response {
    detail_page(&state, &page, &path.id, None).await
}

#[derive(Deserialize)]
pub struct ActionQuery {
    action: Option<String>,
}

/// "Are you sure?" before an action, as a page of its own: works without
/// script, and says what will happen.
pub async fn confirm(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
    Query(query): Query<ActionQuery>,
) -> Response {
    let api = Api::new(&state, page.acting());
    let campaign = match api
        .get(&format!("/v1/campaigns/{}", segment(&path.id)))
        .await
    {
        Ok(c) => c,
        Err(_) => return not_found(&page.operator, "There is no such campaign in this app."),
    };
    let status = text(&campaign["status"]);
    let action = query.action.unwrap_or_default();
    if !actions_for(status).contains(&action.as_str()) {
        return detail_page(&state, &page, &path.id, None).await;
    }
    let size = api
        .get(&format!("/v1/campaigns/{}/estimate", segment(&path.id)))
        .await
        .map(|e| n(&e["installations"]))
        .unwrap_or(0);
    let name = text(&campaign["name"]);
    let what = match action.as_str() {
        "launch" => format!("Launch “{name}”? It goes to the {} installations its audience reaches now; devices that already have it are skipped.", count(size)),
        "pause" => format!("Pause “{name}”? Nothing more is sent until you resume it."),
        "resume" => format!("Resume “{name}”? Sending continues; devices that already have it are skipped."),
        "cancel" => format!("Cancel “{name}”? It stops for good; queued sends are dropped."),
        _ => format!("Delete “{name}”? Its message and per-device outcomes are kept."),
    };
    let body = html! {
        form method="post" action=(page.href(&format!("/campaigns/{}/confirm", segment(&path.id)))) class="card" {
            (csrf_input(&page.operator.csrf))
            input type="hidden" name="action" value=(action);
            p id="confirm-text" { (what) }
            div class="actions" {
                button type="submit" id="confirm" class=(if matches!(action.as_str(), "cancel" | "delete") { "danger" } else { "" }) { "Yes, " (action_label(&action, status).to_lowercase()) }
                a class="button secondary" href=(page.href(&format!("/campaigns/{}", segment(&path.id)))) { "No, go back" }
            }
        }
    };
    page.page("Confirm", "campaigns")
        .render(body)
        .into_response()
}

pub async fn act(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
    CheckedForm(form): CheckedForm,
) -> Response {
    let api = Api::new(&state, page.acting());
    let id = segment(&path.id);
    let result = match form.get("action") {
        a @ ("launch" | "pause" | "resume" | "cancel") => api
            .post(&format!("/v1/campaigns/{id}/{a}"), None)
            .await
            .map(|_| ()),
        "delete" => match api.delete(&format!("/v1/campaigns/{id}")).await {
            Ok(()) => return Redirect::to(&page.href("/campaigns")).into_response(),
            Err(p) => Err(p),
        },
        _ => return detail_page(&state, &page, &path.id, None).await,
    };
    match result {
        Ok(()) => Redirect::to(&page.href(&format!("/campaigns/{id}"))).into_response(),
        Err(p) => {
            let mut response = detail_page(&state, &page, &path.id, Some(&p)).await;
            *response.status_mut() = p.status_code();
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_composer_form_is_the_api_campaign() {
        let form = FormData::parse(
            b"name=Winter&title=Sale&body=20%25+off&audience_type=custom_ids&audience_ids=u1%0Au2\
              &cond_field=attributes.plan&cond_op=eq&cond_value=gold&schedule=at&schedule_at=2026-12-01T09%3A00\
              &rate_limit_per_second=500&delivery_policy=at_most_once",
        );
        let (c, _) = campaign_json(&form);
        assert_eq!(
            c["audience"],
            json!({"type": "custom_ids", "ids": ["u1", "u2"],
            "filter": {"and": [{"field": "attributes.plan", "op": "eq", "value": "gold"}]}})
        );
        assert_eq!(
            c["schedule"],
            json!({"type": "at", "at": "2026-12-01T09:00:00Z"})
        );
        assert_eq!(c["rate_limit_per_second"], json!(500));
        assert_eq!(
            c["notification"],
            json!({"title": "Sale", "body": "20% off"})
        );
    }

    #[test]
    fn a_saved_campaign_survives_the_round_trip_through_the_composer() {
        let saved = json!({
            "name": "Winter", "delivery_policy": "at_least_once", "rate_limit_per_second": 500,
            "notification": {"title": "Sale", "body": "20% off", "localizations": {"fr": {"title": "Soldes"}}},
            "audience": {"type": "custom_ids", "ids": ["u1", "u2"],
                         "filter": {"and": [{"field": "attributes.plan", "op": "in", "value": ["gold", "silver"]},
                                            {"tags_any": ["vip"]}]}},
            "schedule": {"type": "local", "local_time": "2026-12-05T09:00:00", "fallback_time_zone": "Europe/Paris"},
        });
        let (back, _) = campaign_json(&campaign_form(&saved));
        for key in [
            "name",
            "delivery_policy",
            "rate_limit_per_second",
            "notification",
            "audience",
            "schedule",
        ] {
            assert_eq!(back[key], saved[key], "{key}");
        }
        // A filter the rows cannot show is carried as it is.
        let nested = json!({"name": "n", "notification": {"title": "t"},
            "audience": {"type": "all", "filter": {"or": [{"tags_any": ["a"]}, {"not": {"tags_any": ["b"]}}]}},
            "schedule": {"type": "now"}});
        let (back, _) = campaign_json(&campaign_form(&nested));
        assert_eq!(back["audience"], nested["audience"]);
    }

    #[test]
    fn progress_reaches_100_only_when_every_device_has_an_outcome() {
        let running = json!({"status": "running", "progress": {"produced": 10, "settled": 5, "pending": 5, "counts": {"delivered": 5}}});
        let s = progress_summary(&running, 20);
        assert_eq!(
            (s["percent"].as_i64(), s["done"].as_bool()),
            (Some(25), Some(false))
        );
        let completed = json!({"status": "completed", "progress": {"produced": 20, "settled": 20, "pending": 0, "counts": {"delivered": 20}}});
        let s = progress_summary(&completed, 0);
        assert_eq!(
            (s["percent"].as_i64(), s["done"].as_bool()),
            (Some(100), Some(true))
        );
        // Resumed: outcomes of earlier generations (rejected tokens the new
        // walk skips) are in `settled`, not in the new walk's share.
        let resumed = json!({"status": "completed", "progress": {"produced": 20, "settled": 23, "pending": 5, "counts": {"delivered": 18, "rejected": 5}}});
        let s = progress_summary(&resumed, 0);
        assert_eq!(
            (s["percent"].as_i64(), s["done"].as_bool()),
            (Some(75), Some(false))
        );
        let draft = json!({"status": "draft", "progress": {"produced": 0, "settled": 0, "pending": 0, "counts": {}}});
        assert_eq!(progress_summary(&draft, 3)["percent"].as_i64(), Some(0));
    }

    #[test]
    fn errors_land_beside_the_field_the_api_names() {
        let form = FormData::default();
        assert_eq!(
            locate("schedule.at", &form, &[]).as_deref(),
            Some("schedule_at")
        );
        assert_eq!(
            locate("rate_limit_per_second", &form, &[]).as_deref(),
            Some("rate_limit_per_second")
        );
        assert_eq!(
            locate("audience.ids[3]", &form, &[]).as_deref(),
            Some("audience_type")
        );
        assert_eq!(
            locate("notification.title", &form, &[]).as_deref(),
            Some("title")
        );
    }
}

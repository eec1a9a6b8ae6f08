//! Trigger rules: list, and one editor for new and existing rules. Templates
//! and conditions are checked by the API when saved; its refusal is shown
//! beside the field it names.

use crate::api::Api;
use crate::form::{number_or_text, split_list, FieldErrors, FormData};
use crate::pages::compose::{
    condition_fields, conditions_form, conditions_json, locate_condition, locate_notification,
    notification_fields, notification_form, notification_json,
};
use crate::pages::{
    count, csrf_input, form_errors, not_found, problem_notice, select_field, text_field,
};
use crate::pages::{segment, text};
use crate::session::{AppPage, CheckedForm};
use crate::DashboardState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct IdPath {
    id: String,
}

pub async fn list(State(state): State<DashboardState>, page: AppPage) -> Response {
    let answer = Api::new(&state, page.acting()).get("/v1/triggers").await;
    let body = html! {
        p { a class="button" href=(page.href("/triggers/new")) { "New trigger" } }
        @match &answer {
            Err(p) => (problem_notice(p)),
            Ok(list) => {
                @let triggers = list["triggers"].as_array().cloned().unwrap_or_default();
                @if triggers.is_empty() { p { "No trigger yet." } } @else {
                    table id="triggers" {
                        thead { tr { th { "Name" } th { "Entry event" } th { "Delay" } th { "Enabled" } th class="num" { "Pending" } th class="num" { "Fired" } } }
                        tbody {
                            @for t in &triggers {
                                tr {
                                    td { a href=(page.href(&format!("/triggers/{}", text(&t["id"])))) { (text(&t["name"])) } }
                                    td class="mono" { (text(&t["entry_event"])) }
                                    td { (t["delay_seconds"].as_u64().unwrap_or(0)) " s" }
                                    td { @if t["enabled"].as_bool().unwrap_or(true) { "yes" } @else { "no" } }
                                    td class="num" { (count(t["timers"]["pending"].as_i64().unwrap_or(0))) }
                                    td class="num" { (count(t["timers"]["fired"].as_i64().unwrap_or(0))) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page.page("Triggers", "triggers")
        .render(body)
        .into_response()
}

fn trigger_json(form: &FormData) -> (Value, Vec<usize>) {
    let mut t = json!({
        "name": form.get("name"),
        "entry_event": form.get("entry_event"),
        "delay_seconds": number_or_text(match form.get("delay_seconds") { "" => "0", d => d }),
        "cancel_events": split_list(form.get("cancel_events")),
        "notification": notification_json(form),
        "enabled": form.get("enabled") == "on",
        "delivery_policy": match form.get("delivery_policy") { "" => "at_most_once", p => p },
    });
    let (filter, rows) = conditions_json(form);
    if let Some(f) = filter {
        t["conditions"] = f;
    } else if !form.get("conditions_json").is_empty() {
        // Conditions the rows cannot show are kept as they were.
        t["conditions"] = serde_json::from_str(form.get("conditions_json"))
            .unwrap_or_else(|_| form.get("conditions_json").into());
    }
    if !form.get("cap_max").is_empty() || !form.get("cap_window_seconds").is_empty() {
        t["frequency_cap"] = json!({"max": number_or_text(form.get("cap_max")), "window_seconds": number_or_text(form.get("cap_window_seconds"))});
    }
    if !form.get("quiet_start").is_empty() || !form.get("quiet_end").is_empty() {
        t["quiet_hours"] = json!({"start": form.get("quiet_start"), "end": form.get("quiet_end"),
            "action": match form.get("quiet_action") { "" => "postpone", a => a }});
    }
    (t, rows)
}

fn trigger_form(t: &Value) -> (FormData, bool) {
    let mut form = FormData::default();
    form.set("name", text(&t["name"]));
    form.set("entry_event", text(&t["entry_event"]));
    form.set(
        "delay_seconds",
        t["delay_seconds"].as_u64().unwrap_or(0).to_string(),
    );
    let cancels: Vec<&str> = t["cancel_events"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    form.set("cancel_events", cancels.join(", "));
    notification_form(&t["notification"], &mut form);
    if t["enabled"].as_bool().unwrap_or(true) {
        form.set("enabled", "on");
    }
    form.set("delivery_policy", text(&t["delivery_policy"]));
    if let Some(cap) = t["frequency_cap"].as_object() {
        form.set(
            "cap_max",
            cap.get("max").map(Value::to_string).unwrap_or_default(),
        );
        form.set(
            "cap_window_seconds",
            cap.get("window_seconds")
                .map(Value::to_string)
                .unwrap_or_default(),
        );
    }
    if let Some(q) = t["quiet_hours"].as_object() {
        form.set(
            "quiet_start",
            q.get("start")
                .and_then(Value::as_str)
                .unwrap_or("")
                .get(..5)
                .unwrap_or(""),
        );
        form.set(
            "quiet_end",
            q.get("end")
                .and_then(Value::as_str)
                .unwrap_or("")
                .get(..5)
                .unwrap_or(""),
        );
        form.set(
            "quiet_action",
            q.get("action").and_then(Value::as_str).unwrap_or(""),
        );
    }
    let mut nested = false;
    if !t["conditions"].is_null() && !conditions_form(&t["conditions"], &mut form) {
        form.set("conditions_json", t["conditions"].to_string());
        nested = true;
    }
    (form, nested)
}

fn locate(api_field: &str, form: &FormData, rows: &[usize]) -> Option<String> {
    if let Some(f) = locate_notification(api_field, form) {
        return Some(f);
    }
    if let Some(f) = locate_condition(api_field, "conditions", rows) {
        return Some(f);
    }
    let top = api_field.split(['.', '[']).next().unwrap_or("");
    let field = match top {
        "name" | "entry_event" | "delay_seconds" | "cancel_events" | "delivery_policy" => top,
        "frequency_cap" if api_field.ends_with("window_seconds") => "cap_window_seconds",
        "frequency_cap" => "cap_max",
        "quiet_hours" if api_field.ends_with("end") => "quiet_end",
        "quiet_hours" => "quiet_start",
        _ => return None,
    };
    Some(field.into())
}

fn editor(
    page: &AppPage,
    action: &str,
    title: &str,
    form: &FormData,
    errors: &FieldErrors,
    nested: bool,
    status: StatusCode,
) -> Response {
    let body = html! {
        form id="trigger-editor" method="post" action=(action) novalidate {
            (csrf_input(&page.operator.csrf))
            (form_errors(errors))
            (text_field(errors, "name", "Name", form.get("name"), "text", None))
            fieldset {
                legend { "When" }
                (text_field(errors, "entry_event", "Entry event", form.get("entry_event"), "text", Some("the event name that starts the rule, e.g. cart_abandoned")))
                h3 { "Only if the event's attributes match" }
                @if nested {
                    p class="hint" { "This rule's conditions nest (and/or/not) beyond what rows show; they are kept as they are unless you add rows here." }
                    input type="hidden" name="conditions_json" value=(form.get("conditions_json"));
                }
                (condition_fields(form, errors, "attributes.total", false))
                (text_field(errors, "delay_seconds", "Delay (seconds after the event)", form.get("delay_seconds"), "text", Some("0 to 2592000 (30 days)")))
                (text_field(errors, "cancel_events", "Cancelled by these events", form.get("cancel_events"), "text", Some("comma-separated event names")))
            }
            (notification_fields(form, errors, true))
            fieldset {
                legend { "Limits" }
                div class="row" {
                    (text_field(errors, "cap_max", "At most (pushes per user)", form.get("cap_max"), "text", None))
                    (text_field(errors, "cap_window_seconds", "in (seconds)", form.get("cap_window_seconds"), "text", None))
                }
                div class="row" {
                    (text_field(errors, "quiet_start", "Quiet hours from", form.get("quiet_start"), "time", None))
                    (text_field(errors, "quiet_end", "to", form.get("quiet_end"), "time", None))
                    (select_field(errors, "quiet_action", "During quiet hours", form.get("quiet_action"), &[("postpone", "postpone to their end"), ("drop", "drop the push")]))
                }
                (select_field(errors, "delivery_policy", "If an outcome is unknown", form.get("delivery_policy"), &[
                    ("at_most_once", "Never send twice (at most once)"), ("at_least_once", "Send again once (at least once)")]))
                div class="field" { label { input type="checkbox" name="enabled" checked[form.get("enabled") == "on"]; " Enabled" } }
            }
            div class="actions" { button type="submit" { "Save trigger" } }
        }
    };
    (status, page.page(title, "triggers").render(body)).into_response()
}

pub async fn editor_new(page: AppPage) -> Response {
    let mut form = FormData::default();
    form.set("enabled", "on");
    let action = page.href("/triggers");
    editor(
        &page,
        &action,
        "New trigger",
        &form,
        &FieldErrors::default(),
        false,
        StatusCode::OK,
    )
}

pub async fn editor_existing(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
) -> Response {
    match Api::new(&state, page.acting())
        .get(&format!("/v1/triggers/{}", segment(&path.id)))
        .await
    {
        Ok(t) => {
            let (form, nested) = trigger_form(&t);
            let action = page.href(&format!("/triggers/{}", segment(&path.id)));
            editor(
                &page,
                &action,
                text(&t["name"]),
                &form,
                &FieldErrors::default(),
                nested,
                StatusCode::OK,
            )
        }
        Err(_) => not_found(&page.operator, "There is no such trigger in this app."),
    }
}

async fn save(
    state: &DashboardState,
    page: &AppPage,
    id: Option<&str>,
    form: FormData,
) -> Response {
    let (trigger, rows) = trigger_json(&form);
    let api = Api::new(state, page.acting());
    let result = match id {
        None => api.post("/v1/triggers", Some(&trigger)).await,
        Some(id) => {
            api.put(&format!("/v1/triggers/{}", segment(id)), &trigger)
                .await
        }
    };
    match result {
        Ok(_) => Redirect::to(&page.href("/triggers")).into_response(),
        Err(problem) => {
            let errors = FieldErrors::from_problem(&problem, |f| locate(f, &form, &rows));
            let action = match id {
                None => page.href("/triggers"),
                Some(id) => page.href(&format!("/triggers/{}", segment(id))),
            };
            let nested = !form.get("conditions_json").is_empty();
            let title = if id.is_some() {
                "Edit trigger"
            } else {
                "New trigger"
            };
            editor(
                page,
                &action,
                title,
                &form,
                &errors,
                nested,
                problem.status_code(),
            )
        }
    }
}

pub async fn create(
    State(state): State<DashboardState>,
    page: AppPage,
    CheckedForm(form): CheckedForm,
) -> Response {
    save(&state, &page, None, form).await
}

pub async fn update(
    State(state): State<DashboardState>,
    page: AppPage,
    Path(path): Path<IdPath>,
    CheckedForm(form): CheckedForm,
) -> Response {
    save(&state, &page, Some(&path.id), form).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_survives_the_round_trip_through_its_form() {
        let rule = json!({
            "name": "Cart", "entry_event": "cart_abandoned", "delay_seconds": 60,
            "cancel_events": ["purchase"], "enabled": true, "delivery_policy": "at_most_once",
            "conditions": {"and": [{"field": "attributes.total", "op": "gte", "value": 20}]},
            "notification": {"title": "{{event.item|Your cart}}", "body": "Still there",
                             "localizations": {"fr": {"title": "Panier"}}},
            "frequency_cap": {"max": 1, "window_seconds": 86400},
            "quiet_hours": {"start": "22:00:00", "end": "08:00:00", "action": "postpone"},
        });
        let (form, nested) = trigger_form(&rule);
        assert!(!nested);
        let (back, _) = trigger_json(&form);
        assert_eq!(back["conditions"], rule["conditions"]);
        assert_eq!(back["notification"], rule["notification"]);
        assert_eq!(back["frequency_cap"], rule["frequency_cap"]);
        assert_eq!(
            back["quiet_hours"],
            json!({"start": "22:00", "end": "08:00", "action": "postpone"})
        );
        assert_eq!(back["cancel_events"], json!(["purchase"]));
        assert_eq!(back["delay_seconds"], json!(60));
    }

    #[test]
    fn a_template_error_lands_beside_its_language_row() {
        let form = FormData::parse(b"loc_lang=fr&loc_title=x&loc_body=");
        assert_eq!(
            locate("notification.localizations.fr.title", &form, &[]).as_deref(),
            Some("loc-0")
        );
        assert_eq!(
            locate("frequency_cap.window_seconds", &form, &[]).as_deref(),
            Some("cap_window_seconds")
        );
    }
}

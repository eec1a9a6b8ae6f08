//! Page layout and the pieces every page uses.

pub mod apps;
pub mod campaigns;
mod compose;
pub mod lookup;
pub mod overview;
pub mod settings;
pub mod test_push;
pub mod triggers;

use crate::api::ApiProblem;
use crate::form::FieldErrors;
use crate::session::{Operator, CSRF_FIELD};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use herald_store::AppSummary;
use maud::{html, Markup, DOCTYPE};

/// The frame around an app's pages.
pub struct Page<'a> {
    pub title: String,
    pub operator: &'a Operator,
    pub app: Option<&'a AppSummary>,
    /// Which navigation entry is current.
    pub section: &'static str,
}

const SECTIONS: [(&str, &str, &str); 7] = [
    ("overview", "", "Overview"),
    ("campaigns", "/campaigns", "Campaigns"),
    ("triggers", "/triggers", "Triggers"),
    ("messages", "/messages", "Messages"),
    ("installations", "/installations", "Installations"),
    ("test-push", "/test-push", "Send test push"),
    ("settings", "/settings", "Keys & credentials"),
];

fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(token) = csrf { meta name="csrf-token" content=(token); }
            title { (title) " · Herald" }
            link rel="stylesheet" href="/dashboard/assets/app.css";
            script src="/dashboard/assets/app.js" defer {}
        }
    }
}

impl Page<'_> {
    pub fn render(&self, body: Markup) -> Html<String> {
        let csrf = &self.operator.csrf;
        Html(
            html! {
                (DOCTYPE)
                html lang="en" {
                    (head(&self.title, Some(csrf)))
                    body {
                        a class="skip" href="#main" { "Skip to content" }
                        header class="top" {
                            a class="brand" href="/dashboard" { "Herald" }
                            @if let Some(app) = self.app {
                                span class="app-name" { (app.name) }
                                a href="/dashboard" class="switch" { "Switch app" }
                            }
                            span class="who" { (self.operator.email) }
                            form method="post" action="/dashboard/logout" class="inline" {
                                (csrf_input(csrf))
                                button type="submit" class="link" { "Log out" }
                            }
                        }
                        @if let Some(app) = self.app {
                            nav aria-label="App" {
                                ul {
                                    @for (key, path, label) in SECTIONS {
                                        li {
                                            @let href = format!("/dashboard/apps/{}{}", app.id, path);
                                            @if key == self.section {
                                                a href=(href) aria-current="page" { (label) }
                                            } @else {
                                                a href=(href) { (label) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        main id="main" {
                            h1 { (self.title) }
                            (body)
                        }
                    }
                }
            }
            .into_string(),
        )
    }
}

/// A page outside the app frame (login, refusals).
pub fn bare(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title, None))
                body { (body) }
            }
        }
        .into_string(),
    )
}

pub fn csrf_input(token: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(token); }
}

pub fn not_found(operator: &Operator, what: &str) -> Response {
    let page = Page {
        title: "Not found".into(),
        operator,
        app: None,
        section: "",
    };
    (
        StatusCode::NOT_FOUND,
        page.render(html! { p { (what) } p { a href="/dashboard" { "Back to the apps" } } }),
    )
        .into_response()
}

pub fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        bare(
            "Unavailable",
            html! { h1 { "Herald cannot answer right now" } p { "PostgreSQL is not reachable. Try again in a moment." } },
        ),
    )
        .into_response()
}

/// An API refusal shown as a notice at the top of a page.
pub fn problem_notice(problem: &ApiProblem) -> Markup {
    html! {
        div class="notice error" role="alert" {
            strong { (problem.title) }
            @if !problem.detail.is_empty() { " — " (problem.detail) }
        }
    }
}

/// The form's own error, and a summary of the fields' errors linking to
/// each field (they may be far down a long form).
pub fn form_errors(errors: &FieldErrors) -> Markup {
    html! {
        @if let Some(message) = &errors.form {
            div class="notice error" role="alert" id="form-error" { (message) }
        }
        @if !errors.by_field.is_empty() {
            div class="error-summary" role="alert" aria-labelledby="error-summary-title" {
                h2 id="error-summary-title" { "Nothing was saved: please correct this" }
                ul {
                    @for (field, message) in &errors.by_field {
                        li { a href={ "#" (field_anchor(field)) } { (message) } }
                    }
                }
            }
        }
    }
}

/// The id a field error's link points at: the input itself, or for a row
/// (`loc-0`, `cond-1`) the row's error line.
fn field_anchor(field: &str) -> String {
    if field.contains('-') {
        format!("error-{field}")
    } else {
        field.to_string()
    }
}

/// The error beside a field, if it has one (`id` is what `aria-describedby` names).
pub fn field_error(errors: &FieldErrors, field: &str) -> Markup {
    html! {
        @if let Some(message) = errors.get(field) {
            p class="field-error" role="alert" id={ "error-" (field) } data-field=(field) { (message) }
        }
    }
}

/// A labelled text input with its error.
pub fn text_field(
    errors: &FieldErrors,
    name: &str,
    label: &str,
    value: &str,
    kind: &str,
    hint: Option<&str>,
) -> Markup {
    let invalid = errors.get(name).is_some();
    html! {
        div class="field" {
            label for=(name) { (label) }
            @if let Some(h) = hint { small class="hint" { (h) } }
            input id=(name) name=(name) type=(kind) value=(value)
                aria-invalid=(if invalid { "true" } else { "false" })
                aria-describedby={ "error-" (name) };
            (field_error(errors, name))
        }
    }
}

pub fn textarea_field(
    errors: &FieldErrors,
    name: &str,
    label: &str,
    value: &str,
    hint: Option<&str>,
) -> Markup {
    let invalid = errors.get(name).is_some();
    html! {
        div class="field" {
            label for=(name) { (label) }
            @if let Some(h) = hint { small class="hint" { (h) } }
            textarea id=(name) name=(name) rows="4"
                aria-invalid=(if invalid { "true" } else { "false" })
                aria-describedby={ "error-" (name) } { (value) }
            (field_error(errors, name))
        }
    }
}

pub fn select_field(
    errors: &FieldErrors,
    name: &str,
    label: &str,
    value: &str,
    options: &[(&str, &str)],
) -> Markup {
    html! {
        div class="field" {
            label for=(name) { (label) }
            select id=(name) name=(name) aria-describedby={ "error-" (name) } {
                @for (v, l) in options {
                    option value=(v) selected[*v == value] { (l) }
                }
            }
            (field_error(errors, name))
        }
    }
}

/// A JSON string field, or "" (API answers are rendered as they come).
pub fn text(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("")
}

/// A JSON number field, or 0.
pub fn n(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// An id typed or clicked by an operator, made one segment of an API path.
pub fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// A count with thousands separators.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Horizontal bars, one per (label, value), scaled to the largest.
pub fn bars(rows: &[(String, i64)], label: &str) -> Markup {
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    html! {
        table class="bars" aria-label=(label) {
            tbody {
                @for (name, value) in rows {
                    tr data-status=(name) {
                        th scope="row" { (name) }
                        td class="bar-cell" {
                            svg class={ "bar " (name) } viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" {
                                rect width=(value * 100 / max) height="10" {}
                            }
                        }
                        td class="num" data-count=(value) { (count(*value)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_in_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(-1500), "-1,500");
    }
}

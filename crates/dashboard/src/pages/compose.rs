//! Form pieces shared by the campaign composer and the trigger editor: the
//! message (default text, one row per language, platform options, previews)
//! and conditions (one row per condition, all of which must hold).

use crate::form::{scalar, split_list, FieldErrors, FormData};
use crate::pages::{field_error, text_field, textarea_field};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

/// Condition operators offered in the rows (the API takes a few more forms
/// that nest; those are written as JSON through the API).
const OPS: [(&str, &str); 15] = [
    ("eq", "equals"),
    ("ne", "does not equal"),
    ("in", "is one of (comma-separated)"),
    ("not_in", "is none of (comma-separated)"),
    ("gt", ">"),
    ("gte", "≥"),
    ("lt", "<"),
    ("lte", "≤"),
    ("version_gt", "version >"),
    ("version_gte", "version ≥"),
    ("version_lt", "version <"),
    ("version_lte", "version ≤"),
    ("version_eq", "version ="),
    ("exists", "is set"),
    ("not_exists", "is not set"),
];

/// The message as the API takes it: `notification` of a push, campaign or rule.
pub fn notification_json(form: &FormData) -> Value {
    let mut n = Map::new();
    for key in ["title", "body"] {
        let v = form.get(key);
        if !v.is_empty() {
            n.insert(key.into(), v.into());
        }
    }
    let mut localizations = Map::new();
    for (lang, (title, body)) in form
        .all("loc_lang")
        .into_iter()
        .zip(form.all("loc_title").into_iter().zip(form.all("loc_body")))
    {
        if lang.is_empty() {
            continue;
        }
        let mut l = Map::new();
        if !title.is_empty() {
            l.insert("title".into(), title.into());
        }
        if !body.is_empty() {
            l.insert("body".into(), body.into());
        }
        localizations.insert(lang.into(), Value::Object(l));
    }
    if !localizations.is_empty() {
        n.insert("localizations".into(), Value::Object(localizations));
    }
    if !form.get("ios_subtitle").is_empty() {
        n.insert("ios".into(), json!({"subtitle": form.get("ios_subtitle")}));
    }
    if !form.get("android_channel_id").is_empty() {
        n.insert(
            "android".into(),
            json!({"channel_id": form.get("android_channel_id")}),
        );
    }
    Value::Object(n)
}

/// Fills the message fields of a form from the API's `notification`.
pub fn notification_form(n: &Value, form: &mut FormData) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    form.set("title", text(&n["title"]));
    form.set("body", text(&n["body"]));
    form.set("ios_subtitle", text(&n["ios"]["subtitle"]));
    form.set("android_channel_id", text(&n["android"]["channel_id"]));
    if let Some(locs) = n["localizations"].as_object() {
        for (lang, l) in locs {
            form.push("loc_lang", lang.clone());
            form.push("loc_title", text(&l["title"]));
            form.push("loc_body", text(&l["body"]));
        }
    }
}

/// Which message field an API field names (`notification.localizations.fr.title`
/// is the `fr` row).
pub fn locate_notification(api_field: &str, form: &FormData) -> Option<String> {
    let rest = api_field.strip_prefix("notification")?;
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    if let Some(loc) = rest.strip_prefix("localizations.") {
        let lang = loc.split('.').next().unwrap_or("");
        return form
            .all("loc_lang")
            .iter()
            .position(|l| *l == lang)
            .map(|i| format!("loc-{i}"))
            .or_else(|| Some("title".into()));
    }
    Some(
        match rest.split('.').next().unwrap_or("") {
            "body" => "body",
            "ios" => "ios_subtitle",
            "android" => "android_channel_id",
            _ => "title",
        }
        .into(),
    )
}

fn loc_row(errors: &FieldErrors, i: Option<usize>, lang: &str, title: &str, body: &str) -> Markup {
    let key = i.map(|i| format!("loc-{i}")).unwrap_or_default();
    html! {
        div class="row loc-row" {
            div class="field" { label { "Language " input name="loc_lang" value=(lang) placeholder="fr" size="6"; } }
            div class="field" { label { "Title " input name="loc_title" value=(title); } }
            div class="field" { label { "Body " input name="loc_body" value=(body); } }
            @if i.is_some() { (field_error(errors, &key)) }
        }
    }
}

/// The message editor: default text, languages, platform options, previews.
pub fn notification_fields(form: &FormData, errors: &FieldErrors, templates: bool) -> Markup {
    let hint = templates.then_some(
        "placeholders: {{event.NAME}} and {{user.NAME}}, with a default after |, e.g. {{event.item|your cart}}",
    );
    let langs = form.all("loc_lang");
    let titles = form.all("loc_title");
    let bodies = form.all("loc_body");
    html! {
        fieldset {
            legend { "Message" }
            (text_field(errors, "title", "Title", form.get("title"), "text", hint))
            (textarea_field(errors, "body", "Body", form.get("body"), None))
            h3 { "Other languages" }
            p class="hint" { "Each installation gets its locale's text: the exact tag (pt-BR), then its language (pt), then the text above." }
            div id="loc-rows" {
                @for i in 0..langs.len().max(1) {
                    (loc_row(errors, Some(i), langs.get(i).copied().unwrap_or(""),
                        titles.get(i).copied().unwrap_or(""), bodies.get(i).copied().unwrap_or("")))
                }
            }
            template id="loc-template" { (loc_row(errors, None, "", "", "")) }
            button type="button" class="secondary" data-repeat="loc-template" data-into="loc-rows" hidden { "Add a language" }
            div class="row" {
                (text_field(errors, "ios_subtitle", "iOS subtitle", form.get("ios_subtitle"), "text", None))
                (text_field(errors, "android_channel_id", "Android channel id", form.get("android_channel_id"), "text", None))
            }
            h3 { "Preview" }
            div class="field" {
                label for="preview-lang" { "Language" }
                select id="preview-lang" { option value="" { "default" } }
            }
            div class="previews" {
                div class="preview ios" aria-label="iOS preview" {
                    div class="p-app" { "iOS · now" }
                    div class="p-title" { (form.get("title")) }
                    @if !form.get("ios_subtitle").is_empty() { div class="p-subtitle" { (form.get("ios_subtitle")) } }
                    div class="p-body" { (form.get("body")) }
                }
                div class="preview android" aria-label="Android preview" {
                    div class="p-app" { "Android · now" }
                    div class="p-title" { (form.get("title")) }
                    div class="p-body" { (form.get("body")) }
                }
            }
        }
    }
}

/// The condition rows as a filter: `{"and": [...]}` of the filled rows, and
/// for each `and[i]` the row it came from.
pub fn conditions_json(form: &FormData) -> (Option<Value>, Vec<usize>) {
    let mut nodes = Vec::new();
    let mut rows = Vec::new();
    let fields = form.all("cond_field");
    let ops = form.all("cond_op");
    let values = form.all("cond_value");
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty() {
            continue;
        }
        let op = ops.get(i).copied().unwrap_or("eq");
        let value = values.get(i).copied().unwrap_or("");
        let node = match op {
            "exists" | "not_exists" => json!({"field": field, "op": op}),
            "in" | "not_in" => json!({"field": field, "op": op,
                "value": split_list(value).iter().map(|v| scalar(v)).collect::<Vec<_>>()}),
            "eq" | "ne" | "gt" | "gte" | "lt" | "lte" => {
                json!({"field": field, "op": op, "value": scalar(value)})
            }
            _ => json!({"field": field, "op": op, "value": value}),
        };
        nodes.push(node);
        rows.push(i);
    }
    let tags = split_list(form.get("tags_any"));
    if !tags.is_empty() {
        nodes.push(json!({"tags_any": tags}));
        rows.push(usize::MAX);
    }
    if nodes.is_empty() {
        (None, rows)
    } else {
        (Some(json!({"and": nodes})), rows)
    }
}

/// Fills condition rows from a filter when it is a flat `and` of simple
/// conditions (as the rows make); false when it is not.
pub fn conditions_form(filter: &Value, form: &mut FormData) -> bool {
    let Some(nodes) = filter["and"].as_array() else {
        return false;
    };
    let simple = nodes
        .iter()
        .all(|n| n["field"].is_string() && n["op"].is_string());
    if !simple {
        return false;
    }
    for n in nodes {
        form.push("cond_field", n["field"].as_str().unwrap_or(""));
        form.push("cond_op", n["op"].as_str().unwrap_or(""));
        let value = match &n["value"] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        form.push("cond_value", value);
    }
    true
}

/// Which row an API field under the filter (`prefix.and[2].value`) names.
pub fn locate_condition(api_field: &str, prefix: &str, rows: &[usize]) -> Option<String> {
    let rest = api_field.strip_prefix(prefix)?;
    let index = rest
        .strip_prefix(".and[")
        .and_then(|r| r.split(']').next())
        .and_then(|i| i.parse::<usize>().ok());
    Some(match index.and_then(|i| rows.get(i)) {
        Some(&usize::MAX) => "tags_any".into(),
        Some(row) => format!("cond-{row}"),
        None => "conditions".into(),
    })
}

fn cond_row(
    errors: &FieldErrors,
    i: Option<usize>,
    field: &str,
    op: &str,
    value: &str,
    fields_hint: &str,
) -> Markup {
    let key = i.map(|i| format!("cond-{i}")).unwrap_or_default();
    html! {
        div class="row cond-row" {
            div class="field" { label { "Field " input name="cond_field" value=(field) placeholder=(fields_hint); } }
            div class="field" {
                label { "Condition "
                    select name="cond_op" {
                        @for (v, l) in OPS { option value=(v) selected[v == op] { (l) } }
                    }
                }
            }
            div class="field" { label { "Value " input name="cond_value" value=(value); } }
            @if i.is_some() { (field_error(errors, &key)) }
        }
    }
}

/// Condition rows (all must hold), with an "add" button.
pub fn condition_fields(
    form: &FormData,
    errors: &FieldErrors,
    fields_hint: &str,
    with_tags: bool,
) -> Markup {
    let fields = form.all("cond_field");
    let ops = form.all("cond_op");
    let values = form.all("cond_value");
    html! {
        div id="cond-rows" {
            @for i in 0..fields.len().max(1) {
                (cond_row(errors, Some(i), fields.get(i).copied().unwrap_or(""),
                    ops.get(i).copied().unwrap_or("eq"), values.get(i).copied().unwrap_or(""), fields_hint))
            }
        }
        template id="cond-template" { (cond_row(errors, None, "", "eq", "", fields_hint)) }
        button type="button" class="secondary" data-repeat="cond-template" data-into="cond-rows" hidden { "Add a condition" }
        (field_error(errors, "conditions"))
        @if with_tags {
            (text_field(errors, "tags_any", "Has any of these tags", form.get("tags_any"), "text", Some("comma-separated; empty: no tag condition")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_the_api_filter_and_errors_find_their_row() {
        let form = FormData::parse(
            b"cond_field=&cond_op=eq&cond_value=&cond_field=attributes.plan&cond_op=in&cond_value=gold%2C+silver\
              &cond_field=app_version&cond_op=version_gte&cond_value=3.0&tags_any=vip",
        );
        let (filter, rows) = conditions_json(&form);
        assert_eq!(
            filter.unwrap(),
            json!({"and": [
                {"field": "attributes.plan", "op": "in", "value": ["gold", "silver"]},
                {"field": "app_version", "op": "version_gte", "value": "3.0"},
                {"tags_any": ["vip"]},
            ]})
        );
        assert_eq!(
            locate_condition("audience.filter.and[1].value", "audience.filter", &rows).as_deref(),
            Some("cond-2")
        );
        assert_eq!(
            locate_condition("audience.filter.and[2]", "audience.filter", &rows).as_deref(),
            Some("tags_any")
        );
        assert_eq!(locate_condition("name", "audience.filter", &rows), None);
    }

    #[test]
    fn a_filter_made_by_the_rows_reads_back_into_rows() {
        let filter = json!({"and": [{"field": "attributes.total", "op": "gte", "value": 20}]});
        let mut form = FormData::default();
        assert!(conditions_form(&filter, &mut form));
        assert_eq!(form.all("cond_value"), vec!["20"]);
        assert!(!conditions_form(
            &json!({"or": []}),
            &mut FormData::default()
        ));
    }

    #[test]
    fn languages_become_localizations_and_their_errors_find_their_row() {
        let form = FormData::parse(b"title=Hi&body=There&loc_lang=fr&loc_title=Salut&loc_body=&loc_lang=&loc_title=&loc_body=");
        assert_eq!(
            notification_json(&form),
            json!({"title": "Hi", "body": "There", "localizations": {"fr": {"title": "Salut"}}})
        );
        assert_eq!(
            locate_notification("notification.localizations.fr.title", &form).as_deref(),
            Some("loc-0")
        );
        assert_eq!(
            locate_notification("notification.body", &form).as_deref(),
            Some("body")
        );
        assert_eq!(locate_notification("name", &form), None);
    }
}

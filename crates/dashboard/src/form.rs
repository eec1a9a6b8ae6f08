//! Form bodies (`application/x-www-form-urlencoded`, repeated names kept in
//! order) and the errors shown beside their fields.

use crate::api::ApiProblem;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct FormData {
    pairs: Vec<(String, String)>,
}

impl FormData {
    pub fn parse(body: &[u8]) -> Self {
        Self {
            pairs: url::form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    /// The first value of `name`, trimmed; "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    }

    /// Every value of `name`, in order, trimmed.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .collect()
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.pairs.retain(|(k, _)| k != name);
        self.pairs.push((name.to_string(), value.into()));
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.pairs.push((name.to_string(), value.into()));
    }
}

/// Errors of one form: by form field, plus one for the whole form.
#[derive(Debug, Clone, Default)]
pub struct FieldErrors {
    pub by_field: BTreeMap<String, String>,
    pub form: Option<String>,
}

impl FieldErrors {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.by_field.get(field).map(String::as_str)
    }

    /// Places the API's problem beside the form field `locate` maps its
    /// `field` to; at the top of the form when it maps to none.
    pub fn from_problem(problem: &ApiProblem, locate: impl Fn(&str) -> Option<String>) -> Self {
        let mut errors = Self::default();
        match problem.field.as_deref().and_then(locate) {
            Some(field) => {
                let detail = match &problem.field {
                    Some(api_field) if !problem.message().contains(api_field.as_str()) => {
                        format!("{} ({api_field})", problem.message())
                    }
                    _ => problem.message(),
                };
                errors.by_field.insert(field, detail);
            }
            None => errors.form = Some(problem.message()),
        }
        errors
    }
}

/// Splits a list typed into one box: commas or new lines, blanks dropped.
pub fn split_list(text: &str) -> Vec<String> {
    text.split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A number where the operator typed one; the text itself otherwise, so
/// that the API's own check names the field.
pub fn number_or_text(text: &str) -> serde_json::Value {
    if let Ok(n) = text.parse::<i64>() {
        return n.into();
    }
    if let Ok(f) = text.parse::<f64>() {
        if f.is_finite() {
            return f.into();
        }
    }
    text.into()
}

/// A scalar typed by an operator: numbers and booleans as such, the rest as
/// text.
pub fn scalar(text: &str) -> serde_json::Value {
    match text {
        "true" => true.into(),
        "false" => false.into(),
        _ => match number_or_text(text) {
            serde_json::Value::String(_) => text.into(),
            n => n,
        },
    }
}

/// `<input type="datetime-local">` gives `2026-12-01T09:00` (seconds
/// optional); the API wants RFC 3339. Read as UTC; anything else is passed
/// on as typed for the API to refuse by name.
pub fn utc_from_local_input(text: &str) -> String {
    match text.len() {
        16 => format!("{text}:00Z"),
        19 => format!("{text}Z"),
        _ => text.to_string(),
    }
}

/// The wall-clock form (`YYYY-MM-DDTHH:MM:SS`) a local-time schedule takes.
pub fn wall_clock(text: &str) -> String {
    if text.len() == 16 {
        format!("{text}:00")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_keep_their_order() {
        let f = FormData::parse(b"lang=fr&lang=de&title=+Hi+&lang=");
        assert_eq!(f.all("lang"), vec!["fr", "de", ""]);
        assert_eq!(f.get("title"), "Hi");
        assert_eq!(f.get("missing"), "");
    }

    #[test]
    fn a_problem_lands_beside_its_field_or_on_top() {
        let p = ApiProblem {
            status: 400,
            title: "A request field is invalid".into(),
            detail: "1 to 200 characters".into(),
            field: Some("name".into()),
        };
        let beside = FieldErrors::from_problem(&p, |f| (f == "name").then(|| "name".to_string()));
        assert_eq!(beside.get("name"), Some("1 to 200 characters (name)"));
        let on_top = FieldErrors::from_problem(&p, |_| None);
        assert_eq!(on_top.form.as_deref(), Some("1 to 200 characters"));
    }

    #[test]
    fn typed_values_become_json_the_api_can_judge() {
        assert_eq!(number_or_text("5000"), serde_json::json!(5000));
        assert_eq!(number_or_text("fast"), serde_json::json!("fast"));
        assert_eq!(scalar("true"), serde_json::json!(true));
        assert_eq!(scalar("gold"), serde_json::json!("gold"));
        assert_eq!(
            utc_from_local_input("2026-12-01T09:00"),
            "2026-12-01T09:00:00Z"
        );
        assert_eq!(wall_clock("2026-12-01T09:00"), "2026-12-01T09:00:00");
        assert_eq!(split_list("a, b\nc,,"), vec!["a", "b", "c"]);
    }
}

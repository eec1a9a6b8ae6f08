//! Message templates for trigger campaigns: `Hi {{user.first_name|there}},
//! your {{event.item}} is waiting`. Placeholders read the triggering event's
//! attributes (`event.NAME`) or the user's installation attributes
//! (`user.NAME`); `|text` is the default when the value is missing (without
//! one, a missing value renders as nothing). Templates are parsed when a rule
//! is saved, so a broken one is refused then, not at send time.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Slot {
        source: Source,
        name: String,
        default: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Event,
    User,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What placeholders read.
#[derive(Debug, Clone, Copy)]
pub struct TemplateContext<'a> {
    pub event: &'a Map<String, Value>,
    pub user: &'a Map<String, Value>,
}

impl Template {
    /// Parses `text`; the error says what is wrong and where (byte offset).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at character {} is never closed with `}}}}`",
                    offset + open
                )
            })?;
            let inner = after[..close].trim();
            let (path, default) = match inner.split_once('|') {
                Some((p, d)) => (p.trim(), Some(d.trim().to_string())),
                None => (inner, None),
            };
            let (source, name) = match path.split_once('.') {
                Some(("event", n)) => (Source::Event, n),
                Some(("user", n)) => (Source::User, n),
                _ => {
                    return Err(format!(
                        "`{{{{{inner}}}}}`: a placeholder is `event.NAME` or `user.NAME`, optionally with `|default`"
                    ))
                }
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "`{{{{{inner}}}}}`: `{name}` is not an attribute name (letters, digits, `_`, `-`)"
                ));
            }
            parts.push(Part::Slot {
                source,
                name: name.to_string(),
                default,
            });
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if rest.contains("}}") {
            return Err("`}}` without an opening `{{`".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    pub fn render(&self, ctx: TemplateContext<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Slot {
                    source,
                    name,
                    default,
                } => {
                    let map = match source {
                        Source::Event => ctx.event,
                        Source::User => ctx.user,
                    };
                    match map.get(name) {
                        Some(Value::String(s)) if !s.is_empty() => out.push_str(s),
                        Some(Value::Number(n)) => out.push_str(&n.to_string()),
                        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
                        _ => out.push_str(default.as_deref().unwrap_or_default()),
                    }
                }
            }
        }
        out
    }
}

/// Renders a string field in place, if it holds a template.
pub fn render_in_place(text: &mut String, ctx: TemplateContext<'_>) {
    if let Ok(t) = Template::parse(text) {
        *text = t.render(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx_maps() -> (Map<String, Value>, Map<String, Value>) {
        let event = json!({"item": "red shoes", "count": 2, "empty": ""});
        let user = json!({"first_name": "Ada"});
        (
            event.as_object().cloned().unwrap_or_default(),
            user.as_object().cloned().unwrap_or_default(),
        )
    }

    #[test]
    fn placeholders_and_defaults() {
        let (event, user) = ctx_maps();
        let ctx = TemplateContext {
            event: &event,
            user: &user,
        };
        let t = Template::parse("Hi {{user.first_name|there}}, {{ event.count }} × {{event.item}}")
            .unwrap();
        assert_eq!(t.render(ctx), "Hi Ada, 2 × red shoes");
        let t = Template::parse("{{user.nickname|friend}}/{{event.empty|none}}/{{event.missing}}.")
            .unwrap();
        assert_eq!(t.render(ctx), "friend/none/.");
        assert_eq!(Template::parse("plain").unwrap().render(ctx), "plain");
    }

    #[test]
    fn broken_templates_are_refused_with_a_reason() {
        assert!(Template::parse("Hi {{user.name")
            .unwrap_err()
            .contains("never closed"));
        assert!(Template::parse("{{order.id}}")
            .unwrap_err()
            .contains("event.NAME"));
        assert!(Template::parse("{{event.}}")
            .unwrap_err()
            .contains("not an attribute name"));
        assert!(Template::parse("{{event.a b}}")
            .unwrap_err()
            .contains("not an attribute name"));
        assert!(Template::parse("oops }}")
            .unwrap_err()
            .contains("without an opening"));
    }
}

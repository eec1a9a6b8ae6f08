//! Request bodies: strict JSON, with errors that name the field at fault.

use crate::problem::Problem;
use axum::body::Bytes;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses a JSON body strictly; errors name the field at fault.
pub(crate) fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Value, T), Problem> {
    let value = parse_json(headers, body)?;
    let parsed = from_value(&value)?;
    Ok((value, parsed))
}

/// The body as JSON, whatever its shape (for bodies of more than one form).
pub(crate) fn parse_json(headers: &HeaderMap, body: &Bytes) -> Result<Value, Problem> {
    if let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err(Problem::unsupported_media_type());
        }
    }
    let UniqueMembers(value) =
        serde_json::from_slice(body).map_err(|e| Problem::malformed_json(e.to_string()))?;
    refuse_nul(&value, &mut String::new())?;
    Ok(value)
}

/// JSON whose objects name each member once (RFC 7493, I-JSON): with a name
/// twice, which one counts is up to the parser, and a request must mean one
/// thing to Herald and to whoever checks it on the way.
struct UniqueMembers(Value);

impl<'de> serde::Deserialize<'de> for UniqueMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueVisitor)
            .map(UniqueMembers)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    /// A number with no fraction is an integer, whatever its spelling
    /// (`5.0`, `5e0`): JSON Schema says so, and the fields that take whole
    /// numbers take it.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 {
            return Ok(Value::from(v as i64));
        }
        if v.fract() == 0.0 && v >= 0.0 && v < u64::MAX as f64 {
            return Ok(Value::from(v as u64));
        }
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueMembers(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let UniqueMembers(value) = map.next_value()?;
            if members.contains_key(&name) {
                return Err(serde::de::Error::custom(format!(
                    "the member `{name}` appears twice in one object"
                )));
            }
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

/// PostgreSQL's text cannot hold U+0000, and no field of Herald's means it:
/// a string (or an object key) with one is refused, the field named, before
/// anything is stored.
fn refuse_nul(value: &Value, path: &mut String) -> Result<(), Problem> {
    let refused = |path: &str| {
        let field = if path.is_empty() { "body" } else { path };
        Problem::invalid_field(field, "must not contain the NUL character (U+0000)")
    };
    match value {
        Value::String(s) if s.contains('\0') => Err(refused(path)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                refuse_nul(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                if key.contains('\0') {
                    return Err(refused(path));
                }
                refuse_nul(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A parsed body into its type; errors name the field at fault.
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        Problem::invalid_field(field, e.inner().to_string())
    })
}

/// A filter error comes out of serde as field `audience.filter`, detail
/// `filter.and[0].op: ...`: name the node itself (`audience.filter.and[0].op`).
pub(crate) fn name_filter_node(mut p: Problem, filter_field: &str) -> Problem {
    if p.field.as_deref() == Some(filter_field) {
        if let Some((path, detail)) = p.detail.split_once(": ") {
            if let Some(rest) = path.strip_prefix("filter") {
                p.field = Some(format!("{filter_field}{rest}"));
                p.detail = detail.to_string();
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<Value, Problem> {
        parse_json(&HeaderMap::new(), &Bytes::from(text.to_owned()))
    }

    #[test]
    fn a_member_named_twice_is_refused() {
        assert!(json(r#"{"title":"a","title":"b"}"#).is_err());
        assert!(json(r#"{"to":{"tokens":[{"token":"a","token":"b"}]}}"#).is_err());
        let same_name_apart = json(r#"{"a":{"x":1},"b":{"x":2}}"#).expect("valid");
        assert_eq!(same_name_apart["b"]["x"], 2);
        let values = json(r#"[1,-2,2.5,18446744073709551615,null,true,"s",{},161929.0,-3e2]"#)
            .expect("valid");
        assert_eq!(
            values,
            serde_json::json!([
                1,
                -2,
                2.5,
                18446744073709551615u64,
                null,
                true,
                "s",
                {},
                161929,
                -300
            ])
        );
    }

    #[test]
    fn a_nul_anywhere_is_refused_with_its_field_named() {
        let cases = [
            (
                r#"{"notification": {"title": "a\u0000b"}}"#,
                "notification.title",
            ),
            (
                r#"{"to": {"custom_ids": ["ok", "x\u0000"]}}"#,
                "to.custom_ids[1]",
            ),
            (r#"{"data": {"k\u0000": "v"}}"#, "data.k\u{0}"),
            (r#""\u0000""#, "body"),
        ];
        for (json, field) in cases {
            let value: Value = serde_json::from_str(json).expect("json");
            let p = refuse_nul(&value, &mut String::new()).expect_err(json);
            assert_eq!(p.field.as_deref(), Some(field), "{json}");
        }
        let fine: Value =
            serde_json::from_str(r#"{"a": ["b", {"c": "d\n"}], "e": 1}"#).expect("json");
        assert!(refuse_nul(&fine, &mut String::new()).is_ok());
    }
}

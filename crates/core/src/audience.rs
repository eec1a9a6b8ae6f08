//! Campaign audiences: who is in, decided here without I/O.
//!
//! The store pages through an app's reachable installations (a token, opted
//! in, not invalidated) and, for list audiences, only those on the list; every
//! other condition is a [`Filter`] evaluated by [`Filter::matches`], so the
//! estimate, the scheduler and the tests all apply the same rules.

use crate::job::Platform;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A filter nests at most this deep and has at most this many nodes: enough
/// for any segment a person builds, and a bound on the work one request causes.
pub const MAX_FILTER_DEPTH: usize = 12;
pub const MAX_FILTER_NODES: usize = 500;
/// Ids given inline in a campaign; longer lists are uploaded.
pub const MAX_INLINE_IDS: usize = 10_000;

/// Who a campaign goes to, before filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AudienceKind {
    /// Every reachable installation of the app.
    All,
    /// The installations on the campaign's list of install ids.
    InstallIds,
    /// Every installation of the users on the campaign's list of custom ids.
    CustomIds,
}

impl AudienceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AudienceKind::All => "all",
            AudienceKind::InstallIds => "install_ids",
            AudienceKind::CustomIds => "custom_ids",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(AudienceKind::All),
            "install_ids" => Some(AudienceKind::InstallIds),
            "custom_ids" => Some(AudienceKind::CustomIds),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    #[serde(rename = "type")]
    pub kind: AudienceKind,
    /// For list audiences: the ids, inline (up to 10,000). Longer lists are
    /// uploaded with `PUT /v1/campaigns/{id}/audience/ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Filter>,
}

impl Audience {
    pub fn all() -> Self {
        Self {
            kind: AudienceKind::All,
            ids: None,
            filter: None,
        }
    }

    /// Checks what serde cannot: list ids against the kind, and their shape.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let Some(ids) = &self.ids else {
            return Ok(());
        };
        if self.kind == AudienceKind::All {
            return Err((
                "audience.ids".into(),
                "ids are only for the `install_ids` and `custom_ids` audiences".into(),
            ));
        }
        if ids.len() > MAX_INLINE_IDS {
            return Err((
                "audience.ids".into(),
                format!(
                    "at most {MAX_INLINE_IDS} ids inline; upload longer lists with PUT /v1/campaigns/{{id}}/audience/ids"
                ),
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            validate_list_id(id).map_err(|d| (format!("audience.ids[{i}]"), d))?;
        }
        Ok(())
    }
}

/// An install id or custom id on an audience list.
pub fn validate_list_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Err("1 to 128 printable characters".into())
    } else {
        Ok(())
    }
}

/// What a filter sees of an installation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstallationFacts {
    pub platform: Option<Platform>,
    pub custom_id: Option<String>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    pub app_version: Option<String>,
    pub tags: Vec<String>,
    pub attributes: Map<String, Value>,
}

/// The installation field a condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Platform,
    CustomId,
    Locale,
    /// The language part of the locale (`pt` for `pt-BR`).
    Language,
    TimeZone,
    AppVersion,
    Attribute(String),
}

impl Field {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "platform" => Field::Platform,
            "custom_id" => Field::CustomId,
            "locale" => Field::Locale,
            "language" => Field::Language,
            "time_zone" => Field::TimeZone,
            "app_version" => Field::AppVersion,
            other => {
                let name = other.strip_prefix("attributes.")?;
                if name.is_empty() {
                    return None;
                }
                Field::Attribute(name.to_string())
            }
        })
    }

    fn name(&self) -> String {
        match self {
            Field::Platform => "platform".into(),
            Field::CustomId => "custom_id".into(),
            Field::Locale => "locale".into(),
            Field::Language => "language".into(),
            Field::TimeZone => "time_zone".into(),
            Field::AppVersion => "app_version".into(),
            Field::Attribute(a) => format!("attributes.{a}"),
        }
    }

    fn read(&self, facts: &InstallationFacts) -> Option<Value> {
        let s = |v: &Option<String>| v.clone().map(Value::String);
        match self {
            Field::Platform => facts.platform.map(|p| Value::String(p.as_str().into())),
            Field::CustomId => s(&facts.custom_id),
            Field::Locale => s(&facts.locale),
            Field::Language => facts.locale.as_ref().map(|l| {
                Value::String(
                    l.split(['-', '_'])
                        .next()
                        .unwrap_or_default()
                        .to_ascii_lowercase(),
                )
            }),
            Field::TimeZone => s(&facts.time_zone),
            Field::AppVersion => s(&facts.app_version),
            Field::Attribute(a) => facts.attributes.get(a).filter(|v| !v.is_null()).cloned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Gt,
    Gte,
    Lt,
    Lte,
    VersionEq,
    VersionGt,
    VersionGte,
    VersionLt,
    VersionLte,
    Exists,
    NotExists,
}

const OPS: &[(&str, Op)] = &[
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("in", Op::In),
    ("not_in", Op::NotIn),
    ("gt", Op::Gt),
    ("gte", Op::Gte),
    ("lt", Op::Lt),
    ("lte", Op::Lte),
    ("version_eq", Op::VersionEq),
    ("version_gt", Op::VersionGt),
    ("version_gte", Op::VersionGte),
    ("version_lt", Op::VersionLt),
    ("version_lte", Op::VersionLte),
    ("exists", Op::Exists),
    ("not_exists", Op::NotExists),
];

impl Op {
    fn name(&self) -> &'static str {
        OPS.iter()
            .find(|(_, o)| o == self)
            .map(|(n, _)| *n)
            .unwrap_or("eq")
    }
}

/// An audience condition. Its JSON form:
///
/// - `{"and": [F, ...]}`, `{"or": [F, ...]}`, `{"not": F}`
/// - `{"tags_any": ["a", "b"]}`, `{"tags_all": ["a", "b"]}`
/// - `{"field": "attributes.plan", "op": "eq", "value": "pro"}` where `field`
///   is `platform`, `custom_id`, `locale`, `language`, `time_zone`,
///   `app_version` or `attributes.NAME`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    TagsAny(Vec<String>),
    TagsAll(Vec<String>),
    Condition { field: Field, op: Op, value: Value },
}

/// Where in the filter a problem is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct FilterError {
    pub path: String,
    pub detail: String,
}

fn err(path: &str, detail: impl Into<String>) -> FilterError {
    FilterError {
        path: path.to_string(),
        detail: detail.into(),
    }
}

impl Filter {
    /// Parses the JSON form; errors name the offending node (`and[1].op`).
    pub fn from_value(value: &Value) -> Result<Self, FilterError> {
        let mut nodes = 0;
        parse(value, "filter", 0, &mut nodes)
    }

    pub fn to_value(&self) -> Value {
        let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        let mut m = Map::new();
        match self {
            Filter::And(fs) => {
                m.insert("and".into(), fs.iter().map(Filter::to_value).collect());
            }
            Filter::Or(fs) => {
                m.insert("or".into(), fs.iter().map(Filter::to_value).collect());
            }
            Filter::Not(f) => {
                m.insert("not".into(), f.to_value());
            }
            Filter::TagsAny(t) => {
                m.insert("tags_any".into(), strings(t));
            }
            Filter::TagsAll(t) => {
                m.insert("tags_all".into(), strings(t));
            }
            Filter::Condition { field, op, value } => {
                m.insert("field".into(), Value::String(field.name()));
                m.insert("op".into(), Value::String(op.name().into()));
                if !matches!(op, Op::Exists | Op::NotExists) {
                    m.insert("value".into(), value.clone());
                }
            }
        }
        Value::Object(m)
    }

    pub fn matches(&self, facts: &InstallationFacts) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(facts)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(facts)),
            Filter::Not(f) => !f.matches(facts),
            Filter::TagsAny(tags) => tags.iter().any(|t| facts.tags.contains(t)),
            Filter::TagsAll(tags) => tags.iter().all(|t| facts.tags.contains(t)),
            Filter::Condition { field, op, value } => {
                let actual = field.read(facts);
                evaluate(*op, actual.as_ref(), value)
            }
        }
    }
}

fn evaluate(op: Op, actual: Option<&Value>, expected: &Value) -> bool {
    match op {
        Op::Exists => actual.is_some(),
        Op::NotExists => actual.is_none(),
        Op::Eq => actual.is_some_and(|a| same(a, expected)),
        // "is not X" includes installations without the field, as people expect.
        Op::Ne => !actual.is_some_and(|a| same(a, expected)),
        Op::In => actual.is_some_and(|a| one_of(a, expected)),
        Op::NotIn => !actual.is_some_and(|a| one_of(a, expected)),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let (Some(a), Some(e)) = (actual.and_then(number), number(expected)) else {
                return false;
            };
            a.partial_cmp(&e).is_some_and(|o| ordering_holds(op, o))
        }
        Op::VersionEq | Op::VersionGt | Op::VersionGte | Op::VersionLt | Op::VersionLte => {
            let (Some(a), Some(e)) = (
                actual.and_then(Value::as_str).and_then(parse_version),
                expected.as_str().and_then(parse_version),
            ) else {
                return false;
            };
            ordering_holds(op, compare_versions(&a, &e))
        }
    }
}

fn ordering_holds(op: Op, o: Ordering) -> bool {
    match op {
        Op::Gt | Op::VersionGt => o == Ordering::Greater,
        Op::Gte | Op::VersionGte => o != Ordering::Less,
        Op::Lt | Op::VersionLt => o == Ordering::Less,
        Op::Lte | Op::VersionLte => o != Ordering::Greater,
        Op::VersionEq => o == Ordering::Equal,
        _ => false,
    }
}

/// Numbers compare by value (`1` equals `1.0`); everything else exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (number_only(a), number_only(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn one_of(a: &Value, list: &Value) -> bool {
    list.as_array()
        .is_some_and(|items| items.iter().any(|i| same(a, i)))
}

fn number_only(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// A number, or a string that spells one (attributes set from strings).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `2.10.1`, `v3`, `4.0.0-beta2` → numeric components; a pre-release suffix
/// is ignored. Not a version → None.
pub fn parse_version(s: &str) -> Option<Vec<u64>> {
    let s = s.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    let core = s.split(['-', '+', ' ']).next().unwrap_or_default();
    if core.is_empty() {
        return None;
    }
    core.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// Missing components count as zero: `2.1` equals `2.1.0`.
pub fn compare_versions(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        match x.cmp(&y) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

fn parse(
    value: &Value,
    path: &str,
    depth: usize,
    nodes: &mut usize,
) -> Result<Filter, FilterError> {
    *nodes += 1;
    if depth > MAX_FILTER_DEPTH {
        return Err(err(
            path,
            format!("nested deeper than {MAX_FILTER_DEPTH} levels"),
        ));
    }
    if *nodes > MAX_FILTER_NODES {
        return Err(err(
            path,
            format!("more than {MAX_FILTER_NODES} conditions"),
        ));
    }
    let Some(obj) = value.as_object() else {
        return Err(err(
            path,
            "expected an object such as {\"field\": ..., \"op\": ..., \"value\": ...}",
        ));
    };
    let list = |key: &str, items: &Value, nodes: &mut usize| -> Result<Vec<Filter>, FilterError> {
        let p = format!("{path}.{key}");
        let arr = items
            .as_array()
            .ok_or_else(|| err(&p, "expected a list of conditions"))?;
        if arr.is_empty() {
            return Err(err(&p, "expected at least one condition"));
        }
        arr.iter()
            .enumerate()
            .map(|(i, v)| parse(v, &format!("{p}[{i}]"), depth + 1, nodes))
            .collect()
    };
    let tags = |key: &str, items: &Value| -> Result<Vec<String>, FilterError> {
        let p = format!("{path}.{key}");
        let arr = items
            .as_array()
            .ok_or_else(|| err(&p, "expected a list of tags"))?;
        if arr.is_empty() {
            return Err(err(&p, "expected at least one tag"));
        }
        arr.iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_str()
                    .filter(|s| !s.is_empty() && s.len() <= 128)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        err(
                            &format!("{p}[{i}]"),
                            "a tag is a string of 1 to 128 characters",
                        )
                    })
            })
            .collect()
    };
    let only = |key: &str| -> Result<(), FilterError> {
        match obj.keys().find(|k| k.as_str() != key) {
            Some(extra) => Err(err(
                path,
                format!("`{key}` cannot be combined with `{extra}` in one node"),
            )),
            None => Ok(()),
        }
    };
    if let Some(v) = obj.get("and") {
        only("and")?;
        return Ok(Filter::And(list("and", v, nodes)?));
    }
    if let Some(v) = obj.get("or") {
        only("or")?;
        return Ok(Filter::Or(list("or", v, nodes)?));
    }
    if let Some(v) = obj.get("not") {
        only("not")?;
        return Ok(Filter::Not(Box::new(parse(
            v,
            &format!("{path}.not"),
            depth + 1,
            nodes,
        )?)));
    }
    if let Some(v) = obj.get("tags_any") {
        only("tags_any")?;
        return Ok(Filter::TagsAny(tags("tags_any", v)?));
    }
    if let Some(v) = obj.get("tags_all") {
        only("tags_all")?;
        return Ok(Filter::TagsAll(tags("tags_all", v)?));
    }
    parse_condition(obj, path)
}

fn parse_condition(obj: &Map<String, Value>, path: &str) -> Result<Filter, FilterError> {
    if let Some(extra) = obj
        .keys()
        .find(|k| !["field", "op", "value"].contains(&k.as_str()))
    {
        return Err(err(
            &format!("{path}.{extra}"),
            "unknown key; a node is and, or, not, tags_any, tags_all, or field/op/value",
        ));
    }
    let field_path = format!("{path}.field");
    let field = obj
        .get("field")
        .ok_or_else(|| err(&field_path, "missing"))?
        .as_str()
        .ok_or_else(|| err(&field_path, "expected a string"))?;
    let field = Field::parse(field).ok_or_else(|| {
        err(
            &field_path,
            format!("unknown field `{field}`; use platform, custom_id, locale, language, time_zone, app_version or attributes.NAME"),
        )
    })?;
    let op_path = format!("{path}.op");
    let op_name = obj
        .get("op")
        .ok_or_else(|| err(&op_path, "missing"))?
        .as_str()
        .ok_or_else(|| err(&op_path, "expected a string"))?;
    let op = OPS
        .iter()
        .find(|(n, _)| *n == op_name)
        .map(|(_, o)| *o)
        .ok_or_else(|| {
            let names: Vec<&str> = OPS.iter().map(|(n, _)| *n).collect();
            err(
                &op_path,
                format!("unknown operator `{op_name}`; one of {}", names.join(", ")),
            )
        })?;
    let value_path = format!("{path}.value");
    let value = obj.get("value").cloned();
    let value = match op {
        Op::Exists | Op::NotExists => {
            if value.is_some() {
                return Err(err(&value_path, format!("`{op_name}` takes no value")));
            }
            Value::Null
        }
        Op::Eq | Op::Ne => {
            let v = value.ok_or_else(|| err(&value_path, "missing"))?;
            if !is_scalar(&v) {
                return Err(err(&value_path, "expected a string, number or boolean"));
            }
            v
        }
        Op::In | Op::NotIn => {
            let v = value.ok_or_else(|| err(&value_path, "missing"))?;
            let ok = v
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.len() <= 1000 && a.iter().all(is_scalar));
            if !ok {
                return Err(err(
                    &value_path,
                    "expected a list of 1 to 1000 strings, numbers or booleans",
                ));
            }
            v
        }
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let v = value.ok_or_else(|| err(&value_path, "missing"))?;
            if !v.is_number() {
                return Err(err(
                    &value_path,
                    format!("`{op_name}` compares numbers; expected a number"),
                ));
            }
            v
        }
        Op::VersionEq | Op::VersionGt | Op::VersionGte | Op::VersionLt | Op::VersionLte => {
            let v = value.ok_or_else(|| err(&value_path, "missing"))?;
            if v.as_str().and_then(parse_version).is_none() {
                return Err(err(&value_path, "expected a version such as \"2.10.1\""));
            }
            v
        }
    };
    Ok(Filter::Condition { field, op, value })
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Filter::from_value(&v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> InstallationFacts {
        InstallationFacts {
            platform: Some(Platform::Ios),
            custom_id: Some("user-1".into()),
            locale: Some("pt-BR".into()),
            time_zone: Some("America/Sao_Paulo".into()),
            app_version: Some("2.10.1".into()),
            tags: vec!["vip".into(), "beta".into()],
            attributes: json!({"plan": "pro", "age": 31, "score": "7.5", "trial": false})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn check(filter: Value) -> bool {
        Filter::from_value(&filter).unwrap().matches(&facts())
    }

    #[test]
    fn eq_and_ne() {
        assert!(check(
            json!({"field": "attributes.plan", "op": "eq", "value": "pro"})
        ));
        assert!(!check(
            json!({"field": "attributes.plan", "op": "eq", "value": "free"})
        ));
        assert!(check(
            json!({"field": "attributes.age", "op": "eq", "value": 31.0})
        ));
        assert!(check(
            json!({"field": "attributes.trial", "op": "eq", "value": false})
        ));
        assert!(check(
            json!({"field": "platform", "op": "eq", "value": "ios"})
        ));
        assert!(check(
            json!({"field": "attributes.plan", "op": "ne", "value": "free"})
        ));
        assert!(!check(
            json!({"field": "attributes.plan", "op": "ne", "value": "pro"})
        ));
        // Without the attribute, "is not" holds and "is" does not.
        assert!(check(
            json!({"field": "attributes.city", "op": "ne", "value": "Lyon"})
        ));
        assert!(!check(
            json!({"field": "attributes.city", "op": "eq", "value": "Lyon"})
        ));
    }

    #[test]
    fn in_and_not_in() {
        assert!(check(
            json!({"field": "language", "op": "in", "value": ["fr", "pt"]})
        ));
        assert!(!check(
            json!({"field": "language", "op": "in", "value": ["fr", "de"]})
        ));
        assert!(check(
            json!({"field": "attributes.age", "op": "in", "value": [30, 31]})
        ));
        assert!(check(
            json!({"field": "locale", "op": "not_in", "value": ["pt-PT"]})
        ));
        assert!(!check(
            json!({"field": "custom_id", "op": "not_in", "value": ["user-1"]})
        ));
    }

    #[test]
    fn numeric_comparisons() {
        assert!(check(
            json!({"field": "attributes.age", "op": "gt", "value": 30})
        ));
        assert!(!check(
            json!({"field": "attributes.age", "op": "gt", "value": 31})
        ));
        assert!(check(
            json!({"field": "attributes.age", "op": "gte", "value": 31})
        ));
        assert!(check(
            json!({"field": "attributes.age", "op": "lt", "value": 31.5})
        ));
        assert!(!check(
            json!({"field": "attributes.age", "op": "lt", "value": 31})
        ));
        assert!(check(
            json!({"field": "attributes.age", "op": "lte", "value": 31})
        ));
        // A numeric string compares as its number; a non-number never matches.
        assert!(check(
            json!({"field": "attributes.score", "op": "gt", "value": 7})
        ));
        assert!(!check(
            json!({"field": "attributes.plan", "op": "gt", "value": 0})
        ));
        assert!(!check(
            json!({"field": "attributes.missing", "op": "lt", "value": 100})
        ));
    }

    #[test]
    fn version_comparisons() {
        assert!(check(
            json!({"field": "app_version", "op": "version_gt", "value": "2.9"})
        ));
        assert!(!check(
            json!({"field": "app_version", "op": "version_gt", "value": "2.10.1"})
        ));
        assert!(check(
            json!({"field": "app_version", "op": "version_gte", "value": "2.10.1"})
        ));
        assert!(check(
            json!({"field": "app_version", "op": "version_lt", "value": "2.11"})
        ));
        assert!(check(
            json!({"field": "app_version", "op": "version_lte", "value": "v2.10.1"})
        ));
        assert!(check(
            json!({"field": "app_version", "op": "version_eq", "value": "2.10.1-rc1"})
        ));
        assert!(!check(
            json!({"field": "app_version", "op": "version_eq", "value": "2.10"})
        ));
        assert_eq!(compare_versions(&[2, 1], &[2, 1, 0]), Ordering::Equal);
        assert_eq!(parse_version("abc"), None);
    }

    #[test]
    fn exists_and_not_exists() {
        assert!(check(json!({"field": "attributes.plan", "op": "exists"})));
        assert!(!check(json!({"field": "attributes.city", "op": "exists"})));
        assert!(check(
            json!({"field": "attributes.city", "op": "not_exists"})
        ));
        assert!(check(json!({"field": "time_zone", "op": "exists"})));
    }

    #[test]
    fn tags_any_and_all() {
        assert!(check(json!({"tags_any": ["vip", "nope"]})));
        assert!(!check(json!({"tags_any": ["nope"]})));
        assert!(check(json!({"tags_all": ["vip", "beta"]})));
        assert!(!check(json!({"tags_all": ["vip", "nope"]})));
    }

    #[test]
    fn and_or_not() {
        let pro = json!({"field": "attributes.plan", "op": "eq", "value": "pro"});
        let free = json!({"field": "attributes.plan", "op": "eq", "value": "free"});
        assert!(check(json!({"and": [pro, {"tags_any": ["vip"]}]})));
        assert!(!check(json!({"and": [pro, free]})));
        assert!(check(json!({"or": [free, pro]})));
        assert!(!check(json!({"or": [free, {"tags_any": ["x"]}]})));
        assert!(check(json!({"not": free})));
        assert!(!check(json!({"not": {"not": free}})));
    }

    #[test]
    fn round_trips_through_json() {
        let v = json!({"and": [
            {"field": "attributes.plan", "op": "in", "value": ["pro", "team"]},
            {"not": {"tags_all": ["churned"]}},
            {"or": [{"field": "app_version", "op": "version_gte", "value": "3.0"},
                    {"field": "locale", "op": "exists"}]}
        ]});
        let f = Filter::from_value(&v).unwrap();
        assert_eq!(f.to_value(), v);
        assert_eq!(Filter::from_value(&f.to_value()).unwrap(), f);
    }

    #[test]
    fn errors_name_the_node() {
        let e = |v: Value| Filter::from_value(&v).unwrap_err();
        assert_eq!(
            e(json!({"and": [{"tags_any": ["a"]}, {"field": "platform", "op": "like", "value": "x"}]})).path,
            "filter.and[1].op"
        );
        assert_eq!(
            e(json!({"field": "colour", "op": "eq", "value": 1})).path,
            "filter.field"
        );
        assert_eq!(
            e(json!({"field": "attributes.age", "op": "gt", "value": "old"})).path,
            "filter.value"
        );
        assert_eq!(
            e(json!({"field": "app_version", "op": "version_gt", "value": "x.y"})).path,
            "filter.value"
        );
        assert_eq!(
            e(json!({"field": "platform", "op": "exists", "value": 1})).path,
            "filter.value"
        );
        assert_eq!(e(json!({"or": []})).path, "filter.or");
        assert_eq!(e(json!({"and": [], "or": []})).path, "filter");
        assert_eq!(e(json!([1])).path, "filter");
        assert_eq!(
            e(json!({"field": "platform", "op": "in", "value": [[1]]})).path,
            "filter.value"
        );
        assert_eq!(e(json!({"tags_all": [""]})).path, "filter.tags_all[0]");
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut v = json!({"tags_any": ["a"]});
        for _ in 0..=MAX_FILTER_DEPTH {
            v = json!({"not": v});
        }
        assert!(Filter::from_value(&v)
            .unwrap_err()
            .detail
            .contains("deeper"));
        let many: Vec<Value> = (0..MAX_FILTER_NODES)
            .map(|_| json!({"tags_any": ["a"]}))
            .collect();
        assert!(Filter::from_value(&json!({"or": many}))
            .unwrap_err()
            .detail
            .contains("more than"));
    }

    #[test]
    fn list_ids_only_for_list_audiences() {
        let a = Audience {
            kind: AudienceKind::All,
            ids: Some(vec!["x".into()]),
            filter: None,
        };
        assert_eq!(a.validate().unwrap_err().0, "audience.ids");
        let b = Audience {
            kind: AudienceKind::InstallIds,
            ids: Some(vec!["ok".into(), "".into()]),
            filter: None,
        };
        assert_eq!(b.validate().unwrap_err().0, "audience.ids[1]");
    }
}

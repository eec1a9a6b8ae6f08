//! Trigger campaigns: app events in, rules that turn them into pushes after a
//! delay, unless a cancelling event comes first; frequency caps and quiet
//! hours. The trigger engine does the I/O; the rules live here.

use crate::audience::{Filter, InstallationFacts};
use crate::job::DeliveryPolicy;
use crate::payload::Notification;
use crate::push::FieldError;
use crate::template::{Template, TemplateContext};
use chrono::{DateTime, Duration, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::str::FromStr;

/// The longest delay a rule may ask for.
pub const MAX_DELAY_SECONDS: u64 = 30 * 24 * 3600;
/// Events per `POST /v1/events` request.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// One app event (`POST /v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// The app's id for this event: the same id sent again is the same event,
    /// and never fires a rule twice.
    #[schema(pattern = r"^[\x20-\x7E]{1,128}$")]
    pub event_id: String,
    /// e.g. `cart_abandoned`.
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$")]
    pub name: String,
    /// Who did it: the app's user id (every installation of the user)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// ...or one installation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<String>,
    /// Flat key/value pairs (string, number or boolean) for conditions and
    /// placeholders.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    /// When it happened (default: when Herald received it). Delays count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
}

/// Who an event is about: timers, caps and cancellations are per user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserKey {
    CustomId(String),
    InstallId(String),
}

impl UserKey {
    /// Stored and used as the Kafka key: `c:<custom id>` or `i:<install id>`.
    pub fn encode(&self) -> String {
        match self {
            UserKey::CustomId(c) => format!("c:{c}"),
            UserKey::InstallId(i) => format!("i:{i}"),
        }
    }

    pub fn decode(s: &str) -> Option<Self> {
        match s.split_once(':')? {
            ("c", c) => Some(UserKey::CustomId(c.to_string())),
            ("i", i) => Some(UserKey::InstallId(i.to_string())),
            _ => None,
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn printable(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

impl EventInput {
    pub fn validate(&self) -> Result<(), FieldError> {
        if !printable(&self.event_id) {
            return Err(FieldError::new("event_id", "1 to 128 printable characters"));
        }
        if !valid_name(&self.name) {
            return Err(FieldError::new(
                "name",
                "1 to 128 letters, digits, `_`, `-`, `.` or `:`",
            ));
        }
        match (&self.custom_id, &self.install_id) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(FieldError::new(
                    "custom_id",
                    "name the user with exactly one of `custom_id` and `install_id`",
                ))
            }
            (Some(c), None) if !printable(c) => {
                return Err(FieldError::new(
                    "custom_id",
                    "1 to 128 printable characters",
                ))
            }
            (None, Some(i)) => {
                crate::push::validate_install_id(i).map_err(|d| FieldError::new("install_id", d))?
            }
            _ => {}
        }
        if self.attributes.len() > 50 {
            return Err(FieldError::new("attributes", "at most 50 attributes"));
        }
        for (k, v) in &self.attributes {
            if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                return Err(FieldError::new(
                    format!("attributes.{k}"),
                    "a string, number or boolean",
                ));
            }
            if let Value::String(s) = v {
                if s.len() > 1024 {
                    return Err(FieldError::new(
                        format!("attributes.{k}"),
                        "at most 1024 bytes",
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn user(&self) -> UserKey {
        match (&self.custom_id, &self.install_id) {
            (Some(c), _) => UserKey::CustomId(c.clone()),
            (None, Some(i)) => UserKey::InstallId(i.clone()),
            (None, None) => UserKey::InstallId(String::new()),
        }
    }
}

/// At most `max` pushes of a rule per user in any `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    pub max: u32,
    pub window_seconds: u64,
}

/// What a push due inside quiet hours does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuietAction {
    /// Wait until the quiet hours end.
    Postpone,
    /// Never send it.
    Drop,
}

/// A daily window in the user's own time zone (UTC when unknown), e.g. 22:00
/// to 08:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    #[schema(value_type = String, example = "22:00", pattern = "^([01]?[0-9]|2[0-3]):[0-5][0-9]$")]
    #[serde(with = "hhmm")]
    pub start: NaiveTime,
    #[schema(value_type = String, example = "08:00", pattern = "^([01]?[0-9]|2[0-3]):[0-5][0-9]$")]
    #[serde(with = "hhmm")]
    pub end: NaiveTime,
    pub action: QuietAction,
}

mod hhmm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a time such as \"22:00\"")))
    }
}

/// What quiet hours make of a push due at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuietDecision {
    Send,
    PostponeUntil(DateTime<Utc>),
    Drop,
}

impl QuietHours {
    /// Whether `at` falls in the window in `tz`, and what to do then.
    pub fn decide(&self, at: DateTime<Utc>, tz: Tz) -> QuietDecision {
        let local = at.with_timezone(&tz);
        let t = local.time();
        let inside = if self.start <= self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        };
        if !inside || self.start == self.end {
            return QuietDecision::Send;
        }
        match self.action {
            QuietAction::Drop => QuietDecision::Drop,
            QuietAction::Postpone => {
                let mut day = local.date_naive();
                if self.start > self.end && t >= self.start {
                    day = day.succ_opt().unwrap_or(day);
                }
                let end = crate::campaign::local_due_at(day.and_time(self.end), tz);
                QuietDecision::PostponeUntil(end.max(at))
            }
        }
    }
}

/// `POST /v1/triggers` and `PUT /v1/triggers/{id}`: a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerInput {
    #[schema(pattern = r"\S", max_length = 200)]
    pub name: String,
    /// The event that starts it, e.g. `cart_abandoned`.
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$")]
    pub entry_event: String,
    /// Conditions on the entry event's attributes (`attributes.NAME`), in the
    /// audience filter language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub conditions: Option<Filter>,
    /// Wait this long after the event (0 to 30 days).
    #[serde(default)]
    pub delay_seconds: u64,
    /// A later event of one of these names for the same user cancels the
    /// pending push.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel_events: Vec<String>,
    /// The message; title, body, localizations and data values may hold
    /// `{{event.NAME|default}}` and `{{user.NAME|default}}` placeholders.
    pub notification: Notification,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_cap: Option<FrequencyCap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// Events before this instant do not fire the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    /// Events from this instant on do not fire the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "at_most_once")]
    pub delivery_policy: DeliveryPolicy,
}

fn yes() -> bool {
    true
}

fn at_most_once() -> DeliveryPolicy {
    DeliveryPolicy::AtMostOnce
}

/// Every templated text of a notification, with the field that holds it.
fn templated_fields(n: &mut Notification) -> Vec<(String, &mut String)> {
    let mut fields: Vec<(String, &mut String)> = Vec::new();
    if let Some(t) = n.title.as_mut() {
        fields.push(("notification.title".into(), t));
    }
    if let Some(b) = n.body.as_mut() {
        fields.push(("notification.body".into(), b));
    }
    for (lang, l) in n.localizations.iter_mut() {
        if let Some(t) = l.title.as_mut() {
            fields.push((format!("notification.localizations.{lang}.title"), t));
        }
        if let Some(b) = l.body.as_mut() {
            fields.push((format!("notification.localizations.{lang}.body"), b));
        }
    }
    for (k, v) in n.data.iter_mut() {
        fields.push((format!("notification.data.{k}"), v));
    }
    if let Some(ios) = n.ios.as_mut() {
        for (name, f) in [
            ("title", &mut ios.title),
            ("subtitle", &mut ios.subtitle),
            ("body", &mut ios.body),
        ] {
            if let Some(v) = f.as_mut() {
                fields.push((format!("notification.ios.{name}"), v));
            }
        }
    }
    if let Some(android) = n.android.as_mut() {
        for (name, f) in [("title", &mut android.title), ("body", &mut android.body)] {
            if let Some(v) = f.as_mut() {
                fields.push((format!("notification.android.{name}"), v));
            }
        }
    }
    fields
}

impl TriggerInput {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err(FieldError::new("name", "1 to 200 characters"));
        }
        if !valid_name(&self.entry_event) {
            return Err(FieldError::new(
                "entry_event",
                "an event name: 1 to 128 letters, digits, `_`, `-`, `.` or `:`",
            ));
        }
        for (i, e) in self.cancel_events.iter().enumerate() {
            if !valid_name(e) {
                return Err(FieldError::new(
                    format!("cancel_events[{i}]"),
                    "an event name",
                ));
            }
        }
        if self.delay_seconds > MAX_DELAY_SECONDS {
            return Err(FieldError::new(
                "delay_seconds",
                format!("at most {MAX_DELAY_SECONDS} (30 days)"),
            ));
        }
        if let Some(cap) = self.frequency_cap {
            if cap.max == 0 || cap.window_seconds == 0 || cap.window_seconds > 90 * 24 * 3600 {
                return Err(FieldError::new(
                    "frequency_cap",
                    "`max` at least 1 and `window_seconds` from 1 to 90 days",
                ));
            }
        }
        if let (Some(s), Some(e)) = (self.starts_at, self.ends_at) {
            if e <= s {
                return Err(FieldError::new("ends_at", "must be after starts_at"));
            }
        }
        let mut n = self.notification.clone();
        for (field, text) in templated_fields(&mut n) {
            Template::parse(text).map_err(|d| FieldError::new(field, d))?;
        }
        // The message with every placeholder at its longest plausible empty
        // form must still be a valid notification.
        self.notification
            .validate()
            .map_err(|e| FieldError::new(e.field(), e.to_string()))?;
        Ok(())
    }

    /// Whether an event starts this rule.
    pub fn is_entered_by(&self, event: &EventInput, occurred_at: DateTime<Utc>) -> bool {
        self.enabled
            && event.name == self.entry_event
            && self.starts_at.is_none_or(|s| occurred_at >= s)
            && self.ends_at.is_none_or(|e| occurred_at < e)
            && self.conditions.as_ref().is_none_or(|c| {
                c.matches(&InstallationFacts {
                    attributes: event.attributes.clone(),
                    ..Default::default()
                })
            })
    }

    pub fn is_cancelled_by(&self, event: &EventInput) -> bool {
        self.cancel_events.contains(&event.name)
    }

    /// The notification with its placeholders filled.
    pub fn render(&self, ctx: TemplateContext<'_>) -> Notification {
        let mut n = self.notification.clone();
        for (_, text) in templated_fields(&mut n) {
            crate::template::render_in_place(text, ctx);
        }
        n
    }

    pub fn due_at(&self, occurred_at: DateTime<Utc>) -> DateTime<Utc> {
        occurred_at + Duration::seconds(i64::try_from(self.delay_seconds).unwrap_or(i64::MAX / 2))
    }
}

/// The user's zone for quiet hours: the first valid one known, else UTC.
pub fn user_time_zone(zones: &[Option<String>]) -> Tz {
    zones
        .iter()
        .flatten()
        .find_map(|z| Tz::from_str(z).ok())
        .unwrap_or(Tz::UTC)
}

/// How a timer ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimerStatus {
    Pending,
    /// The push was sent.
    Fired,
    /// A cancel event came first.
    Cancelled,
    /// Dropped by quiet hours.
    Dropped,
    /// Over the frequency cap.
    Capped,
    /// The user has no installation that can receive a push.
    Unreachable,
}

impl TimerStatus {
    pub const ALL: [TimerStatus; 6] = [
        TimerStatus::Pending,
        TimerStatus::Fired,
        TimerStatus::Cancelled,
        TimerStatus::Dropped,
        TimerStatus::Capped,
        TimerStatus::Unreachable,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            TimerStatus::Pending => "pending",
            TimerStatus::Fired => "fired",
            TimerStatus::Cancelled => "cancelled",
            TimerStatus::Dropped => "dropped",
            TimerStatus::Capped => "capped",
            TimerStatus::Unreachable => "unreachable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    fn rule() -> TriggerInput {
        serde_json::from_value(json!({
            "name": "cart",
            "entry_event": "cart_abandoned",
            "conditions": {"field": "attributes.total", "op": "gte", "value": 20},
            "delay_seconds": 3600,
            "cancel_events": ["checkout"],
            "notification": {"title": "{{event.item|Your cart}} is waiting", "body": "Hi {{user.first_name|there}}",
                             "localizations": {"fr": {"title": "{{event.item|Votre panier}} vous attend"}}},
            "starts_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    fn event(name: &str, attrs: Value) -> EventInput {
        EventInput {
            event_id: "e1".into(),
            name: name.into(),
            custom_id: Some("u1".into()),
            install_id: None,
            attributes: attrs.as_object().cloned().unwrap_or_default(),
            occurred_at: None,
        }
    }

    #[test]
    fn entry_conditions_dates_and_cancel() {
        let r = rule();
        let t = utc("2026-06-01T10:00:00Z").unwrap();
        assert!(r.is_entered_by(&event("cart_abandoned", json!({"total": 25})), t));
        assert!(!r.is_entered_by(&event("cart_abandoned", json!({"total": 5})), t));
        assert!(!r.is_entered_by(&event("viewed", json!({"total": 25})), t));
        assert!(!r.is_entered_by(
            &event("cart_abandoned", json!({"total": 25})),
            utc("2025-06-01T10:00:00Z").unwrap()
        ));
        let mut off = r.clone();
        off.enabled = false;
        assert!(!off.is_entered_by(&event("cart_abandoned", json!({"total": 25})), t));
        assert!(r.is_cancelled_by(&event("checkout", json!({}))));
        assert!(!r.is_cancelled_by(&event("cart_abandoned", json!({}))));
        assert_eq!(r.due_at(t), utc("2026-06-01T11:00:00Z").unwrap());
    }

    #[test]
    fn rendering_fills_every_language() {
        let r = rule();
        let e = json!({"item": "Red shoes"}).as_object().cloned().unwrap();
        let u = Map::new();
        let n = r.render(TemplateContext {
            event: &e,
            user: &u,
        });
        assert_eq!(n.title.as_deref(), Some("Red shoes is waiting"));
        assert_eq!(n.body.as_deref(), Some("Hi there"));
        assert_eq!(
            n.localizations["fr"].title.as_deref(),
            Some("Red shoes vous attend")
        );
    }

    #[test]
    fn template_errors_name_the_field() {
        let mut r = rule();
        r.notification.localizations.get_mut("fr").unwrap().title = Some("{{event.item".into());
        let e = r.validate().unwrap_err();
        assert_eq!(e.field, "notification.localizations.fr.title");
        assert!(e.detail.contains("never closed"), "{}", e.detail);
        let mut r = rule();
        r.notification.body = Some("{{cart.total}}".into());
        assert_eq!(r.validate().unwrap_err().field, "notification.body");
        assert!(rule().validate().is_ok());
    }

    #[test]
    fn quiet_hours_across_midnight() {
        let q = QuietHours {
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
            action: QuietAction::Postpone,
        };
        let paris = chrono_tz::Europe::Paris;
        // 23:30 in Paris (22:30 UTC in winter): postponed to 08:00 Paris next day.
        assert_eq!(
            q.decide(utc("2026-12-01T22:30:00Z").unwrap(), paris),
            QuietDecision::PostponeUntil(utc("2026-12-02T07:00:00Z").unwrap())
        );
        // 03:00 in Paris: to 08:00 the same day.
        assert_eq!(
            q.decide(utc("2026-12-02T02:00:00Z").unwrap(), paris),
            QuietDecision::PostponeUntil(utc("2026-12-02T07:00:00Z").unwrap())
        );
        assert_eq!(
            q.decide(utc("2026-12-02T12:00:00Z").unwrap(), paris),
            QuietDecision::Send
        );
        let drop = QuietHours {
            action: QuietAction::Drop,
            ..q
        };
        assert_eq!(
            drop.decide(utc("2026-12-02T02:00:00Z").unwrap(), paris),
            QuietDecision::Drop
        );
        // A window within one day.
        let lunch = QuietHours {
            start: NaiveTime::from_hms_opt(12, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(14, 0, 0).unwrap(),
            action: QuietAction::Postpone,
        };
        assert_eq!(
            lunch.decide(utc("2026-12-02T12:30:00Z").unwrap(), Tz::UTC),
            QuietDecision::PostponeUntil(utc("2026-12-02T14:00:00Z").unwrap())
        );
    }

    #[test]
    fn events_name_exactly_one_user() {
        let mut e = event("x", json!({}));
        assert!(e.validate().is_ok());
        e.install_id = Some("i1".into());
        assert_eq!(e.validate().unwrap_err().field, "custom_id");
        e.custom_id = None;
        assert!(e.validate().is_ok());
        assert_eq!(e.user().encode(), "i:i1");
        assert_eq!(
            UserKey::decode("c:u 1"),
            Some(UserKey::CustomId("u 1".into()))
        );
        e.attributes.insert("nested".into(), json!({"a": 1}));
        assert_eq!(e.validate().unwrap_err().field, "attributes.nested");
    }
}

/// An event on the events topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub app_id: crate::AppId,
    /// `occurred_at` is always set.
    pub event: EventInput,
}

impl EventRecord {
    /// The Kafka key: one user's events stay in order on one partition.
    pub fn key(&self) -> String {
        format!("{}/{}", self.app_id, self.event.user().encode())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

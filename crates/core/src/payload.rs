//! The notification model and what it becomes on each platform.
//!
//! One [`Notification`] is rendered to an APNs payload or an FCM HTTP v1 message.
//! Both renderings are checked against the provider's size limit before anything
//! is accepted, so an oversize message is refused at the API, not at send time.

use crate::ids::{DeliveryId, MessageId};
use crate::job::Platform;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// APNs refuses larger payloads with 413 PayloadTooLarge (VoIP allows 5120).
pub const APNS_MAX_PAYLOAD_BYTES: usize = 4096;
/// FCM's documented limit for a message's notification and data.
pub const FCM_MAX_PAYLOAD_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<u32>,
    /// Custom key/value pairs. FCM only carries strings, so that is the common type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Title and body per language tag (`fr`, `pt-BR`), chosen by each
    /// installation's locale: exact tag, then its language, then the default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub localizations: BTreeMap<String, Localized>,
    /// `high` (default for visible notifications) or `normal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Replaces the default collapse id (the message id): notifications with
    /// the same key replace each other on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Localized {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("a notification needs a title, a body or data")]
    Empty,
    #[error("the {platform} payload is {size} bytes; the limit is {limit}")]
    TooLarge {
        platform: Platform,
        size: usize,
        limit: usize,
    },
    #[error("data key `{0}` is reserved by the push providers")]
    ReservedDataKey(String),
    #[error("localization `{0}`: {1}")]
    BadLocalization(String, String),
    #[error("collapse_key is 1 to 64 bytes")]
    BadCollapseKey,
}

impl PayloadError {
    /// The request field a caller should fix.
    pub fn field(&self) -> &'static str {
        match self {
            PayloadError::Empty => "notification",
            PayloadError::TooLarge { .. } => "notification",
            PayloadError::ReservedDataKey(_) => "notification.data",
            PayloadError::BadLocalization(..) => "notification.localizations",
            PayloadError::BadCollapseKey => "notification.collapse_key",
        }
    }
}

/// Whether the alert carries anything a user sees. Data-only messages become
/// background pushes on iOS, which Apple requires to use priority 5.
impl Notification {
    pub fn is_visible(&self) -> bool {
        self.title.is_some() || self.body.is_some()
    }

    /// The notification as an installation with `locale` sees it.
    pub fn for_locale(&self, locale: Option<&str>) -> Notification {
        let mut n = self.clone();
        n.localizations.clear();
        let Some(locale) = locale else { return n };
        let normalized = locale.replace('_', "-");
        let language = normalized.split('-').next().unwrap_or_default();
        let chosen = self
            .localizations
            .iter()
            .find(|(tag, _)| tag.eq_ignore_ascii_case(&normalized))
            .or_else(|| {
                self.localizations
                    .iter()
                    .find(|(tag, _)| tag.eq_ignore_ascii_case(language))
            })
            .map(|(_, l)| l);
        if let Some(l) = chosen {
            if l.title.is_some() {
                n.title = l.title.clone();
            }
            if l.body.is_some() {
                n.body = l.body.clone();
            }
        }
        n
    }

    /// Checks the notification as accepted at the API: not empty, no reserved
    /// keys, every localized version within both providers' size limits.
    pub fn validate(&self) -> Result<(), PayloadError> {
        if self
            .collapse_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 64)
        {
            return Err(PayloadError::BadCollapseKey);
        }
        for tag in self.localizations.keys() {
            crate::installation::validate_locale(tag)
                .map_err(|d| PayloadError::BadLocalization(tag.clone(), d))?;
        }
        self.for_locale(None).validate_one()?;
        for tag in self.localizations.keys() {
            self.for_locale(Some(tag)).validate_one()?;
        }
        Ok(())
    }

    fn validate_one(&self) -> Result<(), PayloadError> {
        if !self.is_visible() && self.data.is_empty() && self.badge.is_none() {
            return Err(PayloadError::Empty);
        }
        for key in self.data.keys() {
            if is_reserved_data_key(key) {
                return Err(PayloadError::ReservedDataKey(key.clone()));
            }
        }
        let apns = serde_json::to_vec(&self.apns_payload()).map_or(usize::MAX, |v| v.len());
        if apns > APNS_MAX_PAYLOAD_BYTES {
            return Err(PayloadError::TooLarge {
                platform: Platform::Ios,
                size: apns,
                limit: APNS_MAX_PAYLOAD_BYTES,
            });
        }
        let fcm = self.fcm_payload_size();
        if fcm > FCM_MAX_PAYLOAD_BYTES {
            return Err(PayloadError::TooLarge {
                platform: Platform::Android,
                size: fcm,
                limit: FCM_MAX_PAYLOAD_BYTES,
            });
        }
        Ok(())
    }

    /// The APNs JSON body: the `aps` dictionary plus custom keys beside it.
    pub fn apns_payload(&self) -> Value {
        let mut aps = Map::new();
        if self.is_visible() {
            let mut alert = Map::new();
            if let Some(title) = &self.title {
                alert.insert("title".into(), json!(title));
            }
            if let Some(body) = &self.body {
                alert.insert("body".into(), json!(body));
            }
            aps.insert("alert".into(), Value::Object(alert));
        } else {
            aps.insert("content-available".into(), json!(1));
        }
        if let Some(sound) = &self.sound {
            aps.insert("sound".into(), json!(sound));
        }
        if let Some(badge) = self.badge {
            aps.insert("badge".into(), json!(badge));
        }
        let mut root = Map::new();
        root.insert("aps".into(), Value::Object(aps));
        for (k, v) in &self.data {
            root.insert(k.clone(), json!(v));
        }
        Value::Object(root)
    }

    /// APNs headers that depend on the content: push type and priority.
    pub fn apns_push_type(&self) -> &'static str {
        if self.is_visible() {
            "alert"
        } else {
            "background"
        }
    }

    /// Background pushes must use 5; `normal` asks for power-considerate delivery.
    pub fn apns_priority(&self) -> u8 {
        if self.is_visible() && self.priority != Some(Priority::Normal) {
            10
        } else {
            5
        }
    }

    /// The FCM HTTP v1 `message` object for one token. The Android `tag` is the
    /// message id, so a rare duplicate replaces the shown notification.
    pub fn fcm_message(&self, token: &str, message: MessageId, ttl_seconds: Option<u64>) -> Value {
        let mut msg = Map::new();
        msg.insert("token".into(), json!(token));
        let mut android = Map::new();
        if self.is_visible() {
            let mut n = Map::new();
            if let Some(title) = &self.title {
                n.insert("title".into(), json!(title));
            }
            if let Some(body) = &self.body {
                n.insert("body".into(), json!(body));
            }
            msg.insert("notification".into(), Value::Object(n));
            let mut an = Map::new();
            an.insert("tag".into(), json!(collapse_id(self, message)));
            if let Some(sound) = &self.sound {
                an.insert("sound".into(), json!(sound));
            }
            if let Some(badge) = self.badge {
                an.insert("notification_count".into(), json!(badge));
            }
            android.insert("notification".into(), Value::Object(an));
        }
        let high = self.is_visible() && self.priority != Some(Priority::Normal);
        android.insert(
            "priority".into(),
            json!(if high { "HIGH" } else { "NORMAL" }),
        );
        if let Some(key) = &self.collapse_key {
            android.insert("collapse_key".into(), json!(key));
        }
        if let Some(ttl) = ttl_seconds {
            android.insert("ttl".into(), json!(format!("{ttl}s")));
        }
        msg.insert("android".into(), Value::Object(android));
        if !self.data.is_empty() {
            msg.insert("data".into(), json!(self.data));
        }
        json!({ "message": Value::Object(msg) })
    }

    /// FCM counts the keys and values of the notification and data, not the
    /// JSON punctuation around them.
    fn fcm_payload_size(&self) -> usize {
        let field = |name: &str, v: &Option<String>| v.as_ref().map_or(0, |v| name.len() + v.len());
        field("title", &self.title)
            + field("body", &self.body)
            + self
                .data
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Keys FCM rejects in `data`, and the APNs dictionary name.
fn is_reserved_data_key(key: &str) -> bool {
    key == "aps"
        || key == "from"
        || key == "notification"
        || key == "message_type"
        || key.starts_with("google.")
        || key.starts_with("gcm.")
}

/// `apns-collapse-id` and the Android `tag`: the caller's collapse key, else
/// the message id, so that duplicates of one message collapse on the device.
pub fn collapse_id(n: &Notification, message: MessageId) -> String {
    n.collapse_key
        .clone()
        .unwrap_or_else(|| message.to_string())
}

/// `apns-id`: the delivery id, echoed back by Apple for correlation.
pub fn apns_id(delivery: DeliveryId) -> String {
    delivery.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn visible() -> Notification {
        Notification {
            title: Some("Hi".into()),
            body: Some("Your order shipped".into()),
            ..Default::default()
        }
    }

    #[test]
    fn empty_notification_is_rejected() {
        assert_eq!(Notification::default().validate(), Err(PayloadError::Empty));
    }

    #[test]
    fn data_only_is_a_background_push() {
        let mut n = Notification::default();
        n.data.insert("k".into(), "v".into());
        assert!(n.validate().is_ok());
        assert_eq!(n.apns_push_type(), "background");
        assert_eq!(n.apns_priority(), 5);
        assert_eq!(n.apns_payload()["aps"]["content-available"], 1);
        assert_eq!(n.apns_payload()["k"], "v");
    }

    #[test]
    fn visible_alert_renders_for_both_platforms() {
        let n = visible();
        assert_eq!(n.apns_push_type(), "alert");
        assert_eq!(n.apns_priority(), 10);
        let p = n.apns_payload();
        assert_eq!(p["aps"]["alert"]["title"], "Hi");
        let m = MessageId(Uuid::from_u128(7));
        let f = n.fcm_message("tok", m, Some(60));
        assert_eq!(f["message"]["token"], "tok");
        assert_eq!(f["message"]["notification"]["body"], "Your order shipped");
        assert_eq!(
            f["message"]["android"]["notification"]["tag"],
            m.to_string()
        );
        assert_eq!(f["message"]["android"]["ttl"], "60s");
    }

    #[test]
    fn oversize_payload_is_rejected_with_platform_and_size() {
        let mut n = visible();
        n.body = Some("x".repeat(4100));
        match n.validate() {
            Err(PayloadError::TooLarge { limit, size, .. }) => {
                assert_eq!(limit, 4096);
                assert!(size > 4096);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn payload_at_the_limit_is_accepted() {
        let mut n = visible();
        n.body = Some(String::new());
        let base = serde_json::to_vec(&n.apns_payload()).unwrap().len();
        n.body = Some("x".repeat(APNS_MAX_PAYLOAD_BYTES - base));
        assert_eq!(
            serde_json::to_vec(&n.apns_payload()).unwrap().len(),
            APNS_MAX_PAYLOAD_BYTES
        );
        assert!(n.validate().is_ok());
    }

    #[test]
    fn fcm_counts_keys_and_values() {
        let mut n = Notification::default();
        n.data
            .insert("k".into(), "x".repeat(FCM_MAX_PAYLOAD_BYTES - 1));
        assert_eq!(n.fcm_payload_size(), FCM_MAX_PAYLOAD_BYTES);
        assert!(
            n.validate().is_err(),
            "the APNs payload of it is larger still"
        );
        let mut n = Notification {
            title: Some("t".repeat(100)),
            ..Default::default()
        };
        n.data.insert("key".into(), "v".repeat(50));
        assert_eq!(n.fcm_payload_size(), 5 + 100 + 3 + 50);
    }

    #[test]
    fn localized_content_follows_the_locale_with_fallbacks() {
        let mut n = visible();
        n.localizations.insert(
            "fr".into(),
            Localized {
                title: Some("Salut".into()),
                body: None,
            },
        );
        n.localizations.insert(
            "pt-BR".into(),
            Localized {
                title: Some("Olá".into()),
                body: Some("Seu pedido".into()),
            },
        );
        assert_eq!(n.for_locale(Some("fr-CA")).title.as_deref(), Some("Salut"));
        assert_eq!(
            n.for_locale(Some("fr-CA")).body.as_deref(),
            Some("Your order shipped")
        );
        assert_eq!(
            n.for_locale(Some("pt_BR")).body.as_deref(),
            Some("Seu pedido")
        );
        assert_eq!(n.for_locale(Some("de")).title.as_deref(), Some("Hi"));
        assert_eq!(n.for_locale(None).title.as_deref(), Some("Hi"));
        assert!(n.for_locale(Some("fr")).localizations.is_empty());
    }

    #[test]
    fn an_oversize_localization_is_refused() {
        let mut n = visible();
        n.localizations.insert(
            "de".into(),
            Localized {
                title: None,
                body: Some("x".repeat(5000)),
            },
        );
        assert!(matches!(n.validate(), Err(PayloadError::TooLarge { .. })));
        let mut n = visible();
        n.localizations
            .insert("not a tag".into(), Localized::default());
        assert_eq!(
            n.validate().unwrap_err().field(),
            "notification.localizations"
        );
    }

    #[test]
    fn priority_and_collapse_key_reach_both_platforms() {
        let mut n = visible();
        n.priority = Some(Priority::Normal);
        n.collapse_key = Some("score".into());
        assert_eq!(n.apns_priority(), 5);
        let m = MessageId(Uuid::from_u128(1));
        let f = n.fcm_message("t", m, None);
        assert_eq!(f["message"]["android"]["priority"], "NORMAL");
        assert_eq!(f["message"]["android"]["collapse_key"], "score");
        assert_eq!(f["message"]["android"]["notification"]["tag"], "score");
        assert_eq!(collapse_id(&n, m), "score");
    }

    #[test]
    fn reserved_data_keys_are_rejected() {
        for key in ["aps", "from", "google.x", "gcm.y", "notification"] {
            let mut n = visible();
            n.data.insert(key.into(), "v".into());
            assert_eq!(
                n.validate(),
                Err(PayloadError::ReservedDataKey(key.into())),
                "{key}"
            );
        }
    }
}

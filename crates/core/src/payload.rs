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

/// What the device shows. It must show something: a title, a body or data
/// (a background push, `ios.push_type = background`, shows none), and fit
/// APNs's and FCM's 4096-byte payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295.0)]
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
    /// What only iOS devices get; overrides the fields above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ios: Option<IosOptions>,
    /// What only Android devices get; overrides the fields above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub android: Option<AndroidOptions>,
}

/// APNs-only fields (the `aps` dictionary and push type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IosOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Keys of the app's Localizable.strings, with their arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title_loc_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub title_loc_args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loc_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loc_args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295.0)]
    pub badge: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Lets a notification service extension change the content.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutable_content: bool,
    /// Wakes the app in the background.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub content_available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_level: Option<InterruptionLevel>,
    /// 0 to 1: how the system ranks this among the app's notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relevance_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_content_id: Option<String>,
    /// Default: `alert` when something is shown, else `background`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_type: Option<ApnsPushType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InterruptionLevel {
    Passive,
    Active,
    TimeSensitive,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApnsPushType {
    Alert,
    Background,
    Location,
    Voip,
    Complication,
    Fileprovider,
    Mdm,
    Liveactivity,
    Pushtotalk,
}

impl ApnsPushType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApnsPushType::Alert => "alert",
            ApnsPushType::Background => "background",
            ApnsPushType::Location => "location",
            ApnsPushType::Voip => "voip",
            ApnsPushType::Complication => "complication",
            ApnsPushType::Fileprovider => "fileprovider",
            ApnsPushType::Mdm => "mdm",
            ApnsPushType::Liveactivity => "liveactivity",
            ApnsPushType::Pushtotalk => "pushtotalk",
        }
    }

    /// What `apns-topic` needs after the bundle id for this push type.
    pub fn topic_suffix(&self) -> &'static str {
        match self {
            ApnsPushType::Voip => ".voip",
            ApnsPushType::Complication => ".complication",
            ApnsPushType::Fileprovider => ".pushkit.fileprovider",
            ApnsPushType::Location => ".location-query",
            ApnsPushType::Liveactivity => ".push-type.liveactivity",
            ApnsPushType::Pushtotalk => ".voip-ptt",
            _ => "",
        }
    }

    pub fn max_payload(&self) -> usize {
        match self {
            ApnsPushType::Voip => APNS_MAX_VOIP_PAYLOAD_BYTES,
            _ => APNS_MAX_PAYLOAD_BYTES,
        }
    }
}

/// APNs accepts larger VoIP payloads.
pub const APNS_MAX_VOIP_PAYLOAD_BYTES: usize = 5120;

/// FCM `android` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AndroidOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    /// Replaces the tag (default: the collapse id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_action: Option<String>,
    /// An https URL of an image to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
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

/// The most a notification may weigh, serialized with all its
/// localizations: a delivery job carries it whole, and Kafka's records are
/// at most about 1 MB by default.
pub const MAX_NOTIFICATION_BYTES: usize = 256 * 1024;

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
    #[error("{1}")]
    BadOption(&'static str, String),
    #[error("the notification is {size} bytes with all its localizations; the limit is {limit}")]
    NotificationTooLarge { size: usize, limit: usize },
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
            PayloadError::BadOption(field, _) => field,
            PayloadError::NotificationTooLarge { .. } => "notification",
        }
    }
}

/// What each platform shows. Data-only messages become background pushes on
/// iOS, which Apple requires to use priority 5.
impl Notification {
    pub fn is_visible(&self) -> bool {
        self.title.is_some() || self.body.is_some()
    }

    fn ios(&self) -> IosOptions {
        self.ios.clone().unwrap_or_default()
    }

    fn android_opts(&self) -> AndroidOptions {
        self.android.clone().unwrap_or_default()
    }

    /// iOS title, subtitle and body after the iOS overrides.
    fn ios_alert(&self) -> (Option<String>, Option<String>, Option<String>) {
        let o = self.ios();
        (
            o.title.or_else(|| self.title.clone()),
            o.subtitle,
            o.body.or_else(|| self.body.clone()),
        )
    }

    fn ios_visible(&self) -> bool {
        let (t, s, b) = self.ios_alert();
        let o = self.ios();
        t.is_some()
            || s.is_some()
            || b.is_some()
            || o.loc_key.is_some()
            || o.title_loc_key.is_some()
    }

    fn android_title_body(&self) -> (Option<String>, Option<String>) {
        let o = self.android_opts();
        (
            o.title.or_else(|| self.title.clone()),
            o.body.or_else(|| self.body.clone()),
        )
    }

    fn android_visible(&self) -> bool {
        let (t, b) = self.android_title_body();
        t.is_some() || b.is_some()
    }

    pub fn apns_push_type_kind(&self) -> ApnsPushType {
        self.ios().push_type.unwrap_or(if self.ios_visible() {
            ApnsPushType::Alert
        } else {
            ApnsPushType::Background
        })
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
    /// keys, every localized version within both providers' size limits, and
    /// the whole (every localization) small enough that each delivery job
    /// carrying it fits in a Kafka record, with room to spare.
    pub fn validate(&self) -> Result<(), PayloadError> {
        let size = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        if size > MAX_NOTIFICATION_BYTES {
            return Err(PayloadError::NotificationTooLarge {
                size,
                limit: MAX_NOTIFICATION_BYTES,
            });
        }
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
        let ios = self.ios();
        let ios_has_something = self.ios_visible() || ios.badge.is_some() || ios.content_available;
        if !self.is_visible()
            && self.data.is_empty()
            && self.badge.is_none()
            && !ios_has_something
            && !self.android_visible()
        {
            return Err(PayloadError::Empty);
        }
        if let Some(score) = ios.relevance_score {
            if !(0.0..=1.0).contains(&score) {
                return Err(PayloadError::BadOption(
                    "notification.ios.relevance_score",
                    "relevance_score is between 0 and 1".into(),
                ));
            }
        }
        if ios.push_type == Some(ApnsPushType::Background) && self.ios_visible() {
            return Err(PayloadError::BadOption(
                "notification.ios.push_type",
                "a background push shows nothing: drop the title and body, or use `alert`".into(),
            ));
        }
        let android = self.android_opts();
        if let Some(color) = &android.color {
            let ok = color.len() == 7
                && color.starts_with('#')
                && color[1..].bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(PayloadError::BadOption(
                    "notification.android.color",
                    format!("`{color}` is not #rrggbb"),
                ));
            }
        }
        if let Some(image) = &android.image {
            if !image.starts_with("https://") {
                return Err(PayloadError::BadOption(
                    "notification.android.image",
                    "an https URL".into(),
                ));
            }
        }
        for key in self.data.keys() {
            if is_reserved_data_key(key) {
                return Err(PayloadError::ReservedDataKey(key.clone()));
            }
        }
        let apns = serde_json::to_vec(&self.apns_payload()).map_or(usize::MAX, |v| v.len());
        let limit = self.apns_push_type_kind().max_payload();
        if apns > limit {
            return Err(PayloadError::TooLarge {
                platform: Platform::Ios,
                size: apns,
                limit,
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
        let o = self.ios();
        let mut aps = Map::new();
        let (title, subtitle, body) = self.ios_alert();
        if self.ios_visible() {
            let mut alert = Map::new();
            let mut put = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    alert.insert(k.into(), json!(v));
                }
            };
            put("title", &title);
            put("subtitle", &subtitle);
            put("body", &body);
            put("title-loc-key", &o.title_loc_key);
            put("loc-key", &o.loc_key);
            if !o.title_loc_args.is_empty() {
                alert.insert("title-loc-args".into(), json!(o.title_loc_args));
            }
            if !o.loc_args.is_empty() {
                alert.insert("loc-args".into(), json!(o.loc_args));
            }
            aps.insert("alert".into(), Value::Object(alert));
        }
        if o.content_available || self.apns_push_type_kind() == ApnsPushType::Background {
            aps.insert("content-available".into(), json!(1));
        }
        if o.mutable_content {
            aps.insert("mutable-content".into(), json!(1));
        }
        if let Some(sound) = o.sound.as_ref().or(self.sound.as_ref()) {
            aps.insert("sound".into(), json!(sound));
        }
        if let Some(badge) = o.badge.or(self.badge) {
            aps.insert("badge".into(), json!(badge));
        }
        for (k, v) in [
            ("category", &o.category),
            ("thread-id", &o.thread_id),
            ("target-content-id", &o.target_content_id),
        ] {
            if let Some(v) = v {
                aps.insert(k.into(), json!(v));
            }
        }
        if let Some(level) = o.interruption_level {
            aps.insert("interruption-level".into(), json!(level));
        }
        if let Some(score) = o.relevance_score {
            aps.insert("relevance-score".into(), json!(score));
        }
        let mut root = Map::new();
        root.insert("aps".into(), Value::Object(aps));
        for (k, v) in &self.data {
            root.insert(k.clone(), json!(v));
        }
        Value::Object(root)
    }

    /// `apns-push-type`.
    pub fn apns_push_type(&self) -> &'static str {
        self.apns_push_type_kind().as_str()
    }

    /// Background pushes must use 5; `normal` asks for power-considerate delivery.
    pub fn apns_priority(&self) -> u8 {
        let kind = self.apns_push_type_kind();
        if kind == ApnsPushType::Background || self.priority == Some(Priority::Normal) {
            5
        } else {
            10
        }
    }

    /// The FCM HTTP v1 `message` object for one token. The Android `tag` is the
    /// collapse id, so a rare duplicate replaces the shown notification.
    pub fn fcm_message(&self, token: &str, message: MessageId, ttl_seconds: Option<u64>) -> Value {
        let o = self.android_opts();
        let (title, body) = self.android_title_body();
        let mut msg = Map::new();
        msg.insert("token".into(), json!(token));
        let mut android = Map::new();
        let visible = title.is_some() || body.is_some();
        if visible {
            let mut n = Map::new();
            if let Some(t) = &title {
                n.insert("title".into(), json!(t));
            }
            if let Some(b) = &body {
                n.insert("body".into(), json!(b));
            }
            if let Some(i) = &o.image {
                n.insert("image".into(), json!(i));
            }
            msg.insert("notification".into(), Value::Object(n));
            let mut an = Map::new();
            an.insert(
                "tag".into(),
                json!(o.tag.clone().unwrap_or_else(|| collapse_id(self, message))),
            );
            if let Some(sound) = o.sound.as_ref().or(self.sound.as_ref()) {
                an.insert("sound".into(), json!(sound));
            }
            if let Some(badge) = self.badge {
                an.insert("notification_count".into(), json!(badge));
            }
            for (k, v) in [
                ("channel_id", &o.channel_id),
                ("icon", &o.icon),
                ("color", &o.color),
                ("click_action", &o.click_action),
            ] {
                if let Some(v) = v {
                    an.insert(k.into(), json!(v));
                }
            }
            android.insert("notification".into(), Value::Object(an));
        }
        let high = visible && self.priority != Some(Priority::Normal);
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
        let (title, body) = self.android_title_body();
        field("title", &title)
            + field("body", &body)
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
mod size_tests {
    use super::*;

    #[test]
    fn a_notification_whose_localizations_add_up_past_the_limit_is_refused() {
        let mut n: Notification =
            serde_json::from_value(serde_json::json!({"title": "Hi"})).expect("notification");
        assert!(n.validate().is_ok());
        // Each localization is within the providers' limits; together they
        // are not within one Kafka record.
        for i in 0..200 {
            n.localizations.insert(
                format!("x-l{i:03}"),
                serde_json::from_value(serde_json::json!({"body": "b".repeat(2_000)}))
                    .expect("localization"),
            );
        }
        let e = n.validate().expect_err("too large");
        assert_eq!(e.field(), "notification");
        assert!(e.to_string().contains("262144"), "{e}");
    }
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
    fn ios_options_render_into_aps_and_headers() {
        let mut n = visible();
        n.ios = Some(IosOptions {
            title: Some("iOS title".into()),
            subtitle: Some("sub".into()),
            title_loc_key: Some("ORDER_TITLE".into()),
            title_loc_args: vec!["Ann".into()],
            loc_key: Some("ORDER_SHIPPED".into()),
            loc_args: vec!["42".into()],
            sound: Some("chime.caf".into()),
            badge: Some(3),
            category: Some("ORDER".into()),
            thread_id: Some("orders".into()),
            mutable_content: true,
            interruption_level: Some(InterruptionLevel::TimeSensitive),
            relevance_score: Some(0.5),
            target_content_id: Some("order-42".into()),
            ..Default::default()
        });
        let aps = &n.apns_payload()["aps"];
        assert_eq!(aps["alert"]["title"], "iOS title");
        assert_eq!(aps["alert"]["subtitle"], "sub");
        assert_eq!(
            aps["alert"]["body"], "Your order shipped",
            "the base body stays"
        );
        assert_eq!(aps["alert"]["loc-key"], "ORDER_SHIPPED");
        assert_eq!(aps["alert"]["title-loc-key"], "ORDER_TITLE");
        assert_eq!(aps["alert"]["title-loc-args"], json!(["Ann"]));
        assert_eq!(aps["alert"]["loc-args"], json!(["42"]));
        assert_eq!(aps["sound"], "chime.caf");
        assert_eq!(aps["badge"], 3);
        assert_eq!(aps["category"], "ORDER");
        assert_eq!(aps["thread-id"], "orders");
        assert_eq!(aps["mutable-content"], 1);
        assert_eq!(aps["interruption-level"], "time-sensitive");
        assert_eq!(aps["relevance-score"], 0.5);
        assert_eq!(aps["target-content-id"], "order-42");
        assert_eq!(n.apns_push_type(), "alert");
        assert_eq!(n.apns_priority(), 10);
        // The Android side is untouched by iOS options.
        let f = n.fcm_message("t", MessageId(Uuid::from_u128(1)), None);
        assert_eq!(f["message"]["notification"]["title"], "Hi");
    }

    #[test]
    fn push_types_set_topic_suffix_priority_and_size_limit() {
        let mut n = Notification::default();
        n.data.insert("call".into(), "x".repeat(4500));
        n.ios = Some(IosOptions {
            push_type: Some(ApnsPushType::Voip),
            ..Default::default()
        });
        assert_eq!(n.apns_push_type(), "voip");
        assert_eq!(n.apns_push_type_kind().topic_suffix(), ".voip");
        // 4500 bytes fit a VoIP push on iOS, but not FCM's 4096.
        assert!(matches!(
            n.validate(),
            Err(PayloadError::TooLarge {
                platform: Platform::Android,
                ..
            })
        ));
        let mut bg = visible();
        bg.ios = Some(IosOptions {
            push_type: Some(ApnsPushType::Background),
            ..Default::default()
        });
        assert_eq!(
            bg.validate().unwrap_err().field(),
            "notification.ios.push_type"
        );
        let silent = Notification {
            ios: Some(IosOptions {
                content_available: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(silent.validate().is_ok());
        assert_eq!(silent.apns_push_type(), "background");
        assert_eq!(silent.apns_priority(), 5);
        assert_eq!(silent.apns_payload()["aps"]["content-available"], 1);
    }

    #[test]
    fn android_options_render_and_are_checked() {
        let mut n = visible();
        n.android = Some(AndroidOptions {
            body: Some("Android body".into()),
            channel_id: Some("orders".into()),
            icon: Some("ic_box".into()),
            color: Some("#ff8800".into()),
            tag: Some("order-42".into()),
            click_action: Some("OPEN_ORDER".into()),
            image: Some("https://example.org/box.png".into()),
            ..Default::default()
        });
        let m = &n.fcm_message("t", MessageId(Uuid::from_u128(1)), None)["message"];
        assert_eq!(m["notification"]["title"], "Hi");
        assert_eq!(m["notification"]["body"], "Android body");
        assert_eq!(m["notification"]["image"], "https://example.org/box.png");
        let an = &m["android"]["notification"];
        assert_eq!(an["channel_id"], "orders");
        assert_eq!(an["icon"], "ic_box");
        assert_eq!(an["color"], "#ff8800");
        assert_eq!(an["tag"], "order-42");
        assert_eq!(an["click_action"], "OPEN_ORDER");
        assert_eq!(
            n.apns_payload()["aps"]["alert"]["body"],
            "Your order shipped"
        );
        for (field, bad) in [
            (
                "notification.android.color",
                AndroidOptions {
                    color: Some("orange".into()),
                    ..Default::default()
                },
            ),
            (
                "notification.android.image",
                AndroidOptions {
                    image: Some("http://x/y.png".into()),
                    ..Default::default()
                },
            ),
        ] {
            let mut n = visible();
            n.android = Some(bad);
            assert_eq!(n.validate().unwrap_err().field(), field);
        }
        let mut n = visible();
        n.ios = Some(IosOptions {
            relevance_score: Some(1.5),
            ..Default::default()
        });
        assert_eq!(
            n.validate().unwrap_err().field(),
            "notification.ios.relevance_score"
        );
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

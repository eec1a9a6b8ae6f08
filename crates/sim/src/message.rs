//! What FCM checks in an HTTP v1 send request before it accepts it: only the
//! fields a `Message` has (in either proto JSON spelling, `collapse_key` or
//! `collapseKey`), exactly one target, string maps, and the formats of the
//! Android fields (Firebase, the `projects.messages` REST reference).

use serde_json::Value;

/// Where a message goes.
pub(crate) enum Target {
    Token(String),
    Topic(String),
    Condition(String),
    /// A Firebase installation id.
    Fid(String),
}

impl Target {
    /// The record's `token` for this target: the token itself, or the topic
    /// or condition the message was sent to.
    pub(crate) fn recorded_as(&self) -> String {
        match self {
            Target::Token(token) => token.clone(),
            Target::Topic(topic) => format!("/topics/{topic}"),
            Target::Condition(condition) => format!("condition:{condition}"),
            Target::Fid(fid) => format!("fid:{fid}"),
        }
    }
}

/// A send request that passed the checks.
pub(crate) struct SendRequest {
    pub validate_only: bool,
    pub target: Target,
}

pub(crate) enum Refusal {
    /// A field the message has no such thing as (`at` is its parent's path).
    UnknownField {
        at: String,
        name: String,
    },
    Invalid(String),
}

/// A field's value: anything (a free-form JSON object, a scalar), a map of
/// strings, or a message with these fields.
enum Shape {
    Any,
    Strings,
    Fields(&'static [(&'static str, Shape)]),
}

const REQUEST: &[(&str, Shape)] = &[
    ("message", Shape::Fields(MESSAGE)),
    ("validate_only", Shape::Any),
];

const MESSAGE: &[(&str, Shape)] = &[
    ("name", Shape::Any),
    ("data", Shape::Strings),
    ("notification", Shape::Fields(NOTIFICATION)),
    ("android", Shape::Fields(ANDROID)),
    ("webpush", Shape::Fields(WEBPUSH)),
    ("apns", Shape::Fields(APNS)),
    ("fcm_options", Shape::Fields(FCM_OPTIONS)),
    ("token", Shape::Any),
    ("topic", Shape::Any),
    ("condition", Shape::Any),
    ("fid", Shape::Any),
];

const NOTIFICATION: &[(&str, Shape)] = &[
    ("title", Shape::Any),
    ("body", Shape::Any),
    ("image", Shape::Any),
];

const ANDROID: &[(&str, Shape)] = &[
    ("collapse_key", Shape::Any),
    ("priority", Shape::Any),
    ("ttl", Shape::Any),
    ("restricted_package_name", Shape::Any),
    ("data", Shape::Strings),
    ("notification", Shape::Fields(ANDROID_NOTIFICATION)),
    ("fcm_options", Shape::Fields(FCM_OPTIONS)),
    ("direct_boot_ok", Shape::Any),
    ("bandwidth_constrained_ok", Shape::Any),
    ("restricted_satellite_ok", Shape::Any),
];

const ANDROID_NOTIFICATION: &[(&str, Shape)] = &[
    ("title", Shape::Any),
    ("body", Shape::Any),
    ("icon", Shape::Any),
    ("color", Shape::Any),
    ("sound", Shape::Any),
    ("tag", Shape::Any),
    ("click_action", Shape::Any),
    ("body_loc_key", Shape::Any),
    ("body_loc_args", Shape::Any),
    ("title_loc_key", Shape::Any),
    ("title_loc_args", Shape::Any),
    ("channel_id", Shape::Any),
    ("ticker", Shape::Any),
    ("sticky", Shape::Any),
    ("event_time", Shape::Any),
    ("local_only", Shape::Any),
    ("notification_priority", Shape::Any),
    ("default_sound", Shape::Any),
    ("default_vibrate_timings", Shape::Any),
    ("default_light_settings", Shape::Any),
    ("vibrate_timings", Shape::Any),
    ("visibility", Shape::Any),
    ("notification_count", Shape::Any),
    ("light_settings", Shape::Any),
    ("image", Shape::Any),
    ("bypass_proxy_notification", Shape::Any),
    ("proxy", Shape::Any),
];

const WEBPUSH: &[(&str, Shape)] = &[
    ("headers", Shape::Strings),
    ("data", Shape::Strings),
    ("notification", Shape::Any),
    ("fcm_options", Shape::Fields(WEBPUSH_FCM_OPTIONS)),
];

const WEBPUSH_FCM_OPTIONS: &[(&str, Shape)] =
    &[("link", Shape::Any), ("analytics_label", Shape::Any)];

const APNS: &[(&str, Shape)] = &[
    ("headers", Shape::Strings),
    ("payload", Shape::Any),
    ("fcm_options", Shape::Fields(APNS_FCM_OPTIONS)),
    ("live_activity_token", Shape::Any),
];

const APNS_FCM_OPTIONS: &[(&str, Shape)] =
    &[("analytics_label", Shape::Any), ("image", Shape::Any)];

const FCM_OPTIONS: &[(&str, Shape)] = &[("analytics_label", Shape::Any)];

/// Checks a send request's body as FCM does.
pub(crate) fn check(root: &Value) -> Result<SendRequest, Refusal> {
    check_fields(root, "", REQUEST)?;
    let validate_only = match field(root, "validate_only") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(Refusal::Invalid(format!(
                "Invalid value at 'validate_only' (TYPE_BOOL), {other}"
            )))
        }
    };
    let Some(message) = field(root, "message") else {
        return Err(Refusal::Invalid("Request contains no message.".into()));
    };
    let target = target(message)?;
    if let Some(android) = field(message, "android") {
        check_android(android)?;
    }
    Ok(SendRequest {
        validate_only,
        target,
    })
}

/// A field by its proto name or its lowerCamelCase JSON name; null is unset.
fn field<'v>(object: &'v Value, name: &str) -> Option<&'v Value> {
    let object = object.as_object()?;
    object
        .get(name)
        .or_else(|| object.get(&camel(name)))
        .filter(|v| !v.is_null())
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn path(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn check_fields(value: &Value, at: &str, fields: &[(&str, Shape)]) -> Result<(), Refusal> {
    let Some(object) = value.as_object() else {
        return Err(Refusal::Invalid(format!(
            "Invalid value at '{at}': {value}: expected an object"
        )));
    };
    for (key, value) in object {
        let name = snake(key);
        let Some((_, shape)) = fields.iter().find(|(f, _)| *f == name) else {
            return Err(Refusal::UnknownField {
                at: at.to_string(),
                name: key.clone(),
            });
        };
        if value.is_null() {
            continue;
        }
        let here = path(at, &name);
        match shape {
            Shape::Any => {}
            Shape::Strings => {
                let strings = value
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string));
                if !strings {
                    return Err(Refusal::Invalid(format!(
                        "Invalid value at '{here}': a map of strings to strings"
                    )));
                }
            }
            Shape::Fields(inner) => check_fields(value, &here, inner)?,
        }
    }
    Ok(())
}

fn target(message: &Value) -> Result<Target, Refusal> {
    let set: Vec<&str> = ["token", "topic", "condition", "fid"]
        .into_iter()
        .filter(|t| field(message, t).is_some())
        .collect();
    let [which] = set.as_slice() else {
        return Err(Refusal::Invalid(
            "Exactly one of message.token, message.topic, message.condition or message.fid must \
             be set"
                .into(),
        ));
    };
    let Some(value) = field(message, which).and_then(Value::as_str) else {
        return Err(Refusal::Invalid(format!(
            "Invalid value at 'message.{which}': a string"
        )));
    };
    match *which {
        "token" if value.is_empty() => Err(Refusal::Invalid(
            "The registration token is not a valid FCM registration token".into(),
        )),
        "token" => Ok(Target::Token(value.to_string())),
        "fid" if value.is_empty() => Err(Refusal::Invalid(
            "The Firebase installation id is not valid".into(),
        )),
        "fid" => Ok(Target::Fid(value.to_string())),
        "topic" => {
            let name = value.strip_prefix("/topics/").unwrap_or(value);
            let valid = !name.is_empty()
                && name.len() <= 900
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b));
            if valid {
                Ok(Target::Topic(name.to_string()))
            } else {
                Err(Refusal::Invalid(format!(
                    "Invalid topic name {value:?}: [a-zA-Z0-9-_.~%]+"
                )))
            }
        }
        _ => {
            let topics = value.matches("in topics").count();
            if (1..=5).contains(&topics) {
                Ok(Target::Condition(value.to_string()))
            } else {
                Err(Refusal::Invalid(format!(
                    "Invalid condition {value:?}: one to five topics"
                )))
            }
        }
    }
}

fn check_android(android: &Value) -> Result<(), Refusal> {
    if let Some(priority) = field(android, "priority") {
        let known = priority
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case("normal") || p.eq_ignore_ascii_case("high"));
        if !known {
            return Err(Refusal::Invalid(format!(
                "Invalid value at 'message.android.priority' \
                 (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), {priority}"
            )));
        }
    }
    if let Some(ttl) = field(android, "ttl") {
        if !ttl.as_str().is_some_and(is_duration) {
            return Err(Refusal::Invalid(format!(
                "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), {ttl}"
            )));
        }
    }
    Ok(())
}

/// A protobuf Duration in JSON: seconds, up to nine fractional digits, "s".
fn is_duration(text: &str) -> bool {
    let Some(number) = text.strip_suffix('s') else {
        return false;
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !whole.is_empty()
        && digits(whole)
        && digits(fraction)
        && fraction.len() <= 9
        && fraction.is_empty() != number.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refusal(body: Value) -> String {
        match check(&body) {
            Ok(_) => "accepted".into(),
            Err(Refusal::UnknownField { at, name }) => format!("unknown {name} at {at}"),
            Err(Refusal::Invalid(why)) => why,
        }
    }

    #[test]
    fn either_json_spelling_of_a_field_is_known_and_others_are_not() {
        let ok = json!({"message": {"token": "t", "android": {"collapseKey": "k",
            "collapse_key": "k", "notification": {"clickAction": "a", "channel_id": "c"}},
            "fcmOptions": {"analyticsLabel": "l"}}, "validateOnly": true});
        assert!(check(&ok).is_ok_and(|r| r.validate_only));
        assert_eq!(
            refusal(
                json!({"message": {"token": "t", "android": {"notification": {"colour": "x"}}}})
            ),
            "unknown colour at message.android.notification"
        );
        assert_eq!(
            refusal(json!({"message": {"token": "t"}, "dryRun": true})),
            "unknown dryRun at "
        );
    }

    #[test]
    fn a_message_goes_to_exactly_one_target() {
        assert!(
            refusal(json!({"message": {"token": "t", "topic": "news"}})).contains("Exactly one")
        );
        assert!(refusal(json!({"message": {}})).contains("Exactly one"));
        assert!(refusal(json!({"message": {"token": ""}}))
            .contains("not a valid FCM registration token"));
        assert!(matches!(
            check(&json!({"message": {"topic": "/topics/news"}}))
                .map(|r| r.target.recorded_as())
                .as_deref(),
            Ok("/topics/news")
        ));
        assert!(refusal(json!({"message": {"topic": "no spaces"}})).contains("Invalid topic"));
        assert_eq!(
            refusal(json!({"message": {"condition": "'a' in topics && 'b' in topics"}})),
            "accepted"
        );
    }

    #[test]
    fn android_priority_and_ttl_have_their_formats() {
        for (android, accepted) in [
            (json!({"priority": "high", "ttl": "3.5s"}), true),
            (json!({"priority": "NORMAL", "ttl": "0s"}), true),
            (json!({"priority": "urgent"}), false),
            (json!({"ttl": "60"}), false),
            (json!({"ttl": "1.s"}), false),
            (json!({"ttl": "1.0123456789s"}), false),
            (json!({"ttl": 60}), false),
        ] {
            let body = json!({"message": {"token": "t", "android": android}});
            assert_eq!(check(&body).is_ok(), accepted, "{body}");
        }
    }

    #[test]
    fn every_message_herald_sends_is_taken() {
        use herald_core::payload::Notification;
        let notification: Notification = serde_json::from_value(json!({
            "title": "t", "body": "b", "sound": "default", "badge": 3,
            "data": {"k": "v"}, "priority": "normal", "collapse_key": "c",
            "android": {"title": "at", "body": "ab", "channel_id": "news", "icon": "i",
                "color": "#112233", "sound": "s", "tag": "tag", "click_action": "open",
                "image": "https://example.com/i.png"},
        }))
        .expect("a notification with every Android option");
        let message_id = herald_core::MessageId::new_random();
        for ttl in [None, Some(0), Some(3600)] {
            let body = notification.fcm_message("token-1", message_id, ttl);
            assert!(check(&body).is_ok(), "{body}");
        }
        let silent: Notification = serde_json::from_value(json!({"data": {"k": "v"}})).unwrap();
        let body = silent.fcm_message("token-1", message_id, None);
        assert!(check(&body).is_ok(), "{body}");
    }

    #[test]
    fn string_maps_hold_strings() {
        assert!(
            refusal(json!({"message": {"token": "t", "data": {"n": 1}}})).contains("message.data")
        );
        assert!(refusal(
            json!({"message": {"token": "t", "apns": {"headers": {"apns-priority": 10}}}})
        )
        .contains("message.apns.headers"));
        assert_eq!(
            refusal(json!({"message": {"token": "t", "apns": {"payload": {"aps": {"badge": 1}}}}})),
            "accepted"
        );
    }
}
